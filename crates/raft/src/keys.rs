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
    }
}
