//! What every node does for the partition groups it hosts, driven by the metadata it has
//! applied (design decision 5, docs/decisions.md: a partition's leader carries out its
//! own membership change):
//!
//! - **Moves.** Where this node leads a group whose desired voters (`desired()`: the
//!   move's target, else the replicas) differ from the group's voters, it adds the
//!   missing nodes as learners, waits until they have caught up (their log data paced by
//!   the node's `MoveThrottle`), changes the voters (openraft goes through a joint
//!   configuration), drops leftover learners, and reports `FinishMove`. A new leader, or
//!   the same one after a restart, resumes from whatever step the group is at; a
//!   cancelled move is a move back, run the same way.
//! - **Leaders.** Where this node leads a group whose preferred leader (`desired()[0]`)
//!   is another live, caught-up voter, it hands leadership over.
//! - **Elections.** Where this node follows a leader whose node the metadata group marks
//!   suspected or dead, the first live replica in preference order starts an election at
//!   once instead of waiting for its election timeout.
//! - **Quiet groups.** Idle groups stop their Raft timers and wake on the next write or a
//!   suspected leader (`quiesce`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::{Broker, Command as MetaCommand, PartitionAssignment};
use flotilla_raft::{Group, RaftTransport};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use tokio::time::Instant;

use crate::Node;
use crate::quiesce::Quiescer;

const TICK: Duration = Duration::from_millis(250);
/// The tick for `FAST_FOR` after a hosted group's leader is found gone (its take-over is
/// staggered in steps of `WAKE_STAGGER`). Not longer: a group that cannot elect (its
/// other voters gone too) must not keep the node ticking fast through a long outage.
const FAST_TICK: Duration = Duration::from_millis(50);
const FAST_FOR: Duration = Duration::from_secs(3);
/// A leader hands leadership to the preferred replica only after leading this long, so
/// leadership does not bounce while a group settles.
const LEAD_BEFORE_HANDOVER: Duration = Duration::from_secs(2);
/// Woken elections go in rounds of this length; each live replica campaigns at most once
/// a round.
const WAKE_ROUND: Duration = Duration::from_secs(1);
/// Within a round, replicas campaign this far apart, in preference order rotated by the
/// round number. A replica first asks the other live voters for their last log id and
/// stands down for one that holds more (`Groups::take_over`): a candidate whose log is
/// behind cannot win, and its own vote would block the others in its term. The
/// rotation covers a voter that could not be asked.
const WAKE_STAGGER: Duration = Duration::from_millis(100);
/// A leadership transfer that has not happened this long after it started is retried
/// toward another voter (a transfer normally completes within a few round trips).
const TRANSFER_PATIENCE: Duration = Duration::from_secs(1);

/// Progress of one catching-up replica, as its group's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatchUp {
    pub node: NodeId,
    /// The last log index it is known to hold (none: it has not answered yet).
    pub matched: Option<u64>,
    /// The leader's last log index.
    pub leader_last: u64,
    /// How long ago it last acknowledged the leader, in milliseconds (none: not since
    /// this leader was elected).
    pub acked_ms_ago: Option<u64>,
    /// Whether it is in sync (`in_sync`): the one rule behind moves, leader handover,
    /// controller changes and the under-replicated metric.
    pub in_sync: bool,
}

/// Whether a replica is in sync with its leader: it acknowledged the leader within
/// `lag_time_max` (`replica-lag-time-max-ms`) and holds the leader's log but for at
/// most `limits::REPLICA_LAG_ENTRIES_MAX` entries. Time, not entries alone: a dead
/// replica of a partition that sees few writes stays "a few entries behind" forever.
pub fn in_sync(matched: Option<u64>, acked_ago: Option<Duration>, leader_last: u64, lag_time_max: Duration) -> bool {
    acked_ago.is_some_and(|a| a <= lag_time_max)
        && matched.is_some_and(|m| m + flotilla_types::limits::REPLICA_LAG_ENTRIES_MAX >= leader_last)
}

