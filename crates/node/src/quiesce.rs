//! Quiescing idle partition groups (design decision 7, docs/decisions.md).
//!
//! openraft ticks every replica about five times a heartbeat interval, and a leader
//! heartbeats each follower every interval, written or not. A thousand partitions mostly
//! at rest would spend two cores on that. So a partition group with nothing to do stops
//! its timers (`Group::set_ticking(false)`), and node liveness — which the metadata group
//! already tracks — stands in for its failure detection: a replica whose leader's node is
//! suspected wakes up and campaigns (`mover::wake_election`).
//!
//! - **A leader** quiesces once its log has not grown for `quiesce-after-ms`, every voter
//!   holds its last entry, no membership change is pending and every voter's node is
//!   alive. It ticks again as soon as an entry is written (the write itself is replicated
//!   at once, ticking or not). While quiet it sends one heartbeat every keepalive
//!   (`quiesce-keepalive-ms`).
//! - **A follower** stops ticking once its own log has been still as long, while it knows a
//!   leader on a live node that is still a voter and still claims the group in its node's
//!   leadership report, and has heard from it within the backstop (three keepalives);
//!   otherwise it ticks, and its own election timeout runs. The report covers a leader
//!   replica that stopped (a failed disk) or restarted on a live node; the keepalive and
//!   the backstop cover what neither sees: a leader's node that reaches the metadata
//!   leader but not this follower.
//! - **A restarted node** knows no leader yet; its replicas wait the start grace (one
//!   keepalive and a second) for their leaders' keepalives rather than campaign
//!   (`Quiescer::follower`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_metadata::{Broker, Liveness, PartitionAssignment};
use flotilla_raft::Group;
use flotilla_types::{GroupId, NodeId};
use tokio::time::Instant;

pub(crate) struct Quiescer {
    /// A group whose log has not grown for this long may quiesce (zero: never).
    after: Duration,
    /// A quiesced leader's heartbeat period.
    keepalive: Duration,
    started: Instant,
    /// Groups led here: the last log index seen, and since when it has not changed.
    unchanged_since: BTreeMap<GroupId, (Option<u64>, Instant)>,
    /// Quiesced groups led here: when the last keepalive went.
    keepalive_at: BTreeMap<GroupId, Instant>,
}

impl Quiescer {
    pub(crate) fn new(after: Duration, keepalive: Duration) -> Quiescer {
        Quiescer {
            after,
            keepalive,
            started: Instant::now(),
            unchanged_since: BTreeMap::new(),
            keepalive_at: BTreeMap::new(),
        }
    }

    /// A quiesced follower that has heard nothing from its leader for this long ticks
    /// again: three keepalives, so one or two lost ones do not wake it.
    fn backstop(&self) -> Duration {
        3 * self.keepalive
    }

    /// After this node starts, a replica that knows no leader yet waits this long (one
    /// keepalive and a margin) to hear from one before its own timers run, unless it is
    /// the group's preferred leader or a voter's node is not alive.
    fn start_grace(&self) -> Duration {
        self.keepalive + Duration::from_secs(1)
    }

    /// On a group's leader: quiesce it when idle and settled, wake it otherwise.
    pub(crate) async fn leader(&mut self, group: &Group, p: &PartitionAssignment, brokers: &BTreeMap<NodeId, Broker>) {
        let id = group.id();
        let status = group.status();
        let now = Instant::now();
        let idle = self.idle(id, status.last_log_index);
        if !idle || !settled(group, p, brokers, status.last_log_index, status.leader) {
            group.set_ticking(true);
            self.keepalive_at.remove(&id);
            return;
        }
        if group.is_ticking() {
            group.set_ticking(false);
            self.keepalive_at.insert(id, now);
            tracing::debug!(group = id, "quiesced");
            return;
        }
        let due = self.keepalive_at.get(&id).is_none_or(|t| now.duration_since(*t) >= self.keepalive);
        if due {
            self.keepalive_at.insert(id, now);
            if let Err(e) = group.heartbeat_now().await {
                tracing::debug!(group = id, error = %e, "keepalive heartbeat not sent");
            }
        }
    }

