//! Every decoder of bytes that reach this crate from a peer or from the disk, as one
//! surface for the fuzz targets (`crates/fuzz`), with valid encodings to start from.
//!
//! Each function decodes what the node itself would decode, with the node's own limits
//! (`limits::DECODE_BYTES_MAX`), and answers whether the bytes were accepted. None of
//! them may panic or allocate past the limit, whatever the bytes.

use std::collections::BTreeSet;

use bytes::Bytes;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest, VoteResponse};
use openraft::{Membership, Vote};

use crate::log_store::{Tombstone, decode, encode};
use crate::network::{RaftReply, RaftRpc};
use crate::{Command, Response, TypeConfig, keys};

/// A node-to-node message as the receiving node decodes and checks it before it
/// reaches any group (a forwarded write is checked as the client API checks it).
pub fn message(bytes: &[u8]) -> Result<(), String> {
    match decode::<RaftRpc>(bytes, "raft message").map_err(|e| e.to_string())? {
        RaftRpc::Write(c) => crate::registry::check_forwarded(&c),
        _ => Ok(()),
    }
}

/// Whether `bytes` is an AppendEntries message, and whether it carries entries (`Some(false)`:
/// a heartbeat). `None` for any other message. For tests that drop some messages only.
pub fn append_with_entries(bytes: &[u8]) -> Option<bool> {
    match decode::<RaftRpc>(bytes, "raft message").ok()? {
        RaftRpc::Append(a) => Some(!a.entries.is_empty()),
        _ => None,
    }
}

/// A reply to a node-to-node message, as the sender decodes it.
pub fn reply(bytes: &[u8]) -> Result<(), String> {
    decode::<RaftReply>(bytes, "raft reply").map(drop).map_err(|e| e.to_string())
}

/// A stored log entry.
pub fn log_entry(bytes: &[u8]) -> Result<(), String> {
    decode::<EntryOf<TypeConfig>>(bytes, "log entry").map(drop).map_err(|e| e.to_string())
}

/// A stored vote.
pub fn vote(bytes: &[u8]) -> Result<(), String> {
    decode::<VoteOf<TypeConfig>>(bytes, "vote").map(drop).map_err(|e| e.to_string())
}

/// A stored log id (committed, purged).
pub fn log_id(bytes: &[u8]) -> Result<(), String> {
    decode::<LogIdOf<TypeConfig>>(bytes, "log id").map(drop).map_err(|e| e.to_string())
}

/// A stored tombstone of a removed replica.
pub fn tombstone(bytes: &[u8]) -> Result<(), String> {
    decode::<Tombstone>(bytes, "tombstone").map(drop).map_err(|e| e.to_string())
}

/// A stored offset index entry (a batch's location).
pub fn index_entry(bytes: &[u8]) -> Result<(), String> {
    decode::<flotilla_partition::BatchLocation>(bytes, "offset index entry").map(drop).map_err(|e| e.to_string())
}

/// A stored time index entry (a base offset).
pub fn time_entry(bytes: &[u8]) -> Result<(), String> {
    decode::<u64>(bytes, "time index entry").map(drop).map_err(|e| e.to_string())
}

/// A stored applied state of a partition.
pub fn applied_state(bytes: &[u8]) -> Result<(), String> {
    crate::state_machine::stored::applied(bytes).map_err(|e| e.to_string())
}

/// A stored snapshot.
pub fn snapshot(bytes: &[u8]) -> Result<(), String> {
    crate::state_machine::stored::snapshot(bytes).map_err(|e| e.to_string())
}

/// A key read back from the engine as a log key.
pub fn log_key(bytes: &[u8]) -> Result<u64, String> {
    keys::index_of(bytes).ok_or_else(|| "not a log key".to_string())
}

/// A metadata command as it reaches the metadata state machine in an entry or a
/// forwarded write (the fuzz target then applies it).
pub fn metadata_command(bytes: &[u8]) -> Result<flotilla_metadata::Command, String> {
    decode::<flotilla_metadata::Command>(bytes, "metadata command").map_err(|e| e.to_string())
}

/// The encoding `metadata_command` decodes.
pub fn encode_metadata_command(c: &flotilla_metadata::Command) -> Vec<u8> {
    encode(c)
}