struct LoopState {
    /// Since when this node leads each group (for the handover delay).
    leading_since: BTreeMap<GroupId, Instant>,
    /// The last round in which this node started an election for each group.
    elected_in: BTreeMap<GroupId, u32>,
    /// Since when this node has seen each group's leader on a suspected or dead node.
    leader_gone_since: BTreeMap<GroupId, Instant>,
    /// The last leader this node knew of each group (a replica that saw another's vote
    /// request forgets the leader, but must still take part).
    last_leader: BTreeMap<GroupId, NodeId>,
    quiescer: Quiescer,
}

pub(crate) async fn mover_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let mut applied = node.metadata_group().state().subscribe();
    let config = node.config();
    let mut st = LoopState {
        leading_since: BTreeMap::new(),
        elected_in: BTreeMap::new(),
        leader_gone_since: BTreeMap::new(),
        last_leader: BTreeMap::new(),
        quiescer: Quiescer::new(
            Duration::from_millis(config.quiesce_after_ms),
            Duration::from_millis(config.quiesce_keepalive_ms),
        ),
    };
    loop {
        tick(&node, &mut st).await;
        let fast = st.leader_gone_since.values().any(|since| since.elapsed() < FAST_FOR);
        let wait = if fast { FAST_TICK } else { TICK };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = applied.changed() => {}
            _ = node.inner.peers.went_down.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn tick<T: RaftTransport>(node: &Node<T>, st: &mut LoopState) {
    // Acting on stale metadata would drive a group toward a move already finished or
    // cancelled (adding a learner the node no longer hosts, whose replica is later
    // re-created empty: a log reversion for this leader).
    if !crate::reconciler::metadata_caught_up(node) {
        return;
    }
    let me = node.id();
    let (hosted, brokers) = node.with_metadata(|m| (m.groups_on(me), m.brokers().clone()));
    let mut throttled = BTreeSet::new();
    let mut take_overs = vec![];
    for (id, assignment) in &hosted {
        let Some(group) = node.groups().get(*id) else { continue };
        if group.is_leader() {
            st.elected_in.remove(id);
            let since = *st.leading_since.entry(*id).or_insert_with(Instant::now);
            match drive_membership(node, &group, assignment).await {
                Ok(catching_up) => throttled.extend(catching_up.into_iter().map(|n| (*id, n))),
                Err(e) => tracing::debug!(group = id, error = %e, "membership change not done yet"),
            }
            if let Some(stuck) = group.stalled_transfer(TRANSFER_PATIENCE) {
                retry_transfer(&group, assignment, &brokers, stuck, node.lag_time_max()).await;
            } else if since.elapsed() >= LEAD_BEFORE_HANDOVER {
                hand_over(&group, assignment, &brokers, node.lag_time_max()).await;
            }
            st.quiescer.leader(&group, assignment, &brokers).await;
        } else {
            st.leading_since.remove(id);
            if let Some(others) = wake_election(node, &group, assignment, &brokers, st) {
                take_overs.push((group.clone(), others));
            }
            // Whether the leader this replica knows still says it leads (its leadership
            // report): a leader replica that stopped (a failed disk) or restarted on a
            // live node says otherwise within a report.
            let claimed = group.leader().is_some_and(|l| node.groups().reported_leader(*id) == Some(l));
            st.quiescer.follower(me, &group, assignment, &brokers, claimed);
        }
    }
    // The take-overs at once: each first asks the other voters for their logs.
    let elections = take_overs.iter().map(|(group, others)| async move {
        match node.groups().take_over(group, others).await {
            Ok(()) => node.metrics().count_woken_election(),
            Err(e) => tracing::info!(group = group.id(), error = %e, "not starting an election"),
        }
    });
    futures::future::join_all(elections).await;
    st.quiescer.retain(&hosted.keys().copied().collect());
    st.leading_since.retain(|g, _| hosted.contains_key(g));
    st.elected_in.retain(|g, _| hosted.contains_key(g));
    st.leader_gone_since.retain(|g, _| hosted.contains_key(g));
    st.last_leader.retain(|g, _| hosted.contains_key(g));
    node.groups().router().throttle().set_pairs(throttled);
}

/// One step of the membership change toward `desired()`. Returns the learners still
/// catching up (their appends are throttled).
async fn drive_membership<T: RaftTransport>(
    node: &Node<T>,
    group: &Group,
    p: &PartitionAssignment,
) -> Result<Vec<NodeId>, String> {
    let desired: BTreeSet<NodeId> = p.desired().iter().copied().collect();
    let members = group.membership();
    if !members.committed {
        return Ok(Vec::new()); // a change is in flight; openraft finishes it
    }
    // A leader that voted itself out keeps leading until it steps down; it must not start
    // another change (openraft refuses, and a new leader among the voters will).
    if !members.voters().contains(&node.id()) {
        return Ok(Vec::new());
    }
    let voters = members.voters();
    if members.uniform_voters() == Some(&desired) {
        let extra: BTreeSet<NodeId> = members.learners.difference(&desired).copied().collect();
        if !extra.is_empty() {
            group.remove_learners(extra).await?;
            return Ok(Vec::new());
        }
        if let Some(m) = &p.moving {
            let cmd = MetaCommand::FinishMove { group: group.id(), move_id: m.id };
            node.metadata_write(cmd).await.map_err(|e| e.to_string())?;
            tracing::info!(group = group.id(), move_id = m.id, voters = ?desired, "move finished");
        }
        return Ok(Vec::new());
    }
    // Missing replicas join as learners first.
    if let Some(n) = desired.iter().find(|n| !members.contains(**n)) {
        node.groups().router().throttle().add_pair(group.id(), *n);
        group.add_learner(*n).await?;
        tracing::info!(group = group.id(), node = n, "added learner");
        return Ok(vec![*n]);
    }
    let new: Vec<NodeId> = desired.difference(&voters).copied().collect();
    let lagging: Vec<NodeId> =
        catch_up(group, &new, node.lag_time_max()).into_iter().filter(|c| !c.caught_up()).map(|c| c.node).collect();
    if !lagging.is_empty() {
        return Ok(lagging);
    }
    tracing::info!(group = group.id(), from = ?voters, to = ?desired, "changing voters");
    group.change_voters(desired, false).await?;
    Ok(Vec::new())
}

impl CatchUp {
    fn caught_up(&self) -> bool {
        self.in_sync
    }
}

/// On the leader: how far each of `nodes` has caught up, and whether it is in sync.
pub(crate) fn catch_up(group: &Group, nodes: &[NodeId], lag_time_max: Duration) -> Vec<CatchUp> {
    let matched = group.replication_matched().unwrap_or_default();
    let acked = group.peer_ack_ages().unwrap_or_default();
    let leader_last = group.status().last_log_index.unwrap_or(0);
    nodes
        .iter()
        .map(|n| {
            let m = matched.get(n).copied().flatten();
            let ago = acked.get(n).copied().flatten();
            CatchUp {
                node: *n,
                matched: m,
                leader_last,
                acked_ms_ago: ago.map(|a| a.as_millis() as u64),
                in_sync: in_sync(m, ago, leader_last, lag_time_max),
            }
        })
        .collect()
}

/// Hands leadership to the preferred replica when it is a live, caught-up voter.
async fn hand_over(group: &Group, p: &PartitionAssignment, brokers: &BTreeMap<NodeId, Broker>, lag: Duration) {
    let Some(&preferred) = p.desired().first() else { return };
    if preferred == group.status().leader.unwrap_or(0) || !brokers.get(&preferred).is_some_and(|b| b.accepts_replicas())
    {
        return;
    }
    let members = group.membership();
    if !members.committed || members.uniform_voters().is_none_or(|v| !v.contains(&preferred)) {
        return;
    }
    if !catch_up(group, &[preferred], lag).iter().all(CatchUp::caught_up) {
        return;
    }
    match group.transfer_leader(preferred).await {
        Ok(()) => tracing::info!(group = group.id(), to = preferred, "handing leadership to the preferred replica"),
        Err(e) => tracing::debug!(group = group.id(), error = %e, "leader transfer refused"),
    }
}

/// A transfer this leader started has not happened (its target is down, behind, or
/// never got the request), and meanwhile the group takes no writes: hand leadership to
/// another live, caught-up voter in preference order, or to the same one again when it
/// is the only choice.
async fn retry_transfer(
    group: &Group,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    stuck: NodeId,
    lag: Duration,
) {
    let me = group.status().leader.unwrap_or(0);
    let voters = group.membership().voters();
    let mut order: Vec<NodeId> = p.desired().to_vec();
    let others: Vec<NodeId> = voters.iter().copied().filter(|v| !order.contains(v)).collect();
    order.extend(others);
    let usable = |n: &NodeId| {
        *n != me
            && voters.contains(n)
            && crate::quiesce::alive(brokers, *n)
            && catch_up(group, &[*n], lag).iter().all(CatchUp::caught_up)
    };
    let to = order.iter().copied().filter(usable).find(|n| *n != stuck).or_else(|| usable(&stuck).then_some(stuck));
    let Some(to) = to else { return };
    tracing::info!(group = group.id(), stuck, to, "leadership transfer did not happen: transferring again");
    if let Err(e) = group.transfer_leader(to).await {
        tracing::debug!(group = group.id(), error = %e, "leader transfer refused");
    }
}

/// Whether to start an election now, and if so the other live voters to ask first: when
/// the leader this replica knows is on a node the metadata group marks suspected or dead
/// and this replica has not heard from it lately either, or on a node refusing this
/// node's heartbeats. Live replicas campaign in preference order, staggered.
fn wake_election<T: RaftTransport>(
    node: &Node<T>,
    group: &Arc<Group>,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    st: &mut LoopState,
) -> Option<Vec<NodeId>> {
    // Gone: suspected or dead in the metadata, or refusing connections to this node's
    // own heartbeats (a dead process, known within milliseconds: `peers`).
    let gone = |n: &NodeId| !crate::quiesce::alive(brokers, *n) || node.peer_down(*n);
    let leader = match group.leader() {
        Some(l) => {
            st.last_leader.insert(group.id(), l);
            Some(l)
        }
        None => st.last_leader.get(&group.id()).copied(),
    };
    // The metadata leader's verdict must agree with this replica's own evidence: a
    // replica that heard from the leader within the suspicion window leaves it be (under
    // load a metadata heartbeat can be late while the partition group's traffic flows).
    // A leader whose node refuses connections sends nothing more, however lately heard.
    let heard_lately = group.since_last_append().is_some_and(|d| d < node.suspect_after())
        && !leader.is_some_and(|l| node.peer_down(l));
    if group.id() == METADATA_GROUP || heard_lately || leader.is_none_or(|l| l == node.id() || !gone(&l)) {
        st.leader_gone_since.remove(&group.id());
        return None;
    }
    let noticed = *st.leader_gone_since.entry(group.id()).or_insert_with(Instant::now);
    let voters = group.membership().voters();
    let live: Vec<NodeId> = p.desired().iter().copied().filter(|n| !gone(n) && voters.contains(n)).collect();
    let rank = live.iter().position(|n| *n == node.id())?;
    let elapsed = noticed.elapsed();
    let round = (elapsed.as_millis() / WAKE_ROUND.as_millis()) as u32;
    let turn = (rank + live.len() - round as usize % live.len()) % live.len();
    let into_round = elapsed - WAKE_ROUND * round;
    if into_round < WAKE_STAGGER * turn as u32 || st.elected_in.get(&group.id()) == Some(&round) {
        return None;
    }
    st.elected_in.insert(group.id(), round);
    tracing::info!(group = group.id(), ?leader, "the leader's node is gone: taking over");
    Some(live.iter().copied().filter(|n| *n != node.id()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_sync_needs_a_recent_acknowledgement_and_the_log_but_for_a_few_entries() {
        let s = |ms: u64| Some(Duration::from_millis(ms));
        let lag = Duration::from_millis(15_000);
        let limit = flotilla_types::limits::REPLICA_LAG_ENTRIES_MAX;
        // (matched, acknowledged ago, leader's last index) → in sync
        let table = [
            ((Some(100), s(10), 100), true),
            ((Some(100 - limit), s(10), 100), true),
            ((Some(100 - limit - 1), s(10), 100), false), // too far behind, however recent
            ((Some(100), s(15_000), 100), true),
            ((Some(100), s(15_001), 100), false), // silent too long, however close
            ((Some(100), None, 100), false),      // not acknowledged since this leader began
            ((None, s(10), 100), false),          // nothing matched yet
            ((None, s(10), 0), false),
        ];
        for ((matched, ago, last), want) in table {
            assert_eq!(in_sync(matched, ago, last, lag), want, "matched {matched:?}, acked {ago:?} ago, last {last}");
        }
    }
}
