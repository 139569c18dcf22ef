//! The key layout in the node's storage engine: `[group BE][kind][index BE]`.
//!
//! Every key of a group starts with its id, so removing a group is one range delete
//! and groups never interleave.

use flotilla_types::GroupId;

/// A log entry: `[group][LOG][index]`.
pub const LOG: u8 = 1;
/// The group's vote: `[group][VOTE]`.
pub const VOTE: u8 = 2;
/// The committed log id: `[group][COMMITTED]`.
pub const COMMITTED: u8 = 3;
/// The last purged log id: `[group][PURGED]`.
pub const PURGED: u8 = 4;
/// What a removed replica had voted and logged (`log_store::Tombstone`): the one key
/// `destroy` leaves behind.
pub const TOMBSTONE: u8 = 5;
/// A partition's offset index: `[group][OFFSETS][base offset]` → the batch's
/// `flotilla_partition::BatchLocation`.
pub const OFFSETS: u8 = 6;
/// A partition's time index: `[group][TIMES][time]` → the base offset of the first batch
/// whose time raised the partition's greatest time to `time`.
pub const TIMES: u8 = 7;
/// A partition's applied state (`state_machine::Applied`), saved with every apply.
pub const APPLIED: u8 = 8;
/// The group's current snapshot: its metadata and data.
pub const SNAPSHOT: u8 = 9;
/// A partition's membership entries: `[group][MEMBERSHIPS][index]` → the membership
/// applied at that log index (a snapshot at an earlier index needs the one in force).
pub const MEMBERSHIPS: u8 = 10;

pub fn log(group: GroupId, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(LOG);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn meta(group: GroupId, kind: u8) -> Vec<u8> {
    assert!(kind != LOG);
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    k
}

/// `[group][kind][n]`: an entry of one of a partition's indexes (`OFFSETS`, `TIMES`,
/// `MEMBERSHIPS`), ordered by `n`.
pub fn indexed(group: GroupId, kind: u8, n: u64) -> Vec<u8> {
    assert!(matches!(kind, OFFSETS | TIMES | MEMBERSHIPS));
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The exclusive end of one of a partition's indexes.
pub fn indexed_end(group: GroupId, kind: u8) -> Vec<u8> {
    assert!(matches!(kind, OFFSETS | TIMES | MEMBERSHIPS));
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind + 1);
    k
}

/// The `n` of an index key; `None` for a key that is not one of `kind`.
pub fn n_of(key: &[u8], kind: u8) -> Option<u64> {
    if key.len() != 17 || key[8] != kind {
        return None;
    }
    Some(u64::from_be_bytes(key[9..17].try_into().expect("8 bytes")))
}

/// The exclusive end of the group's log keys.
pub fn log_end(group: GroupId) -> Vec<u8> {
    meta(group, LOG + 1)
}

/// `[start, end)` covering every key of the group.
pub fn group_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = group.to_be_bytes().to_vec();
    let end = match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    (start, end)
}

/// The index in a log key; `None` for a key that is not one (read from a damaged store).
pub fn index_of(key: &[u8]) -> Option<u64> {
    if key.len() != 17 || key[8] != LOG {
        return None;
    }
    Some(u64::from_be_bytes(key[9..17].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_group_then_kind_then_index() {
        assert!(log(1, u64::MAX) < meta(1, VOTE));
        assert!(meta(1, PURGED) < log(2, 0));
        assert!(log(1, 255) < log(1, 256));
        let (s, e) = group_range(1);
        assert!(s <= log(1, 0) && meta(1, PURGED) < e && log(2, 0) >= e);
        assert_eq!(index_of(&log(7, 42)), Some(42));
        assert_eq!(index_of(&meta(7, VOTE)), None);
        assert_eq!(index_of(&[0; 17]), None);
        assert!(indexed(1, OFFSETS, u64::MAX) < indexed_end(1, OFFSETS));
        assert!(indexed_end(1, OFFSETS) <= indexed(1, TIMES, 0));
        assert!(indexed(1, MEMBERSHIPS, u64::MAX) < e);
        assert_eq!(n_of(&indexed(3, TIMES, 99), TIMES), Some(99));
        assert_eq!(n_of(&indexed(3, TIMES, 99), OFFSETS), None);
    }
}
