//! The cluster as a node describes it and a client reads it: brokers, topics and their
//! partitions. Plain data defined once: the node builds them from its metadata, the wire
//! carries them, the client checks them on arrival and the CLI prints them (as text or
//! JSON).

use serde::Serialize;

use crate::{GroupId, NodeId, Offset, PartitionId};

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
