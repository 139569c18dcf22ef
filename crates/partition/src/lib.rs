//! The partition state machine: pure, synchronous and deterministic.
//!
//! The Raft log is the partition log (design decision 2, docs/decisions.md): one produce
//! batch is one Raft entry, and this state machine assigns the batch its offsets when the
//! entry is applied (base offset = the partition's next offset). Its state is a handful of
//! numbers (design decision 13, docs/decisions.md): where each batch lives is not kept
//! here but returned as an [`Effect::Indexed`] location, which the `raft` crate writes to
//! the node's storage engine as the partition's offset and time index, so that a
//! replica's memory does not grow with the data it holds. The log start moves only by a
//! committed [`Command::DeleteRecords`] (retention, or an operator), so that every
//! replica deletes the same prefix.
//!
//! Batches stamped by an idempotent producer are de-duplicated here, at apply: the
//! [`ProducerTable`] (part of the state, so of every snapshot) decides whether a batch is
//! the next in its producer's sequence, a retry of one already appended (answered with
//! its first offsets, appended again never), or refused (fenced, out of order).
//!
//! Architecture invariant: no clock, no randomness, no I/O, ordered collections only —
//! the same committed log always produces the same state and the same effects.

mod producers;

use bytes::Bytes;
use flotilla_types::planted::{self, Bug};
use flotilla_types::{Offset, ProducerStamp, RecordBatch};
pub use producers::{ProducerSettings, ProducerTable, Verdict};
use serde::{Deserialize, Serialize};

/// A command in a partition group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append one record batch. `batch` was verified (checksum, structure, limits) by the
    /// node before it was proposed; `records` is its record count; `timestamp_ms` is the
    /// batch's time for the time index (see [`index_time`]); `producers`: how long the
    /// partition remembers idle producers and how many, as the proposing leader was
    /// configured (carried in the log so that every replica forgets the same producers).
    Produce { batch: Bytes, records: u32, timestamp_ms: u64, producers: ProducerSettings },
    /// Moves the log start up to `before` (never past the high watermark, never down):
    /// Kafka's DeleteRecords, and what retention proposes.
    DeleteRecords { before: Offset },
}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The batch's offsets. `duplicate`: an idempotent producer's retry of a batch
    /// appended before, answered with the offsets it got then; nothing was appended.
    Produced { base_offset: Offset, records: u32, duplicate: bool },
    /// An idempotent producer's batch that was not appended.
    Refused(Refusal),
    /// The log start after a `DeleteRecords`.
    LogStart { log_start: Offset },
}

/// Why an idempotent producer's batch was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The partition has seen a newer epoch of this producer id.
    Fenced { epoch: u16, current_epoch: u16 },
    /// The batch's base sequence is not the next one; `known`: whether the partition
    /// remembers the producer at all.
    OutOfOrder { base_sequence: u32, expected: u32, known: bool },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Fenced { epoch, current_epoch } => write!(
                f,
                "producer epoch {epoch} is fenced: epoch {current_epoch} of the same producer id wrote to this partition since"
            ),
            Refusal::OutOfOrder { base_sequence, expected, known: true } => {
                write!(f, "batch sequence {base_sequence} is out of order: the partition expects {expected}")
            }
            Refusal::OutOfOrder { base_sequence, known: false, .. } => write!(
                f,
                "batch sequence {base_sequence} from a producer this partition does not know (never seen, or forgotten \
                 after being idle): a producer starts at sequence 0"
            ),
        }
    }
}

/// Where one batch lives in the Raft log, and what the indexes need of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLocation {
    pub base_offset: Offset,
    pub records: u32,
    pub log_index: u64,
    pub bytes: u32,
    /// Bytes of every batch appended to the partition before this one.
    pub position: u64,
    /// The batch's index time.
    pub timestamp_ms: u64,
    /// The greatest index time of the batches before this one (0 for none).
    pub max_timestamp_before: u64,
    /// The idempotent producer's stamp and the producer settings it was appended under,
    /// so that the producer table at any point can be rebuilt from the index.
    pub producer: Option<ProducerStamp>,
    pub producer_settings: ProducerSettings,
}