    /// On a group's follower (or candidate): tick only when there is no live leader to
    /// rely on.
    ///
    /// A node that has just restarted knows no leader in any group, and a quiet group's
    /// leader may not speak for another keepalive: were its replicas to tick at once,
    /// they would time out, campaign with logs as long as anyone's, and take over groups
    /// that had a leader. So for the start grace such a replica stays quiet while every
    /// voter's node is alive, and only the preferred leader's replica ticks (on a whole
    /// cluster's restart, it is the one that elects).
    pub(crate) fn follower(
        &mut self,
        me: NodeId,
        group: &Group,
        p: &PartitionAssignment,
        brokers: &BTreeMap<NodeId, Broker>,
        leader_claims: bool,
    ) {
        self.keepalive_at.remove(&group.id());
        let idle = self.idle(group.id(), group.status().last_log_index);
        let quiet = match group.leader() {
            // Restarted, it remembers leading: the others may still wait for it.
            Some(l) if l == me => false,
            // While entries arrive the leader is busy and heartbeating: the follower keeps
            // its own election timer, so a leader replica that stops (a failed disk) is
            // replaced as fast as without quiescing. Once its log has been still as long
            // as the leader waits before quiescing, it stops too, while:
            // - the leader is still a voter (one that committed its own removal steps
            //   down without a word to its followers);
            // - its node's leadership report still claims the group (a leader replica can
            //   stop or restart on a live node). Reports come every 2 s, so a restarted
            //   follower does not ask for one during the start grace;
            // - it was heard from within the backstop. A replica restarted with its vote
            //   remembers the leader but has not heard from it yet: the time since the
            //   start counts as the silence.
            Some(l) => {
                idle && alive(brokers, l)
                    && group.membership().voters().contains(&l)
                    && (leader_claims || self.started.elapsed() < self.start_grace())
                    && group.since_last_append().unwrap_or_else(|| self.started.elapsed()) < self.backstop()
            }
            // This node may itself still be marked suspected after its restart.
            None => {
                self.started.elapsed() < self.start_grace()
                    && preferred_voter(group, p) != Some(me)
                    && group.membership().voters().iter().all(|v| *v == me || alive(brokers, *v))
            }
        };
        group.set_ticking(self.after.is_zero() || !quiet);
    }

    /// This replica's log (last index `last`) has not grown for `after` (never, when
    /// `after` is zero).
    fn idle(&mut self, group: GroupId, last: Option<u64>) -> bool {
        let now = Instant::now();
        let since = self.unchanged_since.entry(group).or_insert((last, now));
        if since.0 != last {
            *since = (last, now);
        }
        !self.after.is_zero() && now.duration_since(since.1) >= self.after
    }

    /// Forgets groups no longer hosted here.
    pub(crate) fn retain(&mut self, hosted: &BTreeSet<GroupId>) {
        self.unchanged_since.retain(|g, _| hosted.contains(g));
        self.keepalive_at.retain(|g, _| hosted.contains(g));
    }
}

/// The first of the desired replicas that votes now (during a move the first desired
/// replica may still be a learner, which cannot campaign).
fn preferred_voter(group: &Group, p: &PartitionAssignment) -> Option<NodeId> {
    let voters = group.membership().voters();
    p.desired().iter().copied().find(|n| voters.contains(n))
}

pub(crate) fn alive(brokers: &BTreeMap<NodeId, Broker>, n: NodeId) -> bool {
    brokers.get(&n).is_some_and(|b| b.liveness == Liveness::Alive)
}

/// Nothing for the group's timers to do: its voters are the desired replicas, all on live
/// nodes and all holding the leader's last entry, with no membership change in flight.
fn settled(
    group: &Group,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    last: Option<u64>,
    leader: Option<NodeId>,
) -> bool {
    let members = group.membership();
    let desired: BTreeSet<NodeId> = p.desired().iter().copied().collect();
    if !members.committed || !members.learners.is_empty() || members.uniform_voters() != Some(&desired) {
        return false;
    }
    if !desired.iter().all(|n| alive(brokers, *n)) {
        return false;
    }
    let matched = group.replication_matched().unwrap_or_default();
    desired.iter().filter(|n| Some(**n) != leader).all(|n| matched.get(n).copied().flatten() == last)
}
