//! The controller: control loops that run on whichever node leads the metadata group
//! (design decision 5, docs/decisions.md). Each tick it
//!
//! 1. keeps every registered node a member of the metadata group (controllers are
//!    voters, every other node a learner, so each node holds the metadata log), and
//!    drops removed nodes from it;
//! 2. judges each node's lease from the metadata leader's replication acknowledgements
//!    (and its own node-level heartbeats, which find a dead process at once: `peers`)
//!    and records alive → suspected → dead (and back) in the log;
//! 3. with auto-balance on, runs the placement planner and writes its actions: moves
//!    (repair of dead nodes' replicas, drains, policy, replica balance) and preferred
//!    leaders.
//!
//! Everything it decides is a metadata command, so a new metadata leader picks up where
//! the old one stopped; every step is idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_metadata::placement::{self, Action, Plan};
use flotilla_metadata::replace::{ReplaceOp, Replacement};
use flotilla_metadata::{AdminState, Broker, Command as MetaCommand, Liveness};
use flotilla_raft::{MembershipView, RaftTransport};
use flotilla_types::{METADATA_GROUP, NodeId};
use tokio::time::Instant;

use crate::Node;

const TICK: Duration = Duration::from_millis(250);
/// Preferred-leader commands written at once.
const LEADER_WRITES_IN_FLIGHT: usize = 64;

pub(crate) async fn controller_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let mut leader_since: Option<Instant> = None;
    // When this leader first saw each broker registered: a node that has just joined has
    // not been replicated to yet, and is silent only since then.
    let mut first_seen: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let kick = node.inner.controller_kick.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = kick.notified() => {}
            _ = shutdown.changed() => return,
        }
        let group = node.metadata_group();
        if !group.is_leader() {
            leader_since = None;
            first_seen.clear();
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        sync_metadata_members(&node).await;
        // A new leader has no acknowledgements yet: judge leases only after one has run
        // (until then only the node-level heartbeats' verdict counts).
        let leases_known = since.elapsed() >= node.suspect_after();
        judge_leases(&node, since, leases_known, &mut first_seen).await;
        if node.config().auto_balance {
            let in_flight = node.with_metadata(|m| m.moves().len());
            let budget = node.config().max_concurrent_moves.saturating_sub(in_flight);
            let plan = node.with_metadata(|m| placement::plan(m, budget));
            carry_out(&node, &plan).await;
        }
    }
}

/// One change to the metadata group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MetadataMembers {
    AddLearner(NodeId),
    RemoveLearners(BTreeSet<NodeId>),
    /// A node being replaced leaves the voters (and the group) before it comes back.
    RemoveVoter(NodeId),
    /// A replaced node, back and caught up, votes again.
    PromoteVoter(NodeId),
    /// A replacement step to record: the node's old replica left the metadata group, or
    /// the node is back (RFC 0008).
    Record(NodeId, ReplaceOp),
}

/// The next change that keeps the metadata group's members the registered nodes:
/// registered, non-removed nodes join as learners (one at a time); removed learners
/// leave (a removed voter stays until an operator changes the voters). A node being
/// replaced leaves first, and is not added back until its replacement is ready; once it
/// is back and in sync (`in_sync`), it votes again if it did, and the replacement is
/// finished. Nothing while a change is in flight.
fn metadata_members_step(
    brokers: &BTreeMap<NodeId, Broker>,
    replacements: &BTreeMap<NodeId, Replacement>,
    members: &MembershipView,
    in_sync: impl Fn(NodeId) -> bool,
) -> Option<MetadataMembers> {
    if !members.committed {
        return None;
    }
    let voters = members.voters();
    for (id, r) in replacements {
        let step = match (r.pending.contains(&METADATA_GROUP), r.ready()) {
            (true, _) if voters.contains(id) => MetadataMembers::RemoveVoter(*id),
            (true, _) if members.learners.contains(id) => MetadataMembers::RemoveLearners([*id].into()),
            (true, _) => MetadataMembers::Record(*id, ReplaceOp::ReplicaGone { group: METADATA_GROUP }),
            // Other groups still hold the old replica: it stays out.
            (false, false) => continue,
            (false, true) if !members.learners.contains(id) && !voters.contains(id) => continue,
            (false, true) if !in_sync(*id) => continue,
            (false, true) if r.metadata_voter && !voters.contains(id) => MetadataMembers::PromoteVoter(*id),
            (false, true) => MetadataMembers::Record(*id, ReplaceOp::Finish),
        };
        return Some(step);
    }
    let leaving = |id: &NodeId| replacements.get(id).is_some_and(|r| !r.ready());
    if let Some(b) =
        brokers.values().find(|b| b.admin != AdminState::Removed && !members.contains(b.id) && !leaving(&b.id))
    {
        return Some(MetadataMembers::AddLearner(b.id));
    }
    let gone: BTreeSet<NodeId> = brokers
        .values()
        .filter(|b| b.admin == AdminState::Removed && members.learners.contains(&b.id))
        .map(|b| b.id)
        .collect();
    (!gone.is_empty()).then_some(MetadataMembers::RemoveLearners(gone))
}

