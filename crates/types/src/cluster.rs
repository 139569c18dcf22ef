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