impl BatchLocation {
    /// The offset after the batch's last record.
    pub fn end_offset(&self) -> Offset {
        self.base_offset + u64::from(self.records)
    }
}

/// What the `raft` crate must store after applying a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A batch was appended: index it by offset and, when `new_max_time` is set, by time
    /// (the time index holds only batches that raise the greatest time seen, so it is
    /// sorted by time and by offset alike).
    Indexed {
        location: BatchLocation,
        new_max_time: bool,
    },
    /// The log start moved: entries, index entries and snapshot may move up.
    LogStartMoved {
        log_start: Offset,
    },
}

/// A partition's state: a few numbers, whatever the amount of data, and the table of
/// idempotent producers (bounded by `limits::PARTITION_PRODUCERS_MAX`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The offset the next record will get: the high watermark on this replica.
    next_offset: Offset,
    /// The first offset still readable.
    log_start_offset: Offset,
    /// The last log index applied, to assert that entries come in order.
    last_applied_index: u64,
    /// Bytes of every batch ever appended (the position of the next batch).
    end_position: u64,
    /// The greatest index time of any batch appended.
    max_timestamp_ms: u64,
    producers: ProducerTable,
}

impl PartitionState {
    pub fn new() -> PartitionState {
        PartitionState::default()
    }

    /// The state of a partition whose log, up to and including `log_index`, was deleted
    /// (a snapshot taken at the retention point): the next batch is `next`, and
    /// `producers` the producer table there (see [`replay_producer`]).
    pub fn at_retention_point(log_index: u64, next: &BatchLocation, producers: ProducerTable) -> PartitionState {
        PartitionState {
            next_offset: next.base_offset,
            log_start_offset: next.base_offset,
            last_applied_index: log_index,
            end_position: next.position,
            max_timestamp_ms: next.max_timestamp_before,
            producers,
        }
    }

    /// Applies the command committed at `log_index`.
    pub fn apply(&mut self, log_index: u64, command: &Command) -> (Response, Effect) {
        assert!(log_index > self.last_applied_index, "log index {log_index} applied after {}", self.last_applied_index);
        self.last_applied_index = log_index;
        match command {
            Command::Produce { batch, records, timestamp_ms, producers: settings } => {
                assert!(*records > 0, "an empty batch was proposed");
                let producer = flotilla_types::batch::producer_of(batch);
                if let Some(stamp) = producer {
                    let verdict = if planted::armed(Bug::SkipSequenceCheck) {
                        Verdict::Append
                    } else {
                        self.producers.check(stamp, *records)
                    };
                    match verdict {
                        Verdict::Append => {}
                        Verdict::Duplicate { base_offset } => {
                            return (
                                Response::Produced { base_offset, records: *records, duplicate: true },
                                Effect::None,
                            );
                        }
                        Verdict::Fenced { current_epoch } => {
                            let refusal = Refusal::Fenced { epoch: stamp.epoch, current_epoch };
                            return (Response::Refused(refusal), Effect::None);
                        }
                        Verdict::OutOfOrder { expected, known } => {
                            let refusal = Refusal::OutOfOrder { base_sequence: stamp.base_sequence, expected, known };
                            return (Response::Refused(refusal), Effect::None);
                        }
                    }
                }
                self.append(log_index, batch.len(), *records, *timestamp_ms, producer, *settings)
            }
            Command::DeleteRecords { before } => {
                let log_start = (*before).min(self.next_offset).max(self.log_start_offset);
                let effect = if log_start > self.log_start_offset {
                    self.log_start_offset = log_start;
                    Effect::LogStartMoved { log_start }
                } else {
                    Effect::None
                };
                (Response::LogStart { log_start: self.log_start_offset }, effect)
            }
        }
    }

    fn append(
        &mut self,
        log_index: u64,
        bytes: usize,
        records: u32,
        timestamp_ms: u64,
        producer: Option<ProducerStamp>,
        producer_settings: ProducerSettings,
    ) -> (Response, Effect) {
        let base_offset = self.next_offset;
        let location = BatchLocation {
            base_offset,
            records,
            log_index,
            bytes: bytes as u32,
            position: self.end_position,
            timestamp_ms,
            max_timestamp_before: self.max_timestamp_ms,
            producer,
            producer_settings: producer_settings.clamped(),
        };
        replay_producer(&mut self.producers, &location);
        let new_max_time = timestamp_ms > self.max_timestamp_ms;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        self.next_offset = location.end_offset();
        self.end_position += bytes as u64;
        (Response::Produced { base_offset, records, duplicate: false }, Effect::Indexed { location, new_max_time })
    }

