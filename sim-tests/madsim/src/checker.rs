//! The invariants, checked while the run goes on and once more at its end.
//!
//! - **Committed entries never change** (Raft's state machine safety, §5.4.3): an entry a
//!   replica has applied is, at that index, the entry every replica applies, forever —
//!   across crashes, torn disks and restarts. [`Monitor`] samples every running replica
//!   and compares each applied entry with the first one seen at its index.
//! - **Replicas agree** (log matching, §5.3): at the end, every replica's committed log is
//!   a prefix of the others', and equal replicas have equal applied state.
//! - **Acknowledged writes survive at their acknowledged place**: every produce a client
//!   was told succeeded is in the final committed log with the base offset it was told,
//!   including writes that a paused leader answered after it woke; every acknowledged
//!   metadata write is in the final metadata state.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::log_store::LogStore;
use flotilla_raft::state_machine::GroupState;
use flotilla_raft::{Command, TypeConfig};
use flotilla_storage::Engine;
use flotilla_types::{GroupId, METADATA_GROUP, NodeId, Offset};
use openraft::EntryPayload;
use openraft::RaftTypeConfig;

use crate::cluster::{Cluster, Life};
use crate::spec::NODES;
use crate::workload::{History, MetadataAck};

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

fn log_of(cluster: &Cluster, node: NodeId, group: GroupId) -> LogStore {
    let engine: Arc<dyn Engine> = Arc::new(cluster.nodes[&node].engine.clone());
    LogStore::new(group, engine)
}

fn read(log: &LogStore, node: NodeId, group: GroupId, index: u64) -> Entry {
    match log.entry(index) {
        Ok(Some(e)) => e,
        Ok(None) => panic!("node {node} group {group}: applied entry {index} is not in its log"),
        Err(e) => panic!("node {node} group {group}: cannot read entry {index}: {e}"),
    }
}

/// Watches every replica's applied entries.
#[derive(Default)]
pub struct Monitor {
    /// The first applied entry seen at each index, per group.
    committed: BTreeMap<GroupId, BTreeMap<u64, Entry>>,
    /// Per (node, group): the incarnation read and how far its log was compared.
    seen: BTreeMap<(NodeId, GroupId), (u64, Option<u64>)>,
    pub samples: u64,
}

impl Monitor {
    /// Compares the entries each running replica applied since the last sample.
    pub fn sample(&mut self, cluster: &Cluster) {
        self.samples += 1;
        for node in NODES {
            let n = &cluster.nodes[&node];
            if n.life == Life::Killed {
                continue;
            }
            for group in cluster.spec.groups() {
                let Some(status) = cluster.status(node, group) else { continue };
                let Some(applied) = status.applied else { continue };
                let seen = self.seen.entry((node, group)).or_insert((n.incarnation, None));
                if seen.0 != n.incarnation {
                    // Restarted: its log may have lost an unsynced tail; read it again.
                    *seen = (n.incarnation, None);
                }
                let from = seen.1.map_or(0, |i| i + 1);
                if from > applied {
                    continue;
                }
                let log = log_of(cluster, node, group);
                let committed = self.committed.entry(group).or_default();
                for index in from..=applied {
                    let entry = read(&log, node, group, index);
                    match committed.get(&index) {
                        Some(first) => assert!(
                            *first == entry,
                            "group {group}: committed entry {index} changed: first applied as {first}, \
                             now node {node} applied {entry}"
                        ),
                        None => {
                            committed.insert(index, entry);
                        }
                    }
                }
                seen.1 = Some(applied);
            }
        }
    }
}

/// What the final check found, for the run's summary line.
#[derive(Debug, Default)]
pub struct Verdict {
    pub entries: u64,
    pub produce_acks: u64,
    pub metadata_acks: u64,
    /// Produce acks answered by a node that was paused while the write was in flight.
    pub acks_across_pause: u64,
}

/// Where each batch of a partition's committed log sits, by replaying the log as the
/// partition state machine does: base offset → (batch, records, log index).
fn offsets(group: GroupId, log: &[Entry]) -> BTreeMap<Offset, (Bytes, u32, u64)> {
    let mut next: Offset = 0;
    let mut out = BTreeMap::new();
    for e in log {
        if let EntryPayload::Normal(command) = &e.payload {
            match command {
                Command::Partition(flotilla_partition::Command::Produce { batch, records, .. }) => {
                    out.insert(next, (batch.clone(), *records, e.log_id.index));
                    next += u64::from(*records);
                }
                Command::Partition(flotilla_partition::Command::DeleteRecords { .. }) => {}
                Command::Metadata(c) => panic!("group {group}: metadata command {c:?} committed in a partition"),
            }
        }
    }
    out
}

