//! The cluster as a node describes it and a client reads it: brokers, topics and their
//! partitions. Plain data defined once: the node builds them from its metadata, the wire
//! carries them, the client checks them on arrival and the CLI prints them (as text or
//! JSON).

use serde::Serialize;

use crate::{GroupId, Labels, NodeId, Offset, PartitionId, TopicPolicy};

/// A broker node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerInfo {
    pub id: NodeId,
    /// The client address, `host:port`.
    pub addr: String,
    pub region: String,
    pub zone: String,
    pub rack: String,
    /// `alive`, `suspected`, `dead`, `draining` or `removed`, as the metadata group
    /// records it (empty when the node did not say).
    pub state: String,
    /// In the metadata group: `voter`, `learner` or `none` (empty when not said).
    pub role: String,
    /// Replicas assigned to it (move targets included).
    pub replicas: u64,
    /// Partitions that prefer it as their leader.
    pub preferred_leaders: u64,
    /// Where other nodes reach it, `host:port` (empty when not said).
    pub rpc_addr: String,
}

impl BrokerInfo {
    /// A broker known only by its id and address (from a `NOT_LEADER` hint).
    pub fn bare(id: NodeId, addr: String) -> BrokerInfo {
        BrokerInfo {
            id,
            addr,
            region: String::new(),
            zone: String::new(),
            rack: String::new(),
            state: String::new(),
            role: String::new(),
            replicas: 0,
            preferred_leaders: 0,
            rpc_addr: String::new(),
        }
    }

    /// Whether it may serve reads: not known to be dead, suspected or removed.
    pub fn may_serve(&self) -> bool {
        !matches!(self.state.as_str(), "dead" | "suspected" | "removed")
    }
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    pub partition: PartitionId,
    /// The partition's Raft group.
    pub group_id: GroupId,
    /// `None` when the answering node does not know the leader.
    pub leader: Option<NodeId>,
    pub replicas: Vec<NodeId>,
    /// As the answering node knows it, when it hosts a replica.
    pub high_watermark: Option<Offset>,
}

/// A topic and its partitions, in partition order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub replication_factor: u32,
    pub partitions: Vec<PartitionInfo>,
}

/// A replica catching up in a move, as the partition's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatchUpInfo {
    pub node: NodeId,
    /// The last log index it is known to hold; `None` until it has answered.
    pub matched: Option<u64>,
    /// The leader's last log index.
    pub leader_last: u64,
}

impl CatchUpInfo {
    /// How far it has caught up, 0 to 100 (0 until it has answered).
    pub fn percent(&self) -> u64 {
        let matched = self.matched.unwrap_or(0);
        if self.leader_last == 0 {
            return 100;
        }
        (u128::from(matched.min(self.leader_last)) * 100 / u128::from(self.leader_last)) as u64
    }
}

/// A partition move in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveInfo {
    pub topic: String,
    pub partition: PartitionId,
    pub group_id: GroupId,
    pub move_id: u64,
    pub from: Vec<NodeId>,
    pub to: Vec<NodeId>,
    pub reason: String,
    /// The partition's leader, when the node that answered knew it.
    pub leader: Option<NodeId>,
    /// Catch-up of the new replicas; empty when the node that answered does not lead the
    /// partition.
    pub progress: Vec<CatchUpInfo>,
}

/// The metadata group's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllersInfo {
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// A membership change is in flight.
    pub changing: bool,
}

/// What a plan (`flotilla cluster plan`) asks about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanScenario {
    /// What the controller would do now.
    Now,
    /// If this node were drained.
    Drain(NodeId),
    /// If this node were dead.
    Dead(NodeId),
    /// If a node with these labels joined.
    AddNode { id: NodeId, labels: Labels },
    /// If the topic had this replication factor and policy.
    TopicConfig { name: String, replication_factor: u32, policy: TopicPolicy },
}

/// The partitions that need attention, judged from what every node's metadata says
/// (brokers' states, partitions' leaders and replicas): the one rule behind the console,
/// `flotilla_cluster_leaderless_partitions` and `flotilla cluster health`. Whether each
/// replica keeps up is its leader's to judge, which only the leader can add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attention {
    /// (topic, partition) with no leader on a node that serves (`BrokerInfo::may_serve`).
    pub leaderless: Vec<(String, PartitionId)>,
    /// (topic, partition, replicas on nodes that do not serve), for each partition with
    /// such a replica or fewer replicas than its topic's replication factor.
    pub under_replicated: Vec<(String, PartitionId, Vec<NodeId>)>,
}

impl Attention {
    pub fn of(brokers: &[BrokerInfo], topics: &[TopicInfo]) -> Attention {
        let serving: std::collections::BTreeSet<NodeId> =
            brokers.iter().filter(|b| b.may_serve()).map(|b| b.id).collect();
        let mut out = Attention::default();
        for t in topics {
            for p in &t.partitions {
                if !p.leader.is_some_and(|l| serving.contains(&l)) {
                    out.leaderless.push((t.name.clone(), p.partition));
                }
                let missing: Vec<NodeId> = p.replicas.iter().copied().filter(|r| !serving.contains(r)).collect();
                if !missing.is_empty() || p.replicas.len() < t.replication_factor as usize {
                    out.under_replicated.push((t.name.clone(), p.partition, missing));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_names_leaderless_and_under_replicated_partitions() {
        let broker = |id, state: &str| BrokerInfo { state: state.into(), ..BrokerInfo::bare(id, format!("h:{id}")) };
        let part = |partition, leader, replicas: &[NodeId]| PartitionInfo {
            partition,
            group_id: u64::from(partition) + 1,
            leader,
            replicas: replicas.to_vec(),
            high_watermark: None,
        };
        let brokers = [broker(1, "alive"), broker(2, "suspected"), broker(3, "draining"), broker(4, "alive")];
        let topics = [TopicInfo {
            name: "t".into(),
            replication_factor: 3,
            partitions: vec![
                part(0, Some(1), &[1, 3, 4]),
                part(1, Some(2), &[2, 3, 4]),
                part(2, None, &[1, 3, 4]),
                part(3, Some(3), &[3, 1]),
            ],
        }];
        let a = Attention::of(&brokers, &topics);
        // A suspected leader, or none; a draining node still serves.
        assert_eq!(a.leaderless, vec![("t".to_string(), 1), ("t".to_string(), 2)]);
        // A replica on a suspected node; fewer replicas than the replication factor.
        assert_eq!(a.under_replicated, vec![("t".to_string(), 1, vec![2]), ("t".to_string(), 3, vec![])]);
    }
}

/// How far a node's replacement got (`flotilla cluster replace-node`, RFC 0008).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplacementInfo {
    pub node: NodeId,
    /// `none` (no replacement in progress: never started, or finished), `removing` (its
    /// old replica is still in `groups_left`; 0 is the metadata group) or `ready` (the
    /// node may start on an empty data directory).
    pub state: String,
    pub groups_left: Vec<GroupId>,
    /// Whether it votes in the metadata group again once back.
    pub metadata_voter: bool,
    /// The first group id created after the replacement started (0 when none is in
    /// progress): back on an empty disk, the node initialises no group below it.
    pub first_new_group: GroupId,
}
