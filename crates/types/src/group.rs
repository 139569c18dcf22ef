//! Plain data of consumer groups shared by the edge (`proto`, which checks and produces
//! them) and the node (which acts on them): defined once, here.

use std::collections::BTreeSet;

use crate::{Assignor, PartitionId};

/// A consumer group member's heartbeat (or join, or leave), as checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeartbeat {
    pub group: String,
    pub member: String,
    /// 0: a join.
    pub epoch: u64,
    pub leave: bool,
    pub topics: BTreeSet<String>,
    pub client: String,
    pub zone: String,
    pub session_timeout_ms: u32,
    pub assignor: Assignor,
    pub owned: Vec<(String, PartitionId)>,
}