/// A vote request of `candidate` in `term` to the group's other replicas, encoded as
/// a node sends it (for tests that forge one).
pub fn vote_request(candidate: flotilla_types::NodeId, term: u64) -> Vec<u8> {
    encode(&RaftRpc::Vote(VoteRequest::new(Vote::new(term, candidate), None)))
}

/// A metadata write forwarded to the group's leader, encoded as a node sends it.
pub fn forwarded_metadata_write(c: flotilla_metadata::Command) -> Vec<u8> {
    encode(&RaftRpc::Write(Command::Metadata(c)))
}

/// Why a reply refuses its message, if it does (`None` for any other answer, or bytes
/// that are not a reply).
pub fn refusal(reply: &[u8]) -> Option<String> {
    match decode::<RaftReply>(reply, "raft reply").ok()? {
        RaftReply::Refused(why) => Some(why),
        _ => None,
    }
}

fn log_id_at(term: u64, index: u64) -> LogIdOf<TypeConfig> {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn sample_entries() -> Vec<EntryOf<TypeConfig>> {
    let batch = flotilla_types::RecordBatch::encode(&[
        flotilla_types::Record::value("v"),
        flotilla_types::Record { key: Some(Bytes::from_static(b"k")), ..flotilla_types::Record::value("w") },
    ])
    .expect("a valid batch");
    let produce = Command::Partition(flotilla_partition::produce_command(&batch, 1));
    let meta = Command::Metadata(flotilla_metadata::Command::DeleteTopic { name: "orders".into() });
    let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], [4]);
    vec![
        EntryOf::<TypeConfig>::new_blank(log_id_at(1, 1)),
        EntryOf::<TypeConfig>::new_membership(log_id_at(1, 2), membership),
        EntryOf::<TypeConfig>::new_normal(log_id_at(1, 3), produce),
        EntryOf::<TypeConfig>::new_normal(log_id_at(2, 4), meta),
    ]
}

/// Valid encodings of every node-to-node message kind: seeds for mutation.
pub fn sample_messages() -> Vec<Vec<u8>> {
    let vote = Vote::new(3, 1);
    let entries = sample_entries();
    let produce = match &entries[2].payload {
        openraft::EntryPayload::Normal(c) => c.clone(),
        _ => unreachable!("entry 2 is a produce"),
    };
    vec![
        encode(&RaftRpc::Append(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id_at(1, 0)),
            entries,
            leader_commit: Some(log_id_at(1, 2)),
        })),
        encode(&RaftRpc::Vote(VoteRequest::new(vote, Some(log_id_at(2, 4))))),
        encode(&RaftRpc::PreVote(VoteRequest::new(vote, None))),
        encode(&RaftRpc::TransferLeader(TransferLeaderRequest::new(vote, 2, Some(log_id_at(2, 4))))),
        encode(&RaftRpc::Write(produce)),
        encode(&RaftRpc::Leading(vec![(1, 3), (7, 2)])),
        encode(&RaftRpc::Ping),
        encode(&RaftRpc::LastLog),
        encode(&RaftRpc::Registered),
    ]
}

/// Valid encodings of every reply kind.
pub fn sample_replies() -> Vec<Vec<u8>> {
    let vote = Vote::new(3, 1);
    vec![
        encode(&RaftReply::Append(AppendEntriesResponse::Success)),
        encode(&RaftReply::Append(AppendEntriesResponse::PartialSuccess(Some(log_id_at(1, 3))))),
        encode(&RaftReply::Vote(VoteResponse::new(vote, Some(log_id_at(2, 4)), true))),
        encode(&RaftReply::Write(Ok(Response::Partition(flotilla_partition::Response::Produced {
            base_offset: 10,
            records: 2,
            duplicate: true,
        })))),
        encode(&RaftReply::Write(Ok(Response::Partition(flotilla_partition::Response::Refused(
            flotilla_partition::Refusal::OutOfOrder { base_sequence: 7, expected: 5, known: true },
        ))))),
        encode(&RaftReply::Write(Err(crate::WriteError::Timeout { group: 3 }))),
        encode(&RaftReply::Refused("group 3 is not hosted on node 2".into())),
        encode(&RaftReply::Noted),
        encode(&RaftReply::LastLog(Some(log_id_at(2, 9)))),
        encode(&RaftReply::Registered(crate::network::Registration::Registered)),
        encode(&RaftReply::Registered(crate::network::Registration::Replacing { groups_left: 4 })),
        encode(&RaftReply::Registered(crate::network::Registration::Replaceable { first_new_group: 12 })),
    ]
}

