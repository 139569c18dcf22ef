//! Raft timings per kind of group (design decision 7, docs/decisions.md: partitions
//! heartbeat slowly, so that many groups per node stay cheap). A partition group whose
//! leader's node dies does not wait for its own election timeout: once the node refuses
//! its peers' node-level heartbeats (RFC 0006) or the metadata leader marks it suspected
//! (`suspect-after-ms`, 1.5 s by default), the live replicas start an election
//! (`node::mover`). The partition timeout is the fallback for a leader cut off from its
//! followers but not from the metadata leader.

use std::sync::Arc;

use flotilla_types::limits;

/// The metadata group snapshots its state every this many applied entries.
pub const METADATA_SNAPSHOT_EVERY: u64 = 2_000;

/// Heartbeat and election timings of one kind of group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl GroupTimings {
    pub const METADATA: GroupTimings = GroupTimings { heartbeat_ms: 150, election_min_ms: 600, election_max_ms: 1200 };
    /// A busy group's leader heartbeats each follower every second, and openraft ticks
    /// each replica about five times a heartbeat: per group, that is the node's cost
    /// until the group quiesces, and the cost was too much at a topic of 3,000 partitions
    /// on two cores with 500 ms (never settled; with a second, led in 9 s: docs/perf.md,
    /// "Connections that survive load"). The election timeout matters only for a leader
    /// cut off from its followers but not from the metadata leader: a dead leader's node
    /// is found by the node-level heartbeats and the lease, which wake elections at once.
    pub const PARTITION: GroupTimings =
        GroupTimings { heartbeat_ms: 1000, election_min_ms: 3000, election_max_ms: 6000 };

    pub(crate) fn openraft_config(&self, name: String, kind: crate::GroupKind) -> Arc<openraft::Config> {
        // The Raft log is the partition log: a partition's snapshot is taken only at its
        // retention point, when the node asks (`Group::compact_log`), and the log up to
        // it is purged at once. The metadata group snapshots its whole state every
        // `METADATA_SNAPSHOT_EVERY` entries and keeps as many entries before it, so that
        // a follower a little behind catches up from the log.
        let (snapshot_policy, max_in_snapshot_log_to_keep) = match kind {
            crate::GroupKind::Partition => (openraft::SnapshotPolicy::Never, 0),
            crate::GroupKind::Metadata => {
                (openraft::SnapshotPolicy::LogsSinceLast(METADATA_SNAPSHOT_EVERY), METADATA_SNAPSHOT_EVERY)
            }
        };
        let config = openraft::Config {
            cluster_name: name,
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            max_payload_entries: limits::RAFT_ENTRIES_PER_APPEND_MAX,
            snapshot_policy,
            max_in_snapshot_log_to_keep,
            purge_batch_size: 1,
            enable_pre_vote: Some(true),
            // A restarted leader must win an election again. openraft's default lets it
            // resume its old term at once, but appends are acknowledged to openraft only
            // once durable, so a quorum of followers can commit entries the leader never
            // synced: after a power loss it would re-propose other entries under the same
            // log ids, and the followers, seeing matching ids, would keep theirs (found by
            // both simulation tiers; see sim-tests/turmoil/regressions.txt and madsim t30).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        Arc::new(config.validate().expect("static Raft configuration is valid"))
    }
}
