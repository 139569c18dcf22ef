//! Background control loops of a node: registering with the metadata group, and
//! reconciling the local partition replicas toward the assignment. Both are idempotent
//! and safe to restart at any point.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_metadata::{AdminState, Broker, Command as MetaCommand, PartitionAssignment, Response as MetaResponse};
use flotilla_raft::{GroupKind, RaftTransport, WriteError};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};

use tokio::time::Instant;

use crate::Node;

const REGISTER_RETRY: Duration = Duration::from_millis(300);
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// A replica is deleted only once the metadata has not listed it on this node for this
/// long. A node catching up on the metadata log (after a partition heals) applies it in
/// batches, and an intermediate state can drop a replica that a later entry moves back:
/// deleted and re-created empty, its leader would find its log gone back (a log
/// reversion, simulation seed 754).
const REMOVE_AFTER: Duration = Duration::from_secs(5);
/// A new group is initialised at once by its preferred replica only; another initial
/// replica still empty this long after it started (the preferred one's node is slow, or
/// went down after the assignment) initialises the group itself.
const INITIALISE_AFTER: Duration = Duration::from_secs(6);
const CATCH_UP_POLL: Duration = Duration::from_millis(50);
/// How often a node checks what it leads; it reports at once on a change.
const LEADING_POLL: Duration = Duration::from_millis(250);
/// A node repeats an unchanged leadership report this often (a peer restarted since).
const REPORT_EVERY: Duration = Duration::from_secs(2);
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Registers this node (address and labels) until the metadata group has it. A node
/// whose metadata replica does not know the leader yet (it is not a voter and has not
/// been added as a learner) asks the configured peers, which name the leader. A node
/// not yet sure the cluster does not know it (`Node::confirm_identity`) waits first.
pub(crate) async fn register_loop<T: RaftTransport>(node: Node<T>) {
    node.identity_confirmed().await;
    let me = Broker::new(node.id(), node.config().advertised(), node.config().labels())
        .with_rpc_addr(node.config().rpc_advertised());
    let peers: Vec<NodeId> = node.config().peer_map().map(|p| p.into_keys().collect()).unwrap_or_default();
    let mut attempt = 0usize;
    loop {
        let known = node
            .with_metadata(|m| m.brokers().get(&me.id).map(|b| (b.addr.clone(), b.rpc_addr.clone(), b.labels.clone())));
        if known == Some((me.addr.clone(), me.rpc_addr.clone(), me.labels.clone())) {
            tracing::info!(node = me.id, "registered with the metadata group");
            return;
        }
        let group = node.metadata_group();
        let cmd = MetaCommand::RegisterBroker(me.clone());
        let timeout = Duration::from_secs(5);
        let mut result = group.write_or_forward(node.groups().router(), cmd.clone(), timeout).await;
        let others: Vec<NodeId> = peers.iter().copied().filter(|p| *p != me.id).collect();
        if let (Err(WriteError::NotLeader { leader: None, .. }), false) = (&result, others.is_empty()) {
            let via = others[attempt % others.len()];
            result = group.forward_to(node.groups().router(), via, cmd.clone(), timeout).await;
            if let Err(WriteError::NotLeader { leader: Some(l), .. }) = &result {
                result = group.forward_to(node.groups().router(), *l, cmd, timeout).await;
            }
        }
        match result {
            Ok(MetaResponse::Ok) => {}
            Ok(other) => tracing::warn!(?other, "registration refused"),
            Err(e) => tracing::debug!(error = %e, "registration not done yet"),
        }
        attempt += 1;
        tokio::time::sleep(REGISTER_RETRY).await;
    }
}