async fn sync_metadata_members<T: RaftTransport>(node: &Node<T>) {
    let group = node.metadata_group();
    let (brokers, replacements) = node.with_metadata(|m| (m.brokers().clone(), m.replacements().clone()));
    let members = group.membership();
    let in_sync = |n| node.in_sync(&group, n);
    let Some(step) = metadata_members_step(&brokers, &replacements, &members, in_sync) else { return };
    let done = match &step {
        MetadataMembers::AddLearner(id) => group.add_learner(*id).await.map_err(|e| e.to_string()),
        MetadataMembers::RemoveLearners(gone) => group.remove_learners(gone.clone()).await.map_err(|e| e.to_string()),
        MetadataMembers::RemoveVoter(id) => {
            let rest = members.voters().into_iter().filter(|v| v != id).collect();
            group.change_voters(rest, false).await.map_err(|e| e.to_string())
        }
        MetadataMembers::PromoteVoter(id) => {
            let all = members.voters().into_iter().chain([*id]).collect();
            group.change_voters(all, true).await.map_err(|e| e.to_string())
        }
        MetadataMembers::Record(id, op) => {
            let cmd = MetaCommand::Replace { node: *id, op: op.clone() };
            node.metadata_write(cmd).await.map(|_| ()).map_err(|e| e.message)
        }
    };
    match done {
        Ok(()) => tracing::info!(?step, "metadata group membership step done"),
        Err(e) => tracing::warn!(?step, error = %e, "metadata group membership step not done"),
    }
}

/// What the metadata leader knows of the nodes when it judges their leases.
struct Leases<'a> {
    me: NodeId,
    brokers: &'a BTreeMap<NodeId, Broker>,
    /// How long ago each node last acknowledged this leader (absent or none: never, or
    /// not replicated to yet).
    acked_ago: &'a BTreeMap<NodeId, Option<Duration>>,
    /// How long each node that never acknowledged has been silent: since this leader
    /// began, or since the node registered if that was later.
    silent_for: &'a BTreeMap<NodeId, Duration>,
    /// Nodes refusing this node's node-level heartbeats (their process is gone).
    down: &'a BTreeSet<NodeId>,
    /// This leader has led long enough to judge leases; until then only the heartbeats'
    /// verdict counts, and only toward suspected.
    leases_known: bool,
    suspect_after: Duration,
    dead_after: Duration,
}

/// The liveness each node should have now, where it differs from what is recorded:
/// (node, the new liveness, its silence).
fn judge(l: &Leases) -> Vec<(NodeId, Liveness, Duration)> {
    let mut changes = Vec::new();
    for b in l.brokers.values().filter(|b| b.admin != AdminState::Removed) {
        let age = match (b.id == l.me, l.acked_ago.get(&b.id)) {
            (true, _) => Duration::ZERO,
            (false, Some(Some(age))) => *age,
            (false, _) => l.silent_for.get(&b.id).copied().unwrap_or_default(),
        };
        let down = b.id != l.me && l.down.contains(&b.id);
        let now = if !l.leases_known {
            if down && b.liveness == Liveness::Alive { Liveness::Suspected } else { b.liveness }
        } else if age < l.suspect_after && !down {
            Liveness::Alive
        } else if age < l.dead_after {
            Liveness::Suspected
        } else {
            Liveness::Dead
        };
        if now != b.liveness {
            changes.push((b.id, now, age));
        }
    }
    changes
}

/// Records each node's liveness from how long ago it last acknowledged the metadata
/// leader (its lease), once `leases_known`, and from this node's node-level heartbeats
/// (a node refusing connections is suspected at once).
async fn judge_leases<T: RaftTransport>(
    node: &Node<T>,
    leader_since: Instant,
    leases_known: bool,
    first_seen: &mut BTreeMap<NodeId, Instant>,
) {
    let group = node.metadata_group();
    let Some(acked_ago) = group.peer_ack_ages() else { return };
    let brokers = node.with_metadata(|m| m.brokers().clone());
    let seen_at = Instant::now();
    first_seen.retain(|id, _| brokers.contains_key(id));
    for id in brokers.keys() {
        first_seen.entry(*id).or_insert(seen_at);
    }
    let silent_for = first_seen.iter().map(|(id, seen)| (*id, leader_since.max(*seen).elapsed())).collect();
    let down = brokers.keys().copied().filter(|id| *id != node.id() && node.peer_down(*id)).collect();
    let leases = Leases {
        me: node.id(),
        brokers: &brokers,
        acked_ago: &acked_ago,
        silent_for: &silent_for,
        down: &down,
        leases_known,
        suspect_after: node.suspect_after(),
        dead_after: Duration::from_millis(node.config().dead_after_ms),
    };
    for (id, now, age) in judge(&leases) {
        let from = brokers[&id].liveness;
        tracing::warn!(node = id, ?from, to = ?now, age_ms = age.as_millis() as u64, "node liveness");
        if let Err(e) = node.metadata_write(MetaCommand::SetLiveness { node: id, liveness: now }).await {
            tracing::warn!(node = id, error = %e, "cannot record liveness");
        }
    }
}

