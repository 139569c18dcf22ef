//! Stable error codes shared by the server, the wire and the client.
//!
//! A code's number is part of the wire protocol: never reuse or renumber one. The
//! client decides whether to retry from the code alone (see `is_retriable`) and whether
//! a failed write may still have happened (see `is_definite`).

use serde::{Deserialize, Serialize};

/// Every error a Flotilla node can answer with. `docs/errors.md` documents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// Not an error.
    None = 0,
    /// Something unexpected went wrong on the server. The write may or may not have happened.
    Internal = 1,
    /// The request is malformed or breaks a limit; nothing was done.
    InvalidRequest = 2,
    /// No such topic.
    UnknownTopic = 3,
    /// The topic exists but has no such partition.
    UnknownPartition = 4,
    /// This node does not lead the partition (or the metadata group). The error carries
    /// the leader's address when it is known. Nothing was done.
    NotLeader = 5,
    /// The partition (or metadata group) has no leader right now, or is not hosted here
    /// yet. Nothing was done; retry after a short backoff.
    Unavailable = 6,
    /// A batch's checksum does not match its contents; nothing was written.
    CorruptBatch = 7,
    /// A batch or record is over its size limit; nothing was written.
    RecordTooLarge = 8,
    /// The requested offset is outside `[log start, high watermark]`.
    OffsetOutOfRange = 9,
    /// A topic with this name exists already.
    TopicExists = 10,
    /// The cluster cannot satisfy the request (for example, fewer live brokers than the
    /// replication factor).
    PolicyViolation = 11,
    /// The server did not finish in time; a write may or may not have happened.
    Timeout = 12,
    /// The node's storage failed (disk full, I/O error); nothing was acknowledged.
    StorageError = 13,
    /// The node is shutting down; retry on another node.
    ShuttingDown = 14,
    /// Leadership changed while the write was in flight: it may or may not have been
    /// committed by the new leader.
    LeaderChanged = 15,
    /// No registered node has this id.
    UnknownNode = 16,
    /// The request refers to a move, epoch or membership that is no longer current
    /// (cancelled, finished or superseded); nothing was done.
    StaleEpoch = 17,
    /// The node's free disk space is below its threshold (`disk-free-min-bytes`): it
    /// refuses writes, keeps serving reads and replication, and accepts writes again by
    /// itself once retention has freed space. Nothing was written; retry later.
    DiskFull = 18,
    /// A producer with a newer epoch has the same producer id (a restarted producer
    /// fenced this one): nothing was written, and this producer may write no more.
    ProducerFenced = 19,
    /// An idempotent producer's batch does not carry the next sequence the partition
    /// expects (a batch is missing before it, or the partition no longer knows the
    /// producer): nothing was written. Fatal for that producer on that partition.
    OutOfOrderSequence = 20,
    /// The batch uses a format or feature this node does not know (a newer batch format,
    /// an unknown compression codec): nothing was written.
    UnsupportedFormat = 21,
    /// The consumer group does not know this member (it left, or was evicted when its
    /// session timed out): the member holds no partitions and must join again.
    UnknownMember = 22,
    /// The member's epoch is older than its coordinator's: its assignment changed (a
    /// partition moved to or from it, or an offset reset re-granted one). Nothing was
    /// committed; heartbeat, take the new assignment and commit again.
    StaleMemberEpoch = 23,
    /// The group still has members (delete), or has members and the commit came from
    /// outside the group: nothing was changed.
    GroupNotEmpty = 24,
    /// No consumer group has this name.
    UnknownGroup = 25,
    /// The request's credentials are wrong (an unknown user or a wrong password), or
    /// authorization is on and the request carries no identity at all (no credentials,
    /// no client certificate): nothing was done.
    NotAuthenticated = 26,
    /// The request's principal has no ACL allowing this operation on this resource:
    /// nothing was done.
    NotAuthorized = 27,
}

impl ErrorCode {
    /// Every code, for documentation and round-trip tests.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::None,
        ErrorCode::Internal,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::NotLeader,
        ErrorCode::Unavailable,
        ErrorCode::CorruptBatch,
        ErrorCode::RecordTooLarge,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::TopicExists,
        ErrorCode::PolicyViolation,
        ErrorCode::Timeout,
        ErrorCode::StorageError,
        ErrorCode::ShuttingDown,
        ErrorCode::LeaderChanged,
        ErrorCode::UnknownNode,
        ErrorCode::StaleEpoch,
        ErrorCode::DiskFull,
        ErrorCode::ProducerFenced,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::UnsupportedFormat,
        ErrorCode::UnknownMember,
        ErrorCode::StaleMemberEpoch,
        ErrorCode::GroupNotEmpty,
        ErrorCode::UnknownGroup,
        ErrorCode::NotAuthenticated,
        ErrorCode::NotAuthorized,
    ];

    /// The wire number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire number; unknown numbers (from a newer server) map to `Internal`.
    pub fn from_u32(n: u32) -> ErrorCode {
        Self::ALL.iter().copied().find(|c| c.as_u32() == n).unwrap_or(ErrorCode::Internal)
    }

    /// A stable, upper-snake name, as shown by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "NONE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UnknownTopic => "UNKNOWN_TOPIC",
            ErrorCode::UnknownPartition => "UNKNOWN_PARTITION",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::CorruptBatch => "CORRUPT_BATCH",
            ErrorCode::RecordTooLarge => "RECORD_TOO_LARGE",
            ErrorCode::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            ErrorCode::TopicExists => "TOPIC_EXISTS",
            ErrorCode::PolicyViolation => "POLICY_VIOLATION",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::LeaderChanged => "LEADER_CHANGED",
            ErrorCode::UnknownNode => "UNKNOWN_NODE",
            ErrorCode::StaleEpoch => "STALE_EPOCH",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::ProducerFenced => "PRODUCER_FENCED",
            ErrorCode::OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            ErrorCode::UnsupportedFormat => "UNSUPPORTED_FORMAT",
            ErrorCode::UnknownMember => "UNKNOWN_MEMBER",
            ErrorCode::StaleMemberEpoch => "STALE_MEMBER_EPOCH",
            ErrorCode::GroupNotEmpty => "GROUP_NOT_EMPTY",
            ErrorCode::UnknownGroup => "UNKNOWN_GROUP",
            ErrorCode::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorCode::NotAuthorized => "NOT_AUTHORIZED",
        }
    }

    /// Worth retrying (after refreshing metadata and a backoff).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
                | ErrorCode::StorageError
                | ErrorCode::LeaderChanged
                | ErrorCode::DiskFull
        )
    }

    /// True when a write answered with this code definitely did not happen. `Internal`
    /// and `Timeout` are indeterminate: the write may have been committed.
    pub fn is_definite(self) -> bool {
        !matches!(self, ErrorCode::Internal | ErrorCode::Timeout | ErrorCode::LeaderChanged)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u32()), "code {} reused", c.as_u32());
            assert_eq!(ErrorCode::from_u32(c.as_u32()), c);
        }
        assert_eq!(ErrorCode::from_u32(9999), ErrorCode::Internal);
    }
}