/// Makes the local replicas match the assignment, whenever metadata changes and once a
/// second.
pub(crate) async fn reconcile_loop<T: RaftTransport>(node: Node<T>) {
    let mut applied = node.metadata_group().state().subscribe();
    let mut shutdown = node.shutdown_signal();
    // A restarted node's metadata is as old as its last run: acting on it would delete
    // replicas that were moved away and back meanwhile, after their leader had already
    // matched the old log (a log reversion). Wait until it has caught up first.
    while !metadata_caught_up(&node) {
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(CATCH_UP_POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
    let mut unlisted = BTreeMap::new();
    let mut deferred = BTreeMap::new();
    loop {
        reconcile_once(&node, &mut unlisted, &mut deferred).await;
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Tells every other registered node which partition groups this node leads, on each
/// change and every `REPORT_EVERY`, so any node answering a metadata request names the
/// leaders of partitions it does not host.
pub(crate) async fn leadership_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let mut last: Option<(Vec<(GroupId, u64)>, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEADING_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let leading = node.groups().leading();
        if last.as_ref().is_some_and(|(l, at)| *l == leading && at.elapsed() < REPORT_EVERY) {
            continue;
        }
        // `report_leadership` leaves this node out.
        let peers: Vec<NodeId> = node
            .with_metadata(|m| m.brokers().values().filter(|b| b.admin != AdminState::Removed).map(|b| b.id).collect());
        node.groups().report_leadership(&peers, leading.clone(), REPORT_TIMEOUT).await;
        last = Some((leading, tokio::time::Instant::now()));
    }
}

/// The metadata replica knows a leader (so it has heard the leader's commit index) and
/// has applied everything it knows committed.
pub(crate) fn metadata_caught_up<T: RaftTransport>(node: &Node<T>) -> bool {
    let s = node.metadata_group().status();
    s.leader.is_some() && s.applied.is_some() && s.applied >= s.committed
}

/// What reconciling the local replicas toward the assignment does now.
#[derive(Debug, Default, PartialEq, Eq)]
struct Steps {
    /// Replicas to start, with the group's initial voters when this replica initialises
    /// it: only the initial replicas of a group that never changed membership do; any
    /// other replica starts empty and is added by the partition leader.
    start: Vec<(GroupId, Option<BTreeSet<NodeId>>)>,
    /// Replicas unlisted for `REMOVE_AFTER`: removed once their group's leader confirms.
    remove: Vec<GroupId>,
}

/// The steps toward `desired` (the metadata's partitions on node `me`) from the replicas
/// `running` here (the metadata group's aside). `unlisted` holds since when each running
/// replica has not been in the metadata; it is updated for `now`. A node that replaced
/// itself on an empty disk initialises no group below `replaced_below`: their other
/// replicas have the data, and the leader adds this one as a learner.
fn steps(
    me: NodeId,
    replaced_below: Option<GroupId>,
    desired: &BTreeMap<GroupId, PartitionAssignment>,
    running: &BTreeSet<GroupId>,
    unlisted: &mut BTreeMap<GroupId, Instant>,
    now: Instant,
) -> Steps {
    let start = desired
        .iter()
        .filter(|(g, _)| !running.contains(g))
        .map(|(g, p)| {
            let voters: BTreeSet<NodeId> = p.replicas.iter().copied().collect();
            let initial = p.epoch == 0 && voters.contains(&me) && replaced_below.is_none_or(|first| *g >= first);
            (*g, initial.then_some(voters))
        })
        .collect();
    unlisted.retain(|g, _| running.contains(g) && !desired.contains_key(g));
    let mut remove = Vec::new();
    for g in running.iter().filter(|g| !desired.contains_key(g)) {
        let since = *unlisted.entry(*g).or_insert(now);
        if now.duration_since(since) >= REMOVE_AFTER {
            remove.push(*g);
        }
    }
    Steps { start, remove }
}

/// Whether a new group's replica on node `me` initialises it at once: only the preferred
/// replica does, while its node is alive. openraft starts an election the moment a replica
/// initialises, so three initial replicas initialising together campaign together and
/// split the votes (with thousands of groups created at once, again and again). The
/// others start empty: the leader's first message gives them the group's membership.
fn initialises_at_once(me: NodeId, p: &PartitionAssignment, brokers: &BTreeMap<NodeId, Broker>) -> bool {
    match p.replicas.first() {
        Some(first) => *first == me || !crate::quiesce::alive(brokers, *first),
        None => true,
    }
}

/// `unlisted`: since when each hosted replica has not been in the metadata. `deferred`:
/// the new groups this node's replica has not initialised (`initialises_at_once`), with
/// their voters and since when.
async fn reconcile_once<T: RaftTransport>(
    node: &Node<T>,
    unlisted: &mut BTreeMap<GroupId, Instant>,
    deferred: &mut BTreeMap<GroupId, (BTreeSet<NodeId>, Instant)>,
) {
    let me = node.id();
    let (desired, brokers) = node.with_metadata(|m| (m.groups_on(me), m.brokers().clone()));
    for (id, b) in &brokers {
        if *id != me && node.addresses().get(*id).as_deref() != Some(b.rpc_address()) {
            node.addresses().set(*id, b.rpc_address().to_string());
        }
    }
    let running: BTreeSet<GroupId> = node.groups().ids().into_iter().filter(|g| *g != METADATA_GROUP).collect();
    let steps = steps(me, node.config().replaced_below, &desired, &running, unlisted, Instant::now());
    for (group, init) in &steps.start {
        let mut init = init.clone();
        if init.is_some() && desired.get(group).is_some_and(|p| !initialises_at_once(me, p, &brokers)) {
            deferred.insert(*group, (init.take().unwrap_or_default(), Instant::now()));
        }
        match node.groups().ensure(*group, GroupKind::Partition, init.as_ref()).await {
            Ok(_) => tracing::info!(group, voters = ?init, initialised = init.is_some(), "started partition replica"),
            Err(e) => tracing::warn!(group, error = %e, "cannot start partition replica"),
        }
    }
    initialise_deferred(node, &desired, deferred).await;
    for group in steps.remove {
        // The local metadata may be stale. A group still in the metadata (its topic
        // not deleted; group ids are never reused) loses this replica only once its
        // leader confirms that its membership no longer holds this node.
        let listed = node.with_metadata(|m| m.partition_of_group(group).map(|(_, p)| p.hosts()));
        if let Some(hosts) = listed {
            let candidates: Vec<NodeId> = hosts.into_iter().filter(|n| *n != me).collect();
            if !node.groups().released_by_leader(group, &candidates).await {
                tracing::info!(group, "unlisted replica kept: its group's leader does not confirm it left");
                continue;
            }
        }
        unlisted.remove(&group);
        match node.groups().remove(group).await {
            Ok(()) => tracing::info!(group, "removed partition replica"),
            Err(e) => tracing::warn!(group, error = %e, "cannot remove partition replica"),
        }
    }
}

/// Initialises the deferred groups whose replica here is still empty after
/// `INITIALISE_AFTER`, and forgets those that have a log (the leader reached it) or are
/// no longer assigned here.
async fn initialise_deferred<T: RaftTransport>(
    node: &Node<T>,
    desired: &BTreeMap<GroupId, PartitionAssignment>,
    deferred: &mut BTreeMap<GroupId, (BTreeSet<NodeId>, Instant)>,
) {
    let mut due = Vec::new();
    deferred.retain(|g, (voters, since)| {
        let Some(group) = node.groups().get(*g).filter(|_| desired.contains_key(g)) else { return false };
        // A replica that has voted (a term) waits for the leader it voted for; openraft
        // would not initialise it anyway. (Should that leader's node be lost before its
        // first message arrives, the group waits for it, as it did when all three
        // replicas initialised and this one's vote reached it first.)
        let s = group.status();
        if s.last_log_index.is_some() || s.term > 0 {
            return false;
        }
        if since.elapsed() < INITIALISE_AFTER {
            return true;
        }
        due.push((group, voters.clone()));
        false
    });
    for (group, voters) in due {
        match group.initialize(voters).await {
            Ok(()) => tracing::info!(group = group.id(), "no leader reached this replica in time: initialised it"),
            Err(e) => tracing::warn!(group = group.id(), error = %e, "cannot initialise partition replica"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(group: GroupId, replicas: &[NodeId], epoch: u64) -> PartitionAssignment {
        PartitionAssignment { partition: 0, group, replicas: replicas.to_vec(), epoch, moving: None }
    }

    #[test]
    fn only_an_initial_replica_of_an_unchanged_group_initialises_it() {
        let desired = BTreeMap::from([
            (10, partition(10, &[1, 2, 3], 0)), // an initial replica: initialises
            (11, partition(11, &[1, 2, 3], 2)), // after a move: starts empty
            (12, partition(12, &[2, 3, 4], 0)), // this node is a move's new replica: empty
            (13, partition(13, &[1, 2, 3], 0)), // running already
        ]);
        let first = steps(1, None, &desired, &BTreeSet::from([13]), &mut BTreeMap::new(), Instant::now());
        assert_eq!(first.start, vec![(10, Some(BTreeSet::from([1, 2, 3]))), (11, None), (12, None)]);
        assert!(first.remove.is_empty());
        // Back on an empty disk as its own replacement from group 11 on, node 1 does not
        // initialise group 10, even while its metadata still shows it unchanged.
        let replaced = steps(1, Some(11), &desired, &BTreeSet::from([13]), &mut BTreeMap::new(), Instant::now());
        assert_eq!(replaced.start, vec![(10, None), (11, None), (12, None)]);
        let newer = BTreeMap::from([(14, partition(14, &[1, 2, 3], 0))]);
        let replaced = steps(1, Some(11), &newer, &BTreeSet::new(), &mut BTreeMap::new(), Instant::now());
        assert_eq!(replaced.start, vec![(14, Some(BTreeSet::from([1, 2, 3])))], "created after: it initialises");
    }

    #[test]
    fn a_replica_is_removed_only_after_being_unlisted_for_a_while() {
        let t0 = Instant::now();
        let desired = BTreeMap::from([(10, partition(10, &[1, 2, 3], 0))]);
        let running = BTreeSet::from([10, 20, 21]);
        let mut unlisted = BTreeMap::new();
        assert!(steps(1, None, &desired, &running, &mut unlisted, t0).remove.is_empty());
        assert_eq!(unlisted.keys().copied().collect::<Vec<_>>(), vec![20, 21]);
        let almost = t0 + REMOVE_AFTER - Duration::from_millis(1);
        assert!(steps(1, None, &desired, &running, &mut unlisted, almost).remove.is_empty());
        // 21 is listed again meanwhile (moved back): its clock starts over.
        let desired_again = BTreeMap::from([(10, partition(10, &[1, 2, 3], 0)), (21, partition(21, &[1, 2, 3], 3))]);
        assert!(steps(1, None, &desired_again, &running, &mut unlisted, almost).remove.is_empty());
        assert_eq!(steps(1, None, &desired, &running, &mut unlisted, t0 + REMOVE_AFTER).remove, vec![20]);
        assert_eq!(steps(1, None, &desired, &running, &mut unlisted, t0 + REMOVE_AFTER * 2).remove, vec![20, 21]);
    }
}
