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
/// A new group's other initial replicas initialise it themselves, rather than wait for its
/// preferred replica's leader, when the preferred one's node is gone (refusing
/// connections, or dead in the metadata), or when they are still empty this long after
/// they started (its node is cut off, or never initialised the group). A node merely
/// suspected is not enough: a node busy creating thousands of replicas answers the
/// metadata leader late, and all its groups' replicas elsewhere campaigning at once
/// was what kept the cluster from settling.
const INITIALISE_AFTER: Duration = Duration::from_secs(60);
/// At most this many of the new groups this node initialises may be electing and
/// settling at once (each initialised less than `SETTLE_WITHIN` ago and still ticking).
/// Thousands of groups created at once, all electing together, overloaded the nodes:
/// heartbeats came late, followers campaigned, and the cluster never settled.
const INITIALISING_MAX: usize = 500;
const SETTLE_WITHIN: Duration = Duration::from_secs(10);
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
    let mut new_groups = NewGroups::default();
    loop {
        reconcile_once(&node, &mut unlisted, &mut new_groups).await;
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
    // What this node leads: quiet groups looked at only before each repeated report
    // (thousands of them, four times a second, were a tenth of an idle node's CPU).
    let mut known = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEADING_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let repeat = last.as_ref().is_none_or(|(_, at)| at.elapsed() >= REPORT_EVERY);
        node.groups().update_leading(&mut known, repeat);
        let leading: Vec<(GroupId, u64)> = known.iter().map(|(g, t)| (*g, *t)).collect();
        if !repeat && last.as_ref().is_some_and(|(l, _)| *l == leading) {
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
    /// Replicas to start, with the group's initial voters when this replica may
    /// initialise it (`NewGroups`): only the initial replicas of a group that never
    /// changed membership may; any other replica is added by the partition leader.
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

/// The new groups whose replica here is empty and that this node has not initialised yet,
/// and those it initialised lately.
///
/// Only a new group's preferred replica (the first) initialises it, paced: openraft
/// starts an election the moment a replica initialises, so three initial replicas
/// initialising together campaign together and split the votes, and thousands of
/// groups initialised at once elect together. The others start empty (the leader's first
/// message gives them the membership), or initialise it themselves when the preferred
/// replica's node is gone or after `INITIALISE_AFTER`.
#[derive(Default)]
struct NewGroups {
    /// Not initialised yet: the group's voters, and since when.
    waiting: BTreeMap<GroupId, (BTreeSet<NodeId>, Instant)>,
    /// Initialised here by the preferred replica, and when.
    initialised: BTreeMap<GroupId, Instant>,
}

/// `unlisted`: since when each hosted replica has not been in the metadata.
async fn reconcile_once<T: RaftTransport>(
    node: &Node<T>,
    unlisted: &mut BTreeMap<GroupId, Instant>,
    new_groups: &mut NewGroups,
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
    for (i, (group, init)) in steps.start.iter().enumerate() {
        // Thousands of replicas to start (a large topic created): let the node's other
        // work (the metadata group's heartbeats above all) run in between.
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
        // It starts empty; `initialise_new_groups` initialises it if it is to.
        match node.groups().ensure(*group, GroupKind::Partition, None).await {
            Ok(g) => {
                tracing::info!(group, voters = ?init, initial = init.is_some(), "started partition replica");
                if let Some(voters) = init {
                    // Until it is initialised or hears from a leader, an empty replica's
                    // timers have nothing to do (no membership, no election to start);
                    // a topic of 10,000 partitions left 10,000 of them ticking per node.
                    if untouched(&g) {
                        g.set_ticking(false);
                    }
                    new_groups.waiting.insert(*group, (voters.clone(), Instant::now()));
                }
            }
            Err(e) => tracing::warn!(group, error = %e, "cannot start partition replica"),
        }
    }
    initialise_new_groups(node, &desired, &brokers, new_groups).await;
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

/// Whether `group`'s replica here is as it started: no log, and no vote in any term (no
/// leader or candidate has reached it).
fn untouched(group: &flotilla_raft::Group) -> bool {
    let s = group.status();
    s.last_log_index.is_none() && s.term == 0
}

/// Initialises the waiting new groups that this node is to initialise now: as the
/// preferred replica while fewer than `INITIALISING_MAX` of those it initialised are
/// still settling, or as another initial replica once the preferred one's node is gone
/// or after `INITIALISE_AFTER`. Forgets those that have a log or a vote (a leader
/// or a candidate reached them) or are no longer new groups of this node.
async fn initialise_new_groups<T: RaftTransport>(
    node: &Node<T>,
    desired: &BTreeMap<GroupId, PartitionAssignment>,
    brokers: &BTreeMap<NodeId, Broker>,
    new_groups: &mut NewGroups,
) {
    let me = node.id();
    new_groups
        .initialised
        .retain(|g, at| at.elapsed() < SETTLE_WITHIN && node.groups().get(*g).is_some_and(|group| group.is_ticking()));
    let mut slots = INITIALISING_MAX.saturating_sub(new_groups.initialised.len());
    let mut due = Vec::new();
    new_groups.waiting.retain(|g, (voters, since)| {
        let Some(p) = desired.get(g).filter(|p| p.epoch == 0 && p.replicas.contains(&me)) else { return false };
        let Some(group) = node.groups().get(*g) else { return false };
        // A replica that has voted (a term) waits for the leader it voted for; openraft
        // would not initialise it anyway. (Should that leader's node be lost before its
        // first message arrives, the group waits for it, as it did when all three
        // replicas initialised and this one's vote reached it first.)
        if !untouched(&group) {
            return false;
        }
        let preferred = p.replicas.first().copied();
        let now = if preferred == Some(me) {
            let free = slots > 0;
            slots = slots.saturating_sub(1);
            free
        } else {
            let gone = |n: NodeId| {
                node.peer_down(n) || brokers.get(&n).is_none_or(|b| b.liveness == flotilla_metadata::Liveness::Dead)
            };
            preferred.is_none_or(gone) || since.elapsed() >= INITIALISE_AFTER
        };
        if now {
            due.push((group, voters.clone(), preferred == Some(me)));
        }
        !now
    });
    for (group, voters, preferred) in due {
        if preferred {
            new_groups.initialised.insert(group.id(), Instant::now());
        }
        group.set_ticking(true);
        match group.initialize(voters).await {
            Ok(()) if preferred => {}
            Ok(()) => {
                tracing::info!(group = group.id(), "the preferred replica did not initialise the group: initialised it")
            }
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
