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

/// The metadata group's id (design decision 5).
pub const METADATA_GROUP: GroupId = 0;