    /// Applies `command` again under the log index it was just applied at: the planted
    /// bug `flotilla_types::planted::Bug::DoubleApply`, which nothing else calls.
    pub fn planted_reapply(&mut self, command: &Command) -> (Response, Effect) {
        match command {
            Command::Produce { batch, records, timestamp_ms, producers } => self.append(
                self.last_applied_index,
                batch.len(),
                *records,
                *timestamp_ms,
                flotilla_types::batch::producer_of(batch),
                *producers,
            ),
            Command::DeleteRecords { .. } => (Response::LogStart { log_start: self.log_start_offset }, Effect::None),
        }
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

    /// Bytes of every batch ever appended: the position of the next batch.
    pub fn end_position(&self) -> u64 {
        self.end_position
    }

    /// The greatest index time of any batch appended.
    pub fn max_timestamp_ms(&self) -> u64 {
        self.max_timestamp_ms
    }

    /// The idempotent producers this partition remembers.
    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }
}

/// Brings `table` past the batch at `location`: what appending it did to the producer
/// table. Applying a log and replaying its offset index give the same table.
pub fn replay_producer(table: &mut ProducerTable, location: &BatchLocation) {
    if let Some(stamp) = location.producer {
        table.appended(
            stamp,
            location.records,
            location.base_offset,
            location.timestamp_ms,
            location.producer_settings,
        );
    }
}

/// A batch's time in the time index: its greatest record timestamp, or `now_ms` (the
/// proposing leader's clock) when no record carries one, and never later than `now_ms`,
/// so that one record stamped in the future cannot hold back time-based retention of
/// everything after it. Computed once, before proposing, so every replica indexes the
/// same time.
pub fn index_time(batch: &RecordBatch, now_ms: u64) -> u64 {
    let max = batch.records().iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    if max == 0 { now_ms } else { max.min(now_ms) }
}

/// The command that appends a checked batch, stamped with its index time, under the
/// default producer settings.
pub fn produce_command(batch: &RecordBatch, now_ms: u64) -> Command {
    produce_command_with(batch, now_ms, ProducerSettings::default())
}

