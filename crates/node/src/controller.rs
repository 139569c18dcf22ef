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
use flotilla_metadata::{AdminState, Command as MetaCommand, Liveness};
use flotilla_raft::RaftTransport;
use flotilla_types::NodeId;
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

/// Registered, non-removed nodes join the metadata group as learners; removed nodes
/// leave it (a removed voter stays until an operator changes the voters).
async fn sync_metadata_members<T: RaftTransport>(node: &Node<T>) {
    let group = node.metadata_group();
    let members = group.membership();
    if !members.committed {
        return;
    }
    let brokers = node.with_metadata(|m| m.brokers().clone());
    for b in brokers.values() {
        if b.admin != AdminState::Removed && !members.contains(b.id) {
            match group.add_learner(b.id).await {
                Ok(()) => tracing::info!(node = b.id, "added to the metadata group as a learner"),
                Err(e) => tracing::warn!(node = b.id, error = %e, "cannot add to the metadata group"),
            }
            return; // one membership change at a time
        }
    }
    let gone: BTreeSet<NodeId> = brokers
        .values()
        .filter(|b| b.admin == AdminState::Removed && members.learners.contains(&b.id))
        .map(|b| b.id)
        .collect();
    if !gone.is_empty() {
        match group.remove_learners(gone.clone()).await {
            Ok(()) => tracing::info!(?gone, "removed from the metadata group"),
            Err(e) => tracing::warn!(?gone, error = %e, "cannot remove from the metadata group"),
        }
    }
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
    let Some(ages) = group.peer_ack_ages() else { return };
    let brokers = node.with_metadata(|m| m.brokers().clone());
    let seen_at = Instant::now();
    first_seen.retain(|id, _| brokers.contains_key(id));
    for id in brokers.keys() {
        first_seen.entry(*id).or_insert(seen_at);
    }
    let (suspect, dead) = (node.suspect_after(), Duration::from_millis(node.config().dead_after_ms));
    for b in brokers.values() {
        if b.admin == AdminState::Removed {
            continue;
        }
        let age = if b.id == node.id() {
            Duration::ZERO
        } else {
            match ages.get(&b.id) {
                Some(Some(age)) => *age,
                // Never acknowledged (or not replicated to yet): silent since this leader
                // began, or since the node registered if that was later.
                _ => leader_since.max(first_seen[&b.id]).elapsed(),
            }
        };
        // A node refusing this leader's node-level heartbeats is suspected at once (its
        // process is gone); silence alone waits for the lease.
        let down = b.id != node.id() && node.peer_down(b.id);
        let now = if !leases_known {
            // Only the heartbeats' verdict, and only toward suspected.
            if down && b.liveness == Liveness::Alive { Liveness::Suspected } else { b.liveness }
        } else if age < suspect && !down {
            Liveness::Alive
        } else if age < dead {
            Liveness::Suspected
        } else {
            Liveness::Dead
        };
        if now != b.liveness {
            tracing::warn!(node = b.id, from = ?b.liveness, to = ?now, age_ms = age.as_millis() as u64, "node liveness");
            if let Err(e) = node.metadata_write(MetaCommand::SetLiveness { node: b.id, liveness: now }).await {
                tracing::warn!(node = b.id, error = %e, "cannot record liveness");
            }
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
