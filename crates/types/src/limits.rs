//! Every limit in one place (design decision 11, docs/decisions.md). Units are named last.
//!
//! A request over one of these is refused with `ErrorCode::InvalidRequest` or
//! `ErrorCode::RecordTooLarge`; no allocation is ever sized by a client's number.

/// The largest gRPC message a node accepts or sends (client and Raft traffic).
pub const REQUEST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The largest encoded record batch a producer may send in one Produce request.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The most records in one batch.
pub const BATCH_RECORDS_MAX: usize = 10_000;

/// The largest key of one record.
pub const RECORD_KEY_BYTES_MAX: usize = 64 * 1024;

/// The most headers on one record.
pub const RECORD_HEADERS_MAX: usize = 64;

/// The most bytes a Fetch may ask for; larger asks are clamped to this.
pub const FETCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The longest a Fetch may wait for new data.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

/// The largest Fetch answer: `FETCH_BYTES_MAX` of batches (or one batch over it, as a
/// fetch always returns at least one) with their framing. Servers encode and clients
/// decode Fetch answers up to this, above the limit on requests.
pub const FETCH_RESPONSE_BYTES_MAX: usize = FETCH_BYTES_MAX + BATCH_BYTES_MAX + 64 * 1024;

/// Topic names: 1..=TOPIC_NAME_BYTES_MAX bytes of `[a-zA-Z0-9._-]`.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// A client id (the principal quotas apply to, until clients authenticate): at most this
/// many bytes, as Kafka's `client.id` is in practice.
pub const CLIENT_ID_BYTES_MAX: usize = 255;

/// Principals a node keeps quota state for at once; beyond it, principals that are not
/// being throttled are forgotten, and if that is not enough new ones share one account.
pub const QUOTA_PRINCIPALS_MAX: usize = 10_000;

/// The most partitions in one topic.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;

/// The most topics in a cluster.
pub const TOPICS_MAX: usize = 10_000;

/// The replication factor every partition has in this version.
pub const REPLICATION_FACTOR_MAX: u32 = 7;

/// Node labels: at most this many bytes each (region, zone, rack).
pub const LABEL_BYTES_MAX: usize = 128;

/// The most Raft entries in one AppendEntries message.
pub const RAFT_ENTRIES_PER_APPEND_MAX: u64 = 256;

/// The most entry bytes in one AppendEntries message; a larger one is cut short (the
/// follower acknowledges the prefix it got). At least one entry is always sent.
pub const RAFT_APPEND_BYTES_MAX: usize = 6 * 1024 * 1024;

/// The largest node-to-node Raft message: one batch at its limit plus framing.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The most bytes one bincode value of the raft crate (a node-to-node message or reply,
/// a stored log entry, vote or tombstone) may be, and the most bytes the lengths inside
/// it may claim in all: a decoder never allocates more on a peer's or a file's word.
pub const DECODE_BYTES_MAX: usize = RAFT_MESSAGE_BYTES_MAX;

/// How long one node-to-node Raft call may take before it counts as unreachable.
pub const RAFT_CALL_TIMEOUT_MS: u64 = 5_000;

/// Connections one node's listener keeps open at once; one more is closed as soon as it
/// is accepted.
pub const CONNECTIONS_MAX: usize = 4096;

/// Requests in flight on one connection (HTTP/2 concurrent streams); the client queues
/// the rest. Node-to-node traffic of every group shares one connection per peer.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Streams a peer may open and reset before the node-to-node listener has accepted them
/// (HTTP/2's defence against "rapid reset" floods; 20 by default, which the client
/// listener keeps). A node resets the calls it stops waiting for, elections' vote
/// requests among them: with thousands of groups electing at once that was more than 20
/// at a time, and the listener then closed the whole connection, failing every group's
/// call on it (10,000 partitions never settled). A reset stream no longer counts toward
/// `STREAMS_PER_CONNECTION_MAX`, so a peer whose calls time out while this node is too
/// busy to accept them resets more than that before it catches up: 1,024 closed the
/// connection again under a topic of 3,000 partitions. With node TLS only the cluster's
/// nodes reach this listener; each stream waiting costs a few hundred bytes.
pub const NODE_RESET_STREAMS_MAX: usize = 16 * STREAMS_PER_CONNECTION_MAX as usize;

