//! The partition state machine: pure, synchronous and deterministic.
//!
//! The Raft log is the partition log (design decision 2): one produce batch is one Raft
//! entry, and this state machine assigns the batch its offsets when the entry is applied
//! (base offset = the partition's next offset). It keeps the map from offsets to the
//! log index that holds them, so a fetch can read committed entries back from the log.
//! It never copies record bytes.
//!
//! Architecture invariant: no clock, no randomness, no I/O, ordered collections only —
//! the same committed log always produces the same state.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_types::{Offset, RecordBatch};
use serde::{Deserialize, Serialize};

/// A command in a partition group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append one record batch. `batch` was verified (checksum, structure, limits) by the
    /// node before it was proposed; `records` is its record count.
    Produce { batch: Bytes, records: u32 },
}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Produced { base_offset: Offset, records: u32 },
}

/// Where one batch lives in the Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLocation {
    pub base_offset: Offset,
    pub records: u32,
    pub log_index: u64,
    pub bytes: u32,
}

/// A partition's state, rebuilt from its log on every start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The offset the next record will get: the high watermark on this replica.
    next_offset: Offset,
    /// The first offset still readable.
    log_start_offset: Offset,
    /// Batches by base offset.
    batches: BTreeMap<Offset, BatchLocation>,
    /// The last log index applied, to assert that entries come in order.
    last_applied_index: u64,
}

impl PartitionState {
    pub fn new() -> PartitionState {
        PartitionState::default()
    }

    /// Applies the command committed at `log_index`.
    pub fn apply(&mut self, log_index: u64, command: &Command) -> Response {
        assert!(log_index > self.last_applied_index, "log index {log_index} applied after {}", self.last_applied_index);
        self.last_applied_index = log_index;
        match command {
            Command::Produce { batch, records } => {
                assert!(*records > 0, "an empty batch was proposed");
                let base_offset = self.next_offset;
                let location = BatchLocation { base_offset, records: *records, log_index, bytes: batch.len() as u32 };
                let previous = self.batches.insert(base_offset, location);
                assert!(previous.is_none(), "offset {base_offset} assigned twice");
                self.next_offset = base_offset + u64::from(*records);
                Response::Produced { base_offset, records: *records }
            }
        }
    }

    /// Applies `command` again under the log index it was just applied at: the planted
    /// bug `flotilla_types::planted::Bug::DoubleApply`, which nothing else calls.
    pub fn planted_reapply(&mut self, command: &Command) -> Response {
        let Command::Produce { batch, records } = command;
        let base_offset = self.next_offset;
        let location = BatchLocation {
            base_offset,
            records: *records,
            log_index: self.last_applied_index,
            bytes: batch.len() as u32,
        };
        self.batches.insert(base_offset, location);
        self.next_offset = base_offset + u64::from(*records);
        Response::Produced { base_offset, records: *records }
    }

    /// Notes a log index that carried no partition command (a blank or membership entry).
    pub fn skip(&mut self, log_index: u64) {
        assert!(log_index > self.last_applied_index || (log_index == 0 && self.last_applied_index == 0));
        self.last_applied_index = log_index;
    }

    /// The high watermark: every offset below it is committed.
    pub fn high_watermark(&self) -> Offset {
        self.next_offset
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }

    pub fn last_applied_index(&self) -> u64 {
        self.last_applied_index
    }

    /// The batches to read for a fetch at `offset`: the batch holding `offset`, then the
    /// following ones while their total stays within `max_bytes` (at least one batch).
    /// Empty when `offset` is at the high watermark. `None` when out of range.
    pub fn locate(&self, offset: Offset, max_bytes: usize) -> Option<Vec<BatchLocation>> {
        if offset < self.log_start_offset || offset > self.next_offset {
            return None;
        }
        let mut out = Vec::new();
        if offset == self.next_offset {
            return Some(out);
        }
        let (_, first) =
            self.batches.range(..=offset).next_back().expect("offset below the high watermark has a batch");
        assert!(first.base_offset <= offset && offset < first.base_offset + u64::from(first.records));
        let mut total = 0usize;
        for (_, loc) in self.batches.range(first.base_offset..) {
            if !out.is_empty() && total + loc.bytes as usize > max_bytes {
                break;
            }
            total += loc.bytes as usize;
            out.push(*loc);
        }
        Some(out)
    }
}

/// Checks a batch from a client and returns the command to propose.
pub fn produce_command(batch: &RecordBatch) -> Command {
    Command::Produce { batch: batch.bytes().clone(), records: batch.len() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::Record;

    fn batch(n: usize) -> Command {
        let records: Vec<Record> = (0..n).map(|i| Record::value(format!("v{i}"))).collect();
        produce_command(&RecordBatch::encode(&records).unwrap())
    }

    #[test]
    fn offsets_are_assigned_at_apply_and_contiguous() {
        let mut s = PartitionState::new();
        assert_eq!(s.apply(1, &batch(3)), Response::Produced { base_offset: 0, records: 3 });
        s.skip(2);
        assert_eq!(s.apply(3, &batch(2)), Response::Produced { base_offset: 3, records: 2 });
        assert_eq!(s.high_watermark(), 5);
    }

    #[test]
    fn locate_finds_the_batch_holding_an_offset() {
        let mut s = PartitionState::new();
        s.apply(1, &batch(3));
        s.apply(2, &batch(2));
        s.apply(3, &batch(4));
        let locs = s.locate(4, usize::MAX).unwrap();
        assert_eq!(locs.iter().map(|l| l.log_index).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.locate(9, 100).unwrap(), vec![]);
        assert_eq!(s.locate(10, 100), None);
        // max_bytes 0 still returns one batch.
        assert_eq!(s.locate(0, 0).unwrap().len(), 1);
    }

    #[test]
    fn same_log_gives_same_state() {
        let mut a = PartitionState::new();
        let mut b = PartitionState::new();
        for i in 1..50 {
            a.apply(i, &batch(i as usize % 5 + 1));
            b.apply(i, &batch(i as usize % 5 + 1));
        }
        assert_eq!(a, b);
    }

    #[test]
    #[should_panic(expected = "applied after")]
    fn applying_an_index_twice_is_a_bug() {
        let mut s = PartitionState::new();
        s.apply(1, &batch(1));
        s.apply(1, &batch(1));
    }
}