/// Writes a plan's actions as metadata commands. Returns how many were accepted.
pub(crate) async fn carry_out<T: RaftTransport>(node: &Node<T>, plan: &Plan) -> usize {
    let mut done = 0;
    for chunk in plan.actions.chunks(LEADER_WRITES_IN_FLIGHT) {
        let writes = chunk.iter().map(|a| {
            let cmd = match a {
                Action::Move { group, to, reason, .. } => {
                    MetaCommand::StartMove { group: *group, target: to.clone(), reason: reason.clone() }
                }
                Action::PreferLeader { group, to, .. } => {
                    MetaCommand::SetPreferredLeader { group: *group, leader: *to }
                }
            };
            async move { (a, node.metadata_write(cmd).await) }
        });
        for (a, r) in futures::future::join_all(writes).await {
            match r {
                Ok(_) => {
                    tracing::info!(action = %a, "controller");
                    done += 1;
                }
                Err(e) => tracing::warn!(action = %a, error = %e, "controller action refused"),
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_metadata::Labels;
    use flotilla_types::GroupId;

    fn broker(id: NodeId, liveness: Liveness, admin: AdminState) -> Broker {
        Broker { liveness, admin, ..Broker::new(id, format!("n{id}:7070"), Labels::default()) }
    }

    fn members(voters: &[NodeId], learners: &[NodeId], committed: bool) -> MembershipView {
        MembershipView {
            configs: vec![voters.iter().copied().collect()],
            learners: learners.iter().copied().collect(),
            committed,
        }
    }

    #[test]
    fn the_metadata_group_gains_registered_nodes_one_at_a_time_and_loses_removed_learners() {
        use AdminState::{Active, Draining, Removed};
        use MetadataMembers::{AddLearner, RemoveLearners};
        let brokers = |admin: &[(NodeId, AdminState)]| -> BTreeMap<NodeId, Broker> {
            admin.iter().map(|(id, a)| (*id, broker(*id, Liveness::Alive, *a))).collect()
        };
        // (brokers, voters, learners, committed) → the step
        let table: Vec<(BTreeMap<NodeId, Broker>, MembershipView, Option<MetadataMembers>)> = vec![
            (brokers(&[(1, Active), (2, Active)]), members(&[1, 2], &[], true), None),
            (brokers(&[(1, Active), (4, Active), (5, Draining)]), members(&[1], &[], true), Some(AddLearner(4))),
            (brokers(&[(1, Active), (4, Active)]), members(&[1], &[], false), None), // a change in flight
            (
                brokers(&[(1, Active), (4, Removed), (5, Removed)]),
                members(&[1], &[4, 5], true),
                Some(RemoveLearners([4, 5].into())),
            ),
            // A removed voter stays until an operator changes the voters.
            (brokers(&[(1, Active), (2, Removed)]), members(&[1, 2], &[], true), None),
            // A removed node that is not a member is never added.
            (brokers(&[(1, Active), (3, Removed)]), members(&[1], &[], true), None),
        ];
        for (brokers, members, want) in table {
            let none = BTreeMap::new();
            assert_eq!(metadata_members_step(&brokers, &none, &members, |_| true), want, "{brokers:?} {members:?}");
        }
    }

    /// A node being replaced leaves the metadata group (as a voter or a learner), its
    /// leaving is recorded, it is not added back while other groups still hold its old
    /// replica, and once ready it comes back as a learner, votes again once in sync if it
    /// did, and the replacement is finished.
    #[test]
    fn a_replaced_node_leaves_the_metadata_group_and_comes_back_to_vote() {
        use MetadataMembers::*;
        let brokers: BTreeMap<NodeId, Broker> =
            (1..=3).map(|id| (id, broker(id, Liveness::Alive, AdminState::Active))).collect();
        let replacing = |pending: &[GroupId], voter: bool| {
            let r = Replacement {
                id: 9,
                pending: pending.iter().copied().collect(),
                metadata_voter: voter,
                first_new_group: 5,
            };
            BTreeMap::from([(3, r)])
        };
        let record = |op| Some(Record(3, op));
        let gone = ReplaceOp::ReplicaGone { group: METADATA_GROUP };
        // (replacement, members, 3 in sync) → the step
        let table = vec![
            (replacing(&[0, 7], true), members(&[1, 2, 3], &[], true), true, Some(RemoveVoter(3))),
            (replacing(&[0, 7], false), members(&[1, 2], &[3], true), true, Some(RemoveLearners([3].into()))),
            (replacing(&[0, 7], true), members(&[1, 2], &[], true), true, record(gone)),
            (replacing(&[7], true), members(&[1, 2], &[], true), true, None), // group 7 still holds it
            (replacing(&[], true), members(&[1, 2], &[], true), true, Some(AddLearner(3))),
            (replacing(&[], true), members(&[1, 2], &[3], true), false, None), // catching up
            (replacing(&[], true), members(&[1, 2], &[3], true), true, Some(PromoteVoter(3))),
            (replacing(&[], true), members(&[1, 2, 3], &[], true), true, record(ReplaceOp::Finish)),
            (replacing(&[], false), members(&[1, 2], &[3], true), true, record(ReplaceOp::Finish)),
            (replacing(&[0], true), members(&[1, 2, 3], &[], false), true, None), // a change in flight
        ];
        for (replacements, m, in_sync, want) in table {
            let got = metadata_members_step(&brokers, &replacements, &m, |_| in_sync);
            assert_eq!(got, want, "{replacements:?} {m:?}");
        }
    }

    #[test]
    fn a_lease_judges_alive_suspected_and_dead_and_a_refusing_node_is_suspected_at_once() {
        use Liveness::{Alive, Dead, Suspected};
        let ms = Duration::from_millis;
        // (recorded, acknowledged ago, never-acked silence, refusing heartbeats, leases known) → new liveness
        let table = [
            ((Alive, Some(ms(100)), None, false, true), Alive),
            ((Alive, Some(ms(1_500)), None, false, true), Suspected),
            ((Suspected, Some(ms(100)), None, false, true), Alive),
            ((Suspected, Some(ms(30_000)), None, false, true), Dead),
            ((Dead, Some(ms(10)), None, false, true), Alive),
            ((Alive, Some(ms(10)), None, true, true), Suspected), // refusing: suspected at once
            ((Alive, None, Some(ms(1_000)), false, true), Alive), // silent only since it registered
            ((Alive, None, Some(ms(2_000)), false, true), Suspected),
            // A new leader: only the heartbeats' verdict, and only toward suspected.
            ((Alive, Some(ms(60_000)), None, false, false), Alive),
            ((Alive, None, None, true, false), Suspected),
            ((Suspected, Some(ms(10)), None, false, false), Suspected),
        ];
        for ((recorded, acked, silent, refusing, leases_known), want) in table {
            let brokers = BTreeMap::from([
                (1, broker(1, Alive, AdminState::Active)),
                (2, broker(2, recorded, AdminState::Active)),
            ]);
            let acked_ago = acked.map(|a| BTreeMap::from([(2, Some(a))])).unwrap_or_default();
            let silent_for = silent.map(|s| BTreeMap::from([(2, s)])).unwrap_or_default();
            let down = if refusing { BTreeSet::from([2]) } else { BTreeSet::new() };
            let leases = Leases {
                me: 1,
                brokers: &brokers,
                acked_ago: &acked_ago,
                silent_for: &silent_for,
                down: &down,
                leases_known,
                suspect_after: ms(1_500),
                dead_after: ms(30_000),
            };
            let got = judge(&leases).into_iter().find(|(id, ..)| *id == 2).map_or(recorded, |(_, l, _)| l);
            assert_eq!(
                got, want,
                "recorded {recorded:?}, acked {acked:?} ago, silent {silent:?}, refusing {refusing}, known {leases_known}"
            );
        }
    }

    #[test]
    fn the_leader_judges_itself_alive_and_never_judges_removed_nodes() {
        let brokers = BTreeMap::from([
            (1, broker(1, Liveness::Suspected, AdminState::Active)),
            (2, broker(2, Liveness::Alive, AdminState::Removed)),
        ]);
        let none = BTreeMap::new();
        let leases = Leases {
            me: 1,
            brokers: &brokers,
            acked_ago: &BTreeMap::new(),
            silent_for: &none,
            down: &BTreeSet::from([1, 2]),
            leases_known: true,
            suspect_after: Duration::from_millis(1_500),
            dead_after: Duration::from_secs(30),
        };
        assert_eq!(judge(&leases), vec![(1, Liveness::Alive, Duration::ZERO)]);
    }
}