/// Calls a node remembers having reset (stopped waiting for) on one peer connection, and
/// for how long: an answer that arrives for one of them is dropped quietly. HTTP/2's
/// defaults are 50 for one second; beyond them a late answer counts as a protocol error
/// of the peer, and after 1,024 of those (over the connection's life) the node closed
/// the connection, failing every group's calls on it. A busy peer answers late by the
/// thousand: a topic of 3,000 partitions never settled. Each remembered call costs a few
/// hundred bytes.
pub const NODE_RESET_CALLS_REMEMBERED: usize = 16_384;
pub const NODE_RESET_CALLS_REMEMBERED_MS: u64 = 2 * RAFT_CALL_TIMEOUT_MS;

/// The HTTP/2 connection window between nodes. HTTP/2 (the `h2` crate) closes a
/// connection (GOAWAY, ENHANCE_YOUR_CALM "too_many_data_frames") once the small DATA
/// frames it holds unread, and those of calls reset before they were read, pass a budget
/// of half the connection window: 512 KiB by default, which a restart at 10,000
/// partitions passed within seconds, failing every call on the connection at once. The
/// window bounds nothing else here: each call's own window (1 MiB) and the streams per
/// connection (`STREAMS_PER_CONNECTION_MAX`) do.
pub const NODE_CONNECTION_WINDOW_BYTES: u32 = 256 << 20;

/// Frames from a peer node on calls this node no longer knows, after which it closes
/// the connection (HTTP/2's defence against a peer that makes it reset streams; 1,024 by
/// default, over the connection's whole life). Answers later than
/// `NODE_RESET_CALLS_REMEMBERED_MS` count here.
pub const NODE_LATE_FRAMES_MAX: usize = 1 << 20;

/// The longest any request may run on the server: a fetch's longest wait and more.
pub const REQUEST_TIMEOUT_MS: u64 = 2 * FETCH_WAIT_MS_MAX;

/// How long an accepted connection may stay silent before its first byte (a client that
/// connects and says nothing is closed).
pub const CONNECTION_GREETING_MS: u64 = 10_000;

/// HTTP/2 keepalive: a ping after this long without traffic, and the connection is
/// closed if the ping is not answered within `KEEPALIVE_TIMEOUT_MS`.
pub const KEEPALIVE_INTERVAL_MS: u64 = 10_000;
pub const KEEPALIVE_TIMEOUT_MS: u64 = 20_000;

/// The largest block of request headers (HTTP/2 header list) a node accepts.
pub const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

const _: () = assert!(BATCH_BYTES_MAX < REQUEST_BYTES_MAX, "a full batch fits in one produce request");
const _: () = assert!(RAFT_APPEND_BYTES_MAX + BATCH_BYTES_MAX < RAFT_MESSAGE_BYTES_MAX, "an append fits in a message");
const _: () = assert!(DECODE_BYTES_MAX >= RAFT_MESSAGE_BYTES_MAX, "every message a node accepts decodes");
const _: () = assert!(REQUEST_TIMEOUT_MS > FETCH_WAIT_MS_MAX && REQUEST_TIMEOUT_MS > RAFT_CALL_TIMEOUT_MS);
const _: () = assert!(
    FETCH_RESPONSE_BYTES_MAX >= FETCH_BYTES_MAX + BATCH_BYTES_MAX,
    "a fetch answer at its byte limit, or of one batch at its limit, fits the answer limit"
);
const _: () = assert!(RAFT_TAIL_BYTES_MAX >= RAFT_APPEND_BYTES_MAX, "a full append can be sent from memory");
const _: () = assert!(
    FORWARDED_WRITE_TIMEOUT_MS < REQUEST_TIMEOUT_MS,
    "a forwarded write is answered before the server ends the request"
);
const _: () = assert!(
    MEMBERSHIP_TIMEOUT_MS > RAFT_CALL_TIMEOUT_MS,
    "a membership change waits longer than one call that times out"
);

/// The most encoded bytes of recent entries a group keeps in memory, so that entries
/// just written are replicated and applied without reading them back.
pub const RAFT_TAIL_BYTES_MAX: usize = 8 << 20;

/// How long a node writing a command another node forwarded to it (it leads the group)
/// waits for the commit before it answers TIMEOUT.
pub const FORWARDED_WRITE_TIMEOUT_MS: u64 = 10_000;