/// Valid encodings of what the log store writes: entries, a vote, a log id, a tombstone.
pub fn sample_stored() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = sample_entries().iter().map(encode).collect();
    let vote: VoteOf<TypeConfig> = Vote::new(3, 1);
    out.push(encode(&vote));
    out.push(encode(&log_id_at(2, 9)));
    out.push(encode(&Tombstone { vote: Some(Vote::new(3, 1)), last_log_id: Some(log_id_at(2, 9)) }));
    out.push(encode(&flotilla_partition::BatchLocation {
        base_offset: 10,
        records: 2,
        log_index: 7,
        bytes: 40,
        position: 400,
        timestamp_ms: 1_700_000_000_000,
        max_timestamp_before: 1_600_000_000_000,
        producer: Some(flotilla_types::ProducerStamp { id: 4, epoch: 1, base_sequence: 30 }),
        producer_settings: flotilla_partition::ProducerSettings { idle_expiry_ms: 60_000, max_producers: 10 },
    }));
    out.push(encode(&10u64));
    out.extend(crate::state_machine::stored::samples());
    out
}

/// Valid log keys.
pub fn sample_keys() -> Vec<Vec<u8>> {
    vec![keys::log(7, 42), keys::log(u64::MAX, 0), keys::meta(7, keys::VOTE)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_decodes() {
        for m in sample_messages() {
            message(&m).unwrap();
        }
        for r in sample_replies() {
            reply(&r).unwrap();
        }
        let stored = sample_stored();
        for e in &stored[..4] {
            log_entry(e).unwrap();
        }
        vote(&stored[4]).unwrap();
        log_id(&stored[5]).unwrap();
        tombstone(&stored[6]).unwrap();
        index_entry(&stored[7]).unwrap();
        time_entry(&stored[8]).unwrap();
        applied_state(&stored[9]).unwrap();
        snapshot(&stored[10]).unwrap();
        assert_eq!(log_key(&sample_keys()[0]), Ok(42));
    }

    /// t90 (wire safety): a five-byte-scale message claiming an exabyte-long batch was
    /// decoded by allocating what it claimed and aborted the node; it is refused.
    #[test]
    fn t90_a_message_claiming_an_exabyte_is_refused_without_allocating_it() {
        let batch = flotilla_types::RecordBatch::encode(&[flotilla_types::Record::value(vec![7u8; 300])]).unwrap();
        let m = encode(&RaftRpc::Write(Command::Partition(flotilla_partition::produce_command(&batch, 1))));
        message(&m).expect("the genuine message is accepted");
        // The batch's length prefix: bincode's varint marker for u16 (251), then the length.
        let batch_len = match decode::<RaftRpc>(&m, "raft message").unwrap() {
            RaftRpc::Write(Command::Partition(flotilla_partition::Command::Produce { batch, .. })) => batch.len(),
            _ => unreachable!(),
        };
        let prefix = [251u8, batch_len as u8, (batch_len >> 8) as u8];
        let at = m.windows(3).position(|w| w == prefix).expect("the batch length prefix");
        let mut forged = m[..at].to_vec();
        forged.push(253); // a u64 length follows
        forged.extend_from_slice(&(1u64 << 60).to_le_bytes());
        forged.extend_from_slice(&m[at + 3..]);
        let err = message(&forged).unwrap_err();
        assert!(err.contains("limit") || err.contains("undecodable"), "{err}");
    }

    /// t90 (wire safety): a forwarded produce whose record count disagrees with its
    /// batch would stop every replica's state machine (zero records is an assertion);
    /// the receiving node refuses it.
    #[test]
    fn t90_a_forwarded_produce_that_lies_about_its_records_is_refused() {
        let batch = flotilla_types::RecordBatch::encode(&[flotilla_types::Record::value("v")]).unwrap();
        let lying = Command::Partition(flotilla_partition::Command::Produce {
            batch: batch.bytes().clone(),
            records: 0,
            timestamp_ms: 1,
            producers: Default::default(),
        });
        assert!(message(&encode(&RaftRpc::Write(lying))).is_err());
        let junk = Command::Partition(flotilla_partition::Command::Produce {
            batch: Bytes::from_static(b"junk"),
            records: 1,
            timestamp_ms: 1,
            producers: Default::default(),
        });
        assert!(message(&encode(&RaftRpc::Write(junk))).is_err());
    }
}