/// [`produce_command`] under the given producer settings (the node's).
pub fn produce_command_with(batch: &RecordBatch, now_ms: u64, producers: ProducerSettings) -> Command {
    Command::Produce {
        batch: batch.bytes().clone(),
        records: batch.len(),
        timestamp_ms: index_time(batch, now_ms),
        producers: producers.clamped(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::Record;

    fn batch(n: usize) -> Command {
        let records: Vec<Record> = (0..n).map(|i| Record::value(format!("v{i}"))).collect();
        produce_command(&RecordBatch::encode(&records).unwrap(), 1_000)
    }

    fn located(effect: Effect) -> BatchLocation {
        match effect {
            Effect::Indexed { location, .. } => location,
            other => panic!("not indexed: {other:?}"),
        }
    }

    #[test]
    fn offsets_are_assigned_at_apply_and_contiguous() {
        let mut s = PartitionState::new();
        assert_eq!(s.apply(1, &batch(3)).0, Response::Produced { base_offset: 0, records: 3, duplicate: false });
        s.skip(2);
        assert_eq!(s.apply(3, &batch(2)).0, Response::Produced { base_offset: 3, records: 2, duplicate: false });
        assert_eq!(s.high_watermark(), 5);
    }

    #[test]
    fn each_batch_is_located_by_offset_position_and_time() {
        let mut s = PartitionState::new();
        let a = located(s.apply(1, &batch(3)).1);
        let b = located(s.apply(2, &batch(2)).1);
        assert_eq!((a.base_offset, a.log_index, a.position), (0, 1, 0));
        assert_eq!((b.base_offset, b.log_index, b.position), (3, 2, u64::from(a.bytes)));
        assert_eq!(s.end_position(), u64::from(a.bytes + b.bytes));
        assert_eq!((a.timestamp_ms, b.max_timestamp_before), (1_000, 1_000));
    }

    #[test]
    fn only_batches_that_raise_the_greatest_time_enter_the_time_index() {
        let at = |ts: u64| {
            let r = Record { timestamp_ms: ts, ..Record::value("x") };
            produce_command(&RecordBatch::encode(&[r]).unwrap(), 10_000)
        };
        let mut s = PartitionState::new();
        let raised = |e: Effect| matches!(e, Effect::Indexed { new_max_time: true, .. });
        assert!(raised(s.apply(1, &at(500)).1));
        assert!(!raised(s.apply(2, &at(400)).1), "an earlier time does not raise the maximum");
        assert!(raised(s.apply(3, &at(600)).1));
        // A future timestamp is indexed at the leader's clock.
        assert!(raised(s.apply(4, &at(99_999)).1));
        assert_eq!(s.max_timestamp_ms(), 10_000);
    }

    #[test]
    fn delete_records_moves_the_log_start_up_only_and_never_past_the_end() {
        let mut s = PartitionState::new();
        s.apply(1, &batch(10));
        assert_eq!(
            s.apply(2, &Command::DeleteRecords { before: 4 }),
            (Response::LogStart { log_start: 4 }, Effect::LogStartMoved { log_start: 4 })
        );
        assert_eq!(
            s.apply(3, &Command::DeleteRecords { before: 2 }),
            (Response::LogStart { log_start: 4 }, Effect::None)
        );
        assert_eq!(
            s.apply(4, &Command::DeleteRecords { before: 99 }),
            (Response::LogStart { log_start: 10 }, Effect::LogStartMoved { log_start: 10 })
        );
        assert_eq!(s.high_watermark(), 10);
    }

    #[test]
    fn the_state_at_a_retention_point_continues_like_the_original() {
        let mut full = PartitionState::new();
        let mut next = None;
        for i in 1..20 {
            let loc = located(full.apply(i, &batch(i as usize % 4 + 1)).1);
            if i == 12 {
                next = Some(loc);
            }
        }
        // A replica that starts from the state just before batch 12 and applies the
        // same entries from 12 on ends where the full replica ended.
        let next = next.unwrap();
        let mut cut = PartitionState::at_retention_point(11, &next, ProducerTable::default());
        let mut again = PartitionState::new();
        for i in 1..20 {
            let cmd = batch(i as usize % 4 + 1);
            if i >= 12 {
                cut.apply(i, &cmd);
            }
            again.apply(i, &cmd);
        }
        assert_eq!(cut.high_watermark(), again.high_watermark());
        assert_eq!(cut.end_position(), again.end_position());
        assert_eq!(cut.max_timestamp_ms(), again.max_timestamp_ms());
        assert_eq!(cut.log_start_offset(), next.base_offset);
    }

    #[test]
    fn same_log_gives_same_state() {
        let mut a = PartitionState::new();
        let mut b = PartitionState::new();
        for i in 1..50 {
            assert_eq!(a.apply(i, &batch(i as usize % 5 + 1)), b.apply(i, &batch(i as usize % 5 + 1)));
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

    fn stamped(id: u64, epoch: u16, seq: u32, n: usize) -> Command {
        let records: Vec<Record> = (0..n).map(|i| Record::value(format!("v{i}"))).collect();
        let stamp = ProducerStamp { id, epoch, base_sequence: seq };
        produce_command(&RecordBatch::encode_as(&records, Some(stamp)).unwrap(), 1_000)
    }

    #[test]
    fn a_retried_batch_gets_its_first_offsets_and_appends_nothing() {
        let mut s = PartitionState::new();
        assert_eq!(
            s.apply(1, &stamped(7, 0, 0, 3)).0,
            Response::Produced { base_offset: 0, records: 3, duplicate: false }
        );
        assert_eq!(s.apply(2, &batch(2)).0, Response::Produced { base_offset: 3, records: 2, duplicate: false });
        assert_eq!(
            s.apply(3, &stamped(7, 0, 0, 3)),
            (Response::Produced { base_offset: 0, records: 3, duplicate: true }, Effect::None)
        );
        assert_eq!(
            s.apply(4, &stamped(7, 0, 3, 1)).0,
            Response::Produced { base_offset: 5, records: 1, duplicate: false }
        );
        assert_eq!(s.high_watermark(), 6);
    }

    #[test]
    fn gaps_and_fenced_epochs_are_refused_and_append_nothing() {
        let mut s = PartitionState::new();
        s.apply(1, &stamped(7, 1, 0, 1));
        let gap = s.apply(2, &stamped(7, 1, 5, 1));
        assert_eq!(
            gap,
            (Response::Refused(Refusal::OutOfOrder { base_sequence: 5, expected: 1, known: true }), Effect::None)
        );
        let zombie = s.apply(3, &stamped(7, 0, 1, 1));
        assert_eq!(zombie, (Response::Refused(Refusal::Fenced { epoch: 0, current_epoch: 1 }), Effect::None));
        assert_eq!(s.high_watermark(), 1);
        assert!(Refusal::Fenced { epoch: 0, current_epoch: 1 }.to_string().contains("fenced"));
    }

    fn under(c: Command, max_producers: u32) -> Command {
        match c {
            Command::Produce { batch, records, timestamp_ms, .. } => Command::Produce {
                batch,
                records,
                timestamp_ms,
                producers: ProducerSettings { max_producers, ..ProducerSettings::default() },
            },
            other => other,
        }
    }

    #[test]
    fn the_producer_settings_in_the_log_decide_what_is_forgotten() {
        let mut s = PartitionState::new();
        s.apply(1, &stamped(4, 0, 0, 1));
        s.apply(2, &under(stamped(5, 0, 0, 1), 1));
        let refused = s.apply(3, &stamped(4, 0, 1, 1)).0;
        assert_eq!(refused, Response::Refused(Refusal::OutOfOrder { base_sequence: 1, expected: 0, known: false }));
        let mut s = PartitionState::new();
        s.apply(1, &stamped(4, 0, 0, 1));
        s.apply(2, &stamped(5, 0, 0, 1));
        assert!(matches!(s.apply(3, &stamped(4, 0, 1, 1)).0, Response::Produced { duplicate: false, .. }));
    }

    #[test]
    fn the_producer_table_at_a_retention_point_is_rebuilt_from_the_index() {
        // Several producers interleaved, with retries, a new epoch and refusals, and two
        // batches proposed under small bounds (the idlest is forgotten, so producer 4's
        // next batch is refused).
        let commands: Vec<Command> = vec![
            under(stamped(4, 0, 0, 1), 2),
            under(stamped(5, 0, 0, 1), 1),
            stamped(4, 0, 1, 1),
            stamped(1, 0, 0, 2),
            stamped(2, 0, 0, 1),
            batch(1),
            stamped(1, 0, 2, 1),
            stamped(1, 0, 0, 2),
            stamped(2, 1, 0, 3),
            stamped(2, 0, 1, 1),
            stamped(3, 0, 4, 1),
            stamped(1, 0, 3, 2),
            stamped(2, 1, 3, 1),
        ];
        let mut full = PartitionState::new();
        let mut locations = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            if let Effect::Indexed { location, .. } = full.apply(i as u64 + 1, c).1 {
                locations.push(location);
            }
        }
        // Cut before each batch in turn: replaying the index up to it gives the table
        // that applying the log up to it gave, and the rest of the log then lands alike.
        for cut in 0..locations.len() {
            let next = locations[cut];
            let mut table = ProducerTable::default();
            for l in &locations[..cut] {
                replay_producer(&mut table, l);
            }
            let mut from_cut = PartitionState::at_retention_point(next.log_index - 1, &next, table);
            let mut reference = PartitionState::new();
            for (i, c) in commands.iter().enumerate() {
                let index = i as u64 + 1;
                let want = reference.apply(index, c);
                if index >= next.log_index {
                    assert_eq!(from_cut.apply(index, c), want, "cut before batch {cut}, entry {index}");
                }
            }
            assert_eq!(from_cut.producers(), reference.producers());
        }
    }
}