/// How long a membership change (add a learner, change voters) may take to commit
/// before it is reported indeterminate.
pub const MEMBERSHIP_TIMEOUT_MS: u64 = 10_000;

/// The metrics endpoint (`/metrics`): the largest request head read (a longer one is
/// answered 431 and closed), how long a client may take to send it and read the
/// answer, and the connections served at once (further ones wait in the backlog).
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const METRICS_CONNECTIONS_MAX: usize = 64;

/// A replica is in sync with its partition's leader when it acknowledged the leader
/// within `replica-lag-time-max-ms` (Kafka's `replica.lag.time.max.ms`; this is its
/// default here) and holds the leader's log but for at most `REPLICA_LAG_ENTRIES_MAX`
/// entries. One rule for the under-replicated metric, moves and controller changes.
pub const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 15_000;
pub const REPLICA_LAG_ENTRIES_MAX: u64 = 8;

/// Checks a topic name; returns why it is refused.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!("topic name is {} bytes, the limit is {TOPIC_NAME_BYTES_MAX}", name.len()));
    }
    if name == "." || name == ".." {
        return Err("topic name may not be '.' or '..'".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("topic name contains {c:?}; allowed are ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Log bytes per second a node sends to replicas catching up in partition moves, unless
/// configured (`move-bytes-per-sec`).
pub const MOVE_BYTES_PER_SEC_DEFAULT: u64 = 64 * 1024 * 1024;

/// Partition moves the controller keeps in progress at once, unless configured.
pub const MOVES_CONCURRENT_DEFAULT: usize = 8;

/// Voters of the metadata group at most.
pub const CONTROLLERS_MAX: usize = 7;

/// Regions, zones and nodes one topic policy lists at most.
pub const POLICY_ENTRIES_MAX: usize = 256;

/// Batches an idempotent producer may have in flight to one partition, and the batches
/// a partition remembers per producer to answer a retried one with its first offsets.
pub const PRODUCER_IN_FLIGHT_MAX: usize = 5;

/// A partition forgets a producer that has appended nothing for this long (by the
/// batches' index times): Kafka's `producer.id.expiration.ms`, default one day. A node's
/// `--producer-expiry-ms` sets it, within the two bounds below.
pub const PRODUCER_IDLE_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;
pub const PRODUCER_IDLE_EXPIRY_MS_MIN: u64 = 1_000;
pub const PRODUCER_IDLE_EXPIRY_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;

/// The most producers one partition remembers by default; past it the least recently
/// active is forgotten first (its next batch is then refused with `OUT_OF_ORDER_SEQUENCE`
/// unless it starts a new epoch). A node's `--partition-producers-max` sets it, up to
/// [`PARTITION_PRODUCERS_CEILING`] (about 200 bytes each: 20 MB per partition at most).
pub const PARTITION_PRODUCERS_MAX: usize = 10_000;
pub const PARTITION_PRODUCERS_CEILING: usize = 100_000;

/// The longest producer name (`InitProducer`) in bytes.
pub const PRODUCER_NAME_BYTES_MAX: usize = 249;

/// Consumer groups (RFC 0005). A group's name follows the topic-name rules and length.
pub const GROUP_NAME_BYTES_MAX: usize = 249;
/// A member id (chosen by the client) and a member's client id: 1..= this many bytes.
pub const MEMBER_ID_BYTES_MAX: usize = 64;
/// A member's zone label, as node labels.
pub const MEMBER_ZONE_BYTES_MAX: usize = 64;
/// Members of one group at most.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Consumer groups in the cluster at most (they live in the metadata group's state).
pub const GROUPS_MAX: usize = 10_000;
/// Topics one member subscribes to at most.
pub const GROUP_SUBSCRIPTION_TOPICS_MAX: usize = 100;
/// Partition offsets one commit or reset carries at most.
pub const GROUP_COMMIT_PARTITIONS_MAX: usize = 10_000;
/// The metadata string stored with one committed offset, in bytes: smaller than Kafka's
/// 4 KiB, because every offset lives in the metadata group's state, which every node
/// holds and snapshots whole.
pub const COMMIT_METADATA_BYTES_MAX: usize = 512;
/// Committed offsets (group × partition) in the whole cluster at most: the group state
/// stays a small part of the metadata snapshot (`DECODE_BYTES_MAX`; about 4 MB at
/// 40 bytes an offset). A commit or reset that would add offsets past it is refused.
pub const GROUP_OFFSETS_MAX: usize = 100_000;
/// A member's session timeout: a member not heard from for this long is evicted and its
/// partitions go to the others. Default, and the range a member may ask for.
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
pub const SESSION_TIMEOUT_MS_MIN: u32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
/// How often a member heartbeats to its coordinator (the coordinator's answer says so).
pub const GROUP_HEARTBEAT_MS: u32 = 1_000;

/// Share groups (RFC 0007): records one share group tracks per partition at most (the
/// in-flight window: acquired, waiting for redelivery, or waiting for the dead-letter
/// topic). Past it no new records are acquired in the partition until some are done,
/// as Kafka's `group.share.partition.max.record.locks`.
pub const SHARE_RECORDS_MAX: usize = 2_000;
/// Records one acquire names at most, and the most a member takes in one acquire.
pub const SHARE_ACQUIRE_MAX: usize = 1_000;
/// Acknowledgements one request carries at most.
pub const SHARE_ACKS_MAX: usize = 10_000;
/// The error text kept with a released or rejected record, in bytes.
pub const SHARE_ERROR_BYTES_MAX: usize = 256;
/// Deliveries of a record before it goes to the dead-letter topic: default and range.
pub const SHARE_DELIVERIES_DEFAULT: u32 = 5;
pub const SHARE_DELIVERIES_MAX: u32 = 100;
/// How long a member holds a record it was given before the record is redelivered:
/// default and range (Kafka's `group.share.record.lock.duration.ms` is 30 s).
pub const SHARE_LOCK_MS_DEFAULT: u32 = 30_000;
pub const SHARE_LOCK_MS_MIN: u32 = 200;
pub const SHARE_LOCK_MS_MAX: u32 = 3_600_000;
/// Share-group state (tracked records in every share group of the cluster) at most: it
/// lives in the metadata snapshot, about 60 bytes a record.
pub const SHARE_RECORDS_CLUSTER_MAX: usize = 50_000;
/// What a share member's state remembers of its latest requests, so that a retry is
/// answered as the first attempt (RFC 0007, "Retries"): its latest acquisitions (one
/// poll acquires several partitions at once), at most this many and at most
/// `SHARE_ACQUIRE_MAX` granted offsets in all, about 8 KiB a member...
pub const SHARE_REMEMBERED_ACQUIRES: usize = 16;
/// ...and the refusals of its latest acknowledgement, at most this many (a request
/// refused more is not remembered: its retry is applied again, refused per record).
pub const SHARE_REMEMBERED_REFUSALS: usize = 256;

/// Checks a consumer group's name (the topic-name rules); returns why it is refused.
pub fn check_group_name(name: &str) -> Result<(), String> {
    check_topic_name(name).map_err(|e| e.replacen("topic name", "group name", 1))
}

/// The longest user name (a principal), in bytes: as long as a client id may be, so a
/// client certificate's common name is a principal too.
pub const USER_NAME_BYTES_MAX: usize = CLIENT_ID_BYTES_MAX;
/// The longest password, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Password checks (PBKDF2 over the stored salt, 4096 rounds each) a node makes per
/// second at most, burst included, beyond the passwords it remembers: wrong passwords
/// sent as fast as a peer can cost a node no more CPU than this many checks. A check
/// over the budget is answered UNAVAILABLE, which clients retry.
pub const PASSWORD_CHECKS_PER_SEC: u32 = 64;
/// The most users the cluster stores.
pub const USERS_MAX: usize = 10_000;
/// The most ACL entries the cluster stores.
pub const ACLS_MAX: usize = 10_000;
/// PBKDF2 iterations of a stored password credential (SCRAM-SHA-256's minimum is 4096).
pub const PASSWORD_ITERATIONS: u32 = 4096;
/// The most PBKDF2 iterations a stored credential may ask for (bounds the work of one
/// authentication).
pub const PASSWORD_ITERATIONS_MAX: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(check_topic_name("orders.v1_x-y").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name("a/b").is_err());
        assert!(check_topic_name(&"a".repeat(TOPIC_NAME_BYTES_MAX + 1)).is_err());
        assert_eq!(
            check_group_name("a b").unwrap_err(),
            "group name contains ' '; allowed are ASCII letters, digits, '.', '_' and '-'"
        );
    }
}
