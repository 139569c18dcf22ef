//! Flotilla's smart client: connect to one broker, and the client finds the rest.
//!
//! - **Metadata cache and leader routing.** [`Client::connect`] loads the cluster's
//!   brokers, topics, partitions and leaders from the first of its bootstrap addresses
//!   that answers (it tries each in turn) and keeps one gRPC channel per broker (opened
//!   lazily); metadata refreshes try every broker it knows before giving up. Every
//!   produce, fetch and offset lookup goes to the partition's leader; while the leader is
//!   unknown, to its replicas.
//! - **Retries by error code.** `NOT_LEADER` with a named leader is retried there at once;
//!   `UNAVAILABLE`, `SHUTTING_DOWN`, unreachable nodes and unnamed leaders refresh the
//!   metadata and retry with jittered exponential backoff (50 ms doubling to 1 s) until a
//!   deadline (30 s); `UNKNOWN_TOPIC` refreshes once, then fails. See [`ClientConfig`].
//! - **Definite and indeterminate failures.** [`ClientError::is_indeterminate`] says
//!   whether a failed write may still have happened (a timeout, a connection lost
//!   mid-request, `INTERNAL`/`TIMEOUT`). The idempotent [`Producer`] (the default) retries
//!   such a failure safely: the partition appends a batch once. Without idempotence a
//!   retried produce may write its records twice, and the producer retries only with
//!   [`ProducerConfig::retry_indeterminate`] (documented as "may duplicate").
//! - **Batching producer.** [`Producer::send`] picks the partition by key (Kafka's murmur2
//!   partitioner; the sticky partitioner without a key), gathers concurrent sends to one
//!   partition into one record batch (no linger by default: the next batch fills while
//!   earlier ones are in flight), can keep up to five batches per partition in flight (one by default) in
//!   order, and gives each caller its own offset. Idempotent by default (exactly once per
//!   send, across retries and leader changes), with a byte-bounded buffer, `flush`,
//!   compression and acknowledgement levels: see [`ProducerConfig`].
//! - **Consumer.** [`Consumer::poll`] long-polls a partition's leader and verifies every
//!   batch's CRC32C. With [`ClientConfig::zone`] set it reads from a replica in the
//!   client's zone instead (follower fetching), falling back to the leader.
//! - **Consumer groups.** [`Client::group_consumer`] joins a group whose coordinator
//!   assigns partitions incrementally (a member keeps reading what does not move; a
//!   moved partition is committed and released by its old owner before the new one
//!   starts at the committed offset), with auto-commit, `commit`/`commit_async`,
//!   pause/resume and assignment callbacks; `list_groups`, `describe_group` (lag in
//!   records and seconds), `delete_group` and online `reset_offsets` (RFC 0005).
//! - **Admin.** Topics (with placement policies), cluster description, and cluster
//!   operations: adding, draining and removing nodes, moving partitions and leaders,
//!   plans, moves in progress, the metadata group's voters; all as plain serialisable
//!   structs.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use flotilla_client::{Client, ProducerConfig, Record, RecordExt, StartAt};
//!
//! # async fn demo() -> Result<(), flotilla_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//! if client.describe_topic("orders").await.is_err() {
//!     client.create_topic("orders", 3, 3).await?;
//! }
//!
//! let producer = client.producer("orders", ProducerConfig::default());
//! let (partition, offset) = producer.send(Record::value("hello").with_key("customer-42")).await?;
//! println!("written at {partition}/{offset}");
//!
//! let mut consumer = client.consumer("orders", partition, StartAt::Offset(offset)).await?;
//! for r in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{} {:?}", r.offset, r.record.value);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Of the workspace's crates this one depends on `flotilla-proto` and `flotilla-types`
//! only; protobuf types do not appear in its API.

mod admin;
mod backoff;
mod client;
mod config;
mod consumer;
mod error;
mod group;
mod metadata;
pub mod partitioner;
mod producer;
mod router;
mod security;
mod share;
mod wire;

pub use admin::{
    ActionKind, CatchUpInfo, ControllersInfo, Labels, MoveInfo, PlanAction, PlanInfo, PlanScenario, ReplacementInfo,
    TopicPolicy,
};
pub use client::{Client, ReplicaRead};
pub use config::{ClientConfig, ClientTls, ConsumerConfig, Credentials, ProducerConfig};
pub use consumer::{ConsumedRecord, Consumer, OffsetReset, StartAt};
pub use error::{ClientError, Result};
pub use flotilla_types::Assignor;
pub use flotilla_types::group::{ShareConfig, ShareStart};
pub use flotilla_types::{Acks, Compression, ErrorCode, NodeId, Offset, PartitionId, Record};
pub use group::{
    AssignmentEvent, GroupConfig, GroupConsumer, GroupInfo, GroupRecord, GroupSummary, MemberInfo, PartitionLag,
    ShareInfo, SharePartitionInfo, TopicPartition,
};
pub use metadata::{BrokerInfo, ClusterInfo, PartitionInfo, TopicInfo, TopicSummary};
pub use producer::{Ack, Producer};
pub use security::{AclEntry, Operation, PatternType, QuotaInfo, QuotaLimits, ResourceType, UserInfo};
pub use share::{AckMode, AckOutcome, ShareConsumer, ShareGroupConfig, ShareRecord, dead_letter_topic, dlq_headers};

/// Conveniences for building records.
pub trait RecordExt {
    /// The record with `key`.
    fn with_key(self, key: impl Into<bytes::Bytes>) -> Record;
    /// The record with one more header.
    fn with_header(self, name: impl Into<String>, value: impl Into<bytes::Bytes>) -> Record;
}

impl RecordExt for Record {
    fn with_key(mut self, key: impl Into<bytes::Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }
    fn with_header(mut self, name: impl Into<String>, value: impl Into<bytes::Bytes>) -> Record {
        self.headers.push((name.into(), value.into()));
        self
    }
}
