//! Plain data of consumer groups shared by the edge (`proto`, which checks and produces
//! them) and the node (which acts on them): defined once, here.

use std::collections::BTreeSet;

use crate::{Assignor, Offset, PartitionId, limits};

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

/// Where a share group starts reading a partition it never read (Kafka's
/// `share.auto.offset.reset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ShareStart {
    /// At the log start: every record still there.
    Earliest,
    /// At the high watermark when the group first reaches the partition: only records
    /// written from then on (the default, as Kafka's share groups).
    #[default]
    Latest,
}

/// How a share group treats its records (RFC 0007); set by the member that creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareConfig {
    /// Deliveries before a record goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// How long a member holds a record before it is given to another.
    pub lock_timeout_ms: u32,
    /// At most one record of a key in flight in the group at a time, in offset order.
    pub key_ordered: bool,
    /// Where the group starts a partition it never read. The group's position in a
    /// partition is fixed the first time a member reaches it, so every member reads on
    /// from there.
    pub start: ShareStart,
}

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig {
            max_deliveries: limits::SHARE_DELIVERIES_DEFAULT,
            lock_timeout_ms: limits::SHARE_LOCK_MS_DEFAULT,
            key_ordered: false,
            start: ShareStart::Latest,
        }
    }
}

impl ShareConfig {
    /// Why the configuration is refused, if it is. The edge and the state machine both
    /// call it.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=limits::SHARE_DELIVERIES_MAX).contains(&self.max_deliveries) {
            return Err(format!(
                "max deliveries {} is outside 1..={}",
                self.max_deliveries,
                limits::SHARE_DELIVERIES_MAX
            ));
        }
        if !(limits::SHARE_LOCK_MS_MIN..=limits::SHARE_LOCK_MS_MAX).contains(&self.lock_timeout_ms) {
            return Err(format!(
                "lock timeout {} ms is outside {}..={} ms",
                self.lock_timeout_ms,
                limits::SHARE_LOCK_MS_MIN,
                limits::SHARE_LOCK_MS_MAX
            ));
        }
        Ok(())
    }
}

/// A share group member's join, heartbeat or leave, as checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareHeartbeat {
    pub group: String,
    pub member: String,
    pub leave: bool,
    pub topics: BTreeSet<String>,
    pub client: String,
    pub session_timeout_ms: u32,
    pub config: ShareConfig,
}

/// A share group member's request for records it fetched, as checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareAcquire {
    pub group: String,
    pub member: String,
    /// Numbers the member's requests (0: not numbered); a retry carries its first
    /// attempt's number and is answered as that was.
    pub seq: u64,
    pub partition: (String, PartitionId),
    pub log_start: Offset,
    pub from: Offset,
    pub to: Offset,
    /// Offsets in order, each with its key hash.
    pub records: Vec<(Offset, Option<u64>)>,
    pub max: u32,
}

/// How a member acknowledges a record it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ShareAckKind {
    /// Processed: done.
    Accept,
    /// Give it to a member again (or to the dead-letter topic once it was given
    /// `max_deliveries` times).
    Release { error: String },
    /// Never process it: it goes to the dead-letter topic.
    Reject { error: String },
    /// A dead-letter task: the record is in the dead-letter topic now.
    DeadLettered,
}

/// A share group member's acknowledgements, as checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareAcks {
    pub group: String,
    pub member: String,
    /// As [`ShareAcquire::seq`].
    pub seq: u64,
    pub acks: Vec<((String, PartitionId), Offset, ShareAckKind)>,
}

/// A record key's hash for key-ordered share groups: FNV-1a, 64 bits, the same in every
/// client and on every node.
pub fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}
