//! Replacing a node that lost its data under its old id (`flotilla cluster replace-node`,
//! RFC 0008).
//!
//! A node whose disk is gone has forgotten its votes and the entries it acknowledged;
//! letting it answer again as the replica it was could elect two leaders in a term or
//! lose committed entries, and each group's leader, which remembers how far the old
//! replica had got, stops on openraft's log-reversion check. So the old replica leaves
//! every group first, through the group's own membership:
//!
//! 1. `Start` (the node is not alive): every group the node hosts, and the metadata
//!    group (0), is *pending*.
//! 2. Each group's leader takes the node out of its membership (the metadata leader's
//!    controller does it for group 0) and reports `ReplicaGone`. No leader adds the node
//!    back while any group is pending.
//! 3. With nothing pending the replacement is *ready*: the node may start on an empty
//!    data directory under its old id. Its peers tell it so (`RaftRpc::Registered`), and
//!    it joins each group as a new learner, caught up and promoted as in a move.
//! 4. Once its metadata replica is back (and a voter again, if it was one), the
//!    controller writes `Finish`.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::{ErrorCode, GroupId, METADATA_GROUP, NodeId};
use serde::{Deserialize, Serialize};

use crate::{AdminState, Broker, Liveness, Response, Topic};

/// One node's replacement in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// The log index of the command that started it.
    pub id: u64,
    /// The groups (the metadata group among them) whose membership may still hold the
    /// old replica.
    pub pending: BTreeSet<GroupId>,
    /// Whether the node voted in the metadata group; it votes again once back.
    pub metadata_voter: bool,
    /// The first group id created after the replacement started. Back on an empty disk,
    /// the node initialises no group below it (it joins those as a learner), even while
    /// its metadata replica is still replaying the log of their creation.
    pub first_new_group: GroupId,
}

