//! Identifiers. Plain integers with names, so a signature says what it takes.

/// A broker node's id, unique in the cluster and never reused.
pub type NodeId = u64;

/// A Raft group's id. Group 0 is the metadata group; every partition has its own
/// group id, allocated by the metadata group and never reused.
pub type GroupId = u64;

/// A partition's index within its topic, `0..partitions`.
pub type PartitionId = u32;

/// A record's position in its partition. The first record has offset 0.
pub type Offset = u64;

/// The metadata group's id (design decision 5, docs/decisions.md).
pub const METADATA_GROUP: GroupId = 0;

/// How a consumer group's coordinator spreads a group's partitions over its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Assignor {
    /// As even as possible over all members, keeping every partition where it is unless
    /// the balance needs it elsewhere (sticky); among equally loaded members, one in a
    /// zone that holds a replica of the partition is preferred.
    #[default]
    Uniform,
    /// Per topic, contiguous ranges of partitions to the members in id order (Kafka's
    /// range assignor): members subscribed to the same topics get the same partition
    /// numbers of each topic. Not sticky.
    Range,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// `uniform` (or `sticky`) or `range`.
    pub fn parse(s: &str) -> Result<Assignor, String> {
        match s {
            "uniform" | "sticky" => Ok(Assignor::Uniform),
            "range" => Ok(Assignor::Range),
            _ => Err(format!("unknown assignor {s:?}: uniform or range")),
        }
    }
}

/// When a produce is acknowledged (Kafka's `acks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Acks {
    /// Once a quorum of replicas has the batch durably (fsynced) and it is committed: an
    /// acknowledged batch survives the loss of any minority of replicas. The default.
    #[default]
    All,
    /// Once the leader has the batch durably in its own log, before any follower does:
    /// lower latency, but an acknowledged batch is lost if the leader's node is lost, or
    /// partitioned away and replaced, before a quorum has it. The offsets answered are
    /// the ones the batch gets if it is committed.
    Leader,
}

impl Acks {
    pub fn name(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "leader",
        }
    }

    /// `all` (or `-1`, Kafka's spelling) or `leader` (or `1`).
    pub fn parse(s: &str) -> Result<Acks, String> {
        match s {
            "all" | "-1" => Ok(Acks::All),
            "leader" | "1" => Ok(Acks::Leader),
            _ => Err(format!("unknown acks {s:?}: all or leader")),
        }
    }
}