/// The final check, once every replica has applied the same log.
pub fn verify(cluster: &Cluster, history: &History, monitor: &mut Monitor) -> Verdict {
    monitor.sample(cluster);
    let mut verdict = Verdict::default();
    let mut states: BTreeMap<GroupId, GroupState> = BTreeMap::new();
    for group in cluster.spec.groups() {
        // Every replica's committed log; each must be a prefix of the others'.
        let mut logs: BTreeMap<NodeId, Vec<Entry>> = BTreeMap::new();
        for node in NODES {
            let status = cluster.status(node, group).unwrap_or_else(|| panic!("node {node} group {group} is down"));
            let applied = status.applied.expect("a converged group applied something");
            let log = log_of(cluster, node, group);
            logs.insert(node, (0..=applied).map(|i| read(&log, node, group, i)).collect());
        }
        for (a, la) in &logs {
            for (b, lb) in &logs {
                let common = la.len().min(lb.len());
                if let Some(i) = (0..common).find(|i| la[*i] != lb[*i]) {
                    panic!(
                        "group {group}: nodes {a} and {b} committed different entries at {i}: {} vs {}",
                        la[i], lb[i]
                    );
                }
            }
        }
        let longest = logs.values().max_by_key(|l| l.len()).expect("three replicas");
        verdict.entries += longest.len() as u64;

        // Replicas that applied the same log hold the same state.
        let mut state: Option<(NodeId, GroupState)> = None;
        for node in NODES {
            let g = cluster.group(node, group).expect("running");
            let s = g.read(|s| s.clone());
            if logs[&node].len() == longest.len() {
                match &state {
                    None => state = Some((node, s)),
                    Some((first, fs)) => {
                        assert!(
                            *fs == s,
                            "group {group}: nodes {first} and {node} applied the same log to different states"
                        )
                    }
                }
            }
        }
        let (_, state) = state.expect("one replica holds the longest log");

        if group != METADATA_GROUP {
            let placed = offsets(group, longest);
            let GroupState::Partition(p) = &state else { panic!("group {group} holds metadata state") };
            let replayed_end = placed.iter().next_back().map_or(0, |(o, (_, n, _))| o + u64::from(*n));
            assert_eq!(p.high_watermark(), replayed_end, "group {group}: state and log disagree on the next offset");
            for ack in history.produced.iter().filter(|a| a.group == group) {
                match placed.get(&ack.base_offset) {
                    Some((batch, records, _)) if *batch == ack.batch && *records == ack.records => {}
                    Some((_, _, index)) => panic!(
                        "group {group}: node {} acknowledged a batch at offset {} (sent {:?}, acked {:?}), but the \
                         committed log holds another batch there (log index {index})",
                        ack.node, ack.base_offset, ack.sent, ack.acked
                    ),
                    None => panic!(
                        "group {group}: node {} acknowledged a batch at offset {} (sent {:?}, acked {:?}), but no \
                         committed batch starts there (log end offset {replayed_end})",
                        ack.node, ack.base_offset, ack.sent, ack.acked
                    ),
                }
                verdict.produce_acks += 1;
                if cluster.paused_during(ack.node, ack.sent, ack.acked) {
                    verdict.acks_across_pause += 1;
                }
            }
        }
        states.insert(group, state);
    }

    let Some(GroupState::Metadata(meta)) = states.get(&METADATA_GROUP) else { panic!("no metadata state") };
    for ack in &history.metadata {
        match ack {
            MetadataAck::Registered(b) => {
                assert_eq!(meta.brokers().get(&b.id), Some(b), "acknowledged registration of broker {} lost", b.id)
            }
            MetadataAck::TopicCreated(t) => {
                assert_eq!(meta.topic(&t.name), Some(t), "acknowledged creation of topic {} lost or changed", t.name)
            }
        }
        verdict.metadata_acks += 1;
    }
    verdict
}