impl Replacement {
    /// The old replica has left every group: the node may start on an empty disk.
    pub fn ready(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A step of a replacement (`Command::Replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplaceOp {
    /// Starts replacing the node (an operator's `replace-node`); `metadata_voter` is
    /// whether it votes in the metadata group now. Idempotent.
    Start { metadata_voter: bool },
    /// A group's leader reports that the group's membership no longer holds the node.
    ReplicaGone { group: GroupId },
    /// The node is back: its metadata replica caught up (and votes, if it did before).
    Finish,
}

/// Applies `op` for `node`, started by the command at `log_index`.
pub(crate) fn apply(
    replacements: &mut BTreeMap<NodeId, Replacement>,
    log_index: u64,
    node: NodeId,
    op: &ReplaceOp,
    brokers: &BTreeMap<NodeId, Broker>,
    topics: &BTreeMap<String, Topic>,
    next_group: GroupId,
) -> Response {
    match op {
        ReplaceOp::Start { metadata_voter } => {
            let Some(b) = brokers.get(&node) else { return crate::unknown_node(node) };
            if replacements.contains_key(&node) {
                return Response::Ok;
            }
            if b.admin == AdminState::Removed {
                return Response::error(ErrorCode::PolicyViolation, format!("node {node} was removed"));
            }
            if b.liveness == Liveness::Alive {
                return Response::error(
                    ErrorCode::PolicyViolation,
                    format!(
                        "node {node} is alive: stop it (and keep it stopped) before replacing it; a node \
                         is replaced only once the cluster has stopped hearing from it"
                    ),
                );
            }
            let mut pending = BTreeSet::from([METADATA_GROUP]);
            let mut lone = Vec::new();
            for t in topics.values() {
                for p in t.partitions.iter().filter(|p| p.hosts().contains(&node)) {
                    if p.hosts().len() == 1 {
                        lone.push(format!("{}/{}", t.name, p.partition));
                    }
                    pending.insert(p.group);
                }
            }
            if !lone.is_empty() {
                return Response::error(
                    ErrorCode::PolicyViolation,
                    format!(
                        "node {node} holds the only replica of {}: their data went with its disk; delete \
                         those topics (or restore the node's data) first",
                        lone.join(", ")
                    ),
                );
            }
            let r =
                Replacement { id: log_index, pending, metadata_voter: *metadata_voter, first_new_group: next_group };
            replacements.insert(node, r);
            Response::Ok
        }
        ReplaceOp::ReplicaGone { group } => {
            if let Some(r) = replacements.get_mut(&node) {
                r.pending.remove(group);
            }
            Response::Ok
        }
        ReplaceOp::Finish => match replacements.get(&node) {
            Some(r) if !r.ready() => Response::error(
                ErrorCode::InvalidRequest,
                format!("node {node}'s old replica is still in {} groups", r.pending.len()),
            ),
            Some(_) => {
                replacements.remove(&node);
                Response::Ok
            }
            None => Response::Ok,
        },
    }
}

/// Forgets deleted groups: nothing is left to leave.
pub(crate) fn forget_groups(replacements: &mut BTreeMap<NodeId, Replacement>, gone: &BTreeSet<GroupId>) {
    for r in replacements.values_mut() {
        r.pending.retain(|g| !gone.contains(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, MetadataState, TopicPolicy};

    fn cluster() -> (MetadataState, u64) {
        let mut s = MetadataState::new();
        for id in 1..=3 {
            s.apply(id, &Command::RegisterBroker(Broker::new(id, format!("n{id}:7070"), Default::default())));
        }
        let topic = |name: &str, rf| Command::CreateTopic {
            name: name.into(),
            partitions: 2,
            replication_factor: rf,
            policy: TopicPolicy::default(),
        };
        assert!(matches!(s.apply(4, &topic("three", 3)), Response::TopicCreated(_)));
        (s, 5)
    }

    fn replace(node: NodeId, op: ReplaceOp) -> Command {
        Command::Replace { node, op }
    }

    fn dead(node: NodeId) -> Command {
        Command::SetLiveness { node, liveness: Liveness::Dead }
    }

    /// A replacement starts only for a registered node the cluster no longer hears from,
    /// lists every group the node is in (the metadata group too), is ready once each has
    /// reported the old replica gone, and finishes only then.
    #[test]
    fn a_replacement_waits_for_every_group_then_finishes() {
        let (mut s, mut i) = cluster();
        let mut next = || {
            i += 1;
            i
        };
        let start = replace(3, ReplaceOp::Start { metadata_voter: true });
        let refused = |r: Response, code| matches!(r, Response::Error { code: c, .. } if c == code);
        assert!(refused(s.apply(next(), &start), ErrorCode::PolicyViolation), "node 3 is alive");
        assert!(refused(
            s.apply(next(), &replace(9, ReplaceOp::Start { metadata_voter: false })),
            ErrorCode::UnknownNode
        ));
        s.apply(next(), &dead(3));
        let at = next();
        assert_eq!(s.apply(at, &start), Response::Ok);
        let groups: BTreeSet<GroupId> = s.groups_on(3).keys().copied().collect();
        assert_eq!(groups.len(), 2);
        let r = s.replacements()[&3].clone();
        assert_eq!(r.pending, groups.iter().copied().chain([METADATA_GROUP]).collect());
        assert!(r.metadata_voter && !r.ready() && r.id == at);
        assert!(r.first_new_group > *groups.last().unwrap());
        assert_eq!(s.apply(next(), &start), Response::Ok, "again: the same replacement");
        assert_eq!(s.replacements()[&3], r);

        assert!(refused(s.apply(next(), &replace(3, ReplaceOp::Finish)), ErrorCode::InvalidRequest));
        for g in groups.iter().chain([&METADATA_GROUP]) {
            assert!(!s.replacements()[&3].ready());
            assert_eq!(s.apply(next(), &replace(3, ReplaceOp::ReplicaGone { group: *g })), Response::Ok);
        }
        assert!(s.replacements()[&3].ready());
        assert_eq!(s.apply(next(), &replace(3, ReplaceOp::Finish)), Response::Ok);
        assert!(s.replacements().is_empty());
        // A late report changes nothing.
        assert_eq!(s.apply(next(), &replace(3, ReplaceOp::ReplicaGone { group: 1 })), Response::Ok);
        assert!(s.replacements().is_empty());
    }

    /// A deleted topic's groups are no longer waited for.
    #[test]
    fn deleting_a_topic_drops_its_groups_from_the_wait() {
        let (mut s, i) = cluster();
        s.apply(i, &dead(2));
        assert_eq!(s.apply(i + 1, &replace(2, ReplaceOp::Start { metadata_voter: false })), Response::Ok);
        s.apply(i + 2, &replace(2, ReplaceOp::ReplicaGone { group: METADATA_GROUP }));
        assert!(!s.replacements()[&2].ready());
        assert_eq!(s.apply(i + 3, &Command::DeleteTopic { name: "three".into() }), Response::Ok);
        assert!(s.replacements()[&2].ready());
    }

    /// A node that held a partition's only replica cannot be replaced: that data is gone,
    /// and the operator must say so by deleting the topic.
    #[test]
    fn a_lone_replica_blocks_the_replacement() {
        let (mut s, i) = cluster();
        let lone = Command::CreateTopic {
            name: "single".into(),
            partitions: 3,
            replication_factor: 1,
            policy: TopicPolicy::default(),
        };
        s.apply(i, &lone);
        let holder = s.topic("single").unwrap().partitions[0].replicas[0];
        s.apply(i + 1, &dead(holder));
        match s.apply(i + 2, &replace(holder, ReplaceOp::Start { metadata_voter: false })) {
            Response::Error { code: ErrorCode::PolicyViolation, message } => {
                assert!(message.contains("single/0") && message.contains("only replica"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(s.replacements().is_empty());
    }
}
