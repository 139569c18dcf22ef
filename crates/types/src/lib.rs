//! Flotilla's vocabulary: identifiers, offsets, the record-batch wire format and its
//! checksum, stable error codes, every limit, and the `Clock` trait.
//!
//! This crate knows nothing of networking, storage engines or consensus. Everything
//! here is plain data plus pure functions, so every other crate may depend on it.

pub mod acl;
pub mod batch;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod group;
pub mod ids;
pub mod limits;
pub mod planted;
pub mod policy;
pub mod quota;

pub use batch::{BatchError, Compression, ProducerStamp, Record, RecordBatch};
pub use clock::{Clock, SystemClock};
pub use error::ErrorCode;
pub use group::GroupHeartbeat;
pub use ids::{Acks, Assignor, GroupId, METADATA_GROUP, NodeId, Offset, PartitionId};
pub use policy::{Labels, TopicPolicy};
