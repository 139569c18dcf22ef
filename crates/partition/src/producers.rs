//! The producer table: what a partition remembers of each idempotent producer so that a
//! retried batch is answered with the offsets it was first written at instead of being
//! appended again (Kafka's producer state, KIP-98).
//!
//! Per producer id: its epoch, the time of its last batch, and its last
//! [`limits::PRODUCER_IN_FLIGHT_MAX`] batches (first and last sequence, base offset).
//! The table changes only when a stamped batch is appended, and only through
//! [`ProducerTable::appended`], with the batch's stamp, records, base offset and index
//! time; so the table at any log index can be rebuilt from the offset index (which keeps
//! each batch's stamp) starting from an earlier table — how a snapshot at the retention
//! point gets its table.
//!
//! Bounded: a producer idle for longer than the expiry (by index times) is forgotten when
//! a later batch is appended, and past the most producers remembered the least recently
//! active is forgotten first. Both come with each batch ([`ProducerSettings`], from the
//! proposing node's configuration, carried in the log and in the offset index), so that
//! every replica, and every rebuild from the index, forgets the same producers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_types::{Offset, ProducerStamp, limits};
use serde::{Deserialize, Serialize};

/// How long a partition remembers an idle producer, and how many it remembers: Kafka's
/// `producer.id.expiration.ms` and a bound on the table's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSettings {
    pub idle_expiry_ms: u64,
    pub max_producers: u32,
}

impl Default for ProducerSettings {
    fn default() -> ProducerSettings {
        ProducerSettings {
            idle_expiry_ms: limits::PRODUCER_IDLE_EXPIRY_MS,
            max_producers: limits::PARTITION_PRODUCERS_MAX as u32,
        }
    }
}

impl ProducerSettings {
    /// Within the documented bounds (a value from the log is clamped the same way on
    /// every replica).
    pub fn clamped(self) -> ProducerSettings {
        ProducerSettings {
            idle_expiry_ms: self
                .idle_expiry_ms
                .clamp(limits::PRODUCER_IDLE_EXPIRY_MS_MIN, limits::PRODUCER_IDLE_EXPIRY_MS_MAX),
            max_producers: self.max_producers.clamp(1, limits::PARTITION_PRODUCERS_CEILING as u32),
        }
    }
}

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SequencedBatch {
    first_sequence: u32,
    last_sequence: u32,
    base_offset: Offset,
}

/// What a partition remembers of one producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: u16,
    last_time_ms: u64,
    /// Oldest first; at most `PRODUCER_IN_FLIGHT_MAX`.
    batches: VecDeque<SequencedBatch>,
}

/// What to do with a stamped batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next batch in sequence (or the first of a new epoch): append it.
    Append,
    /// Already appended: answer with the offsets it got then, append nothing.
    Duplicate { base_offset: Offset },
    /// An older epoch than the partition has seen for this producer id.
    Fenced { current_epoch: u16 },
    /// Not the next sequence: `expected` is the base sequence the partition waits for.
    OutOfOrder { expected: u32, known: bool },
}

/// Every idempotent producer a partition remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<u64, ProducerEntry>,
    /// (last time, id), for forgetting the idlest first.
    by_time: BTreeSet<(u64, u64)>,
}

impl ProducerTable {
    /// The number of producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Judges a batch of `records` stamped `stamp`, without changing anything.
    pub fn check(&self, stamp: ProducerStamp, records: u32) -> Verdict {
        let Some(entry) = self.producers.get(&stamp.id) else {
            // A producer's first batch here, or one forgotten: only a batch that starts
            // a sequence can begin.
            return if stamp.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0, known: false }
            };
        };
        if stamp.epoch < entry.epoch {
            return Verdict::Fenced { current_epoch: entry.epoch };
        }
        if stamp.epoch > entry.epoch {
            return if stamp.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0, known: true }
            };
        }
        let last = stamp.last_sequence(records);
        if let Some(b) = entry.batches.iter().find(|b| b.first_sequence == stamp.base_sequence)
            && b.last_sequence == last
        {
            return Verdict::Duplicate { base_offset: b.base_offset };
        }
        let expected = entry.batches.back().map_or(0, |b| b.last_sequence.wrapping_add(1));
        if stamp.base_sequence == expected { Verdict::Append } else { Verdict::OutOfOrder { expected, known: true } }
    }

    /// Records an appended batch: `records` records stamped `stamp` at `base_offset`,
    /// with index time `time_ms`, under `settings`. Forgets producers idle too long, and
    /// the idlest past the limit on how many are remembered.
    pub fn appended(
        &mut self,
        stamp: ProducerStamp,
        records: u32,
        base_offset: Offset,
        time_ms: u64,
        settings: ProducerSettings,
    ) {
        let batch = SequencedBatch {
            first_sequence: stamp.base_sequence,
            last_sequence: stamp.last_sequence(records),
            base_offset,
        };
        let entry = self.producers.entry(stamp.id).or_insert_with(|| ProducerEntry {
            epoch: stamp.epoch,
            last_time_ms: time_ms,
            batches: VecDeque::new(),
        });
        self.by_time.remove(&(entry.last_time_ms, stamp.id));
        if entry.epoch != stamp.epoch {
            entry.epoch = stamp.epoch;
            entry.batches.clear();
        }
        entry.last_time_ms = entry.last_time_ms.max(time_ms);
        entry.batches.push_back(batch);
        while entry.batches.len() > limits::PRODUCER_IN_FLIGHT_MAX {
            entry.batches.pop_front();
        }
        self.by_time.insert((entry.last_time_ms, stamp.id));
        self.forget_idle(time_ms, stamp.id, settings.clamped());
    }

    fn forget_idle(&mut self, now_ms: u64, keep: u64, settings: ProducerSettings) {
        while let Some(&(t, id)) = self.by_time.first() {
            let idle = now_ms.saturating_sub(t) > settings.idle_expiry_ms;
            let over = self.producers.len() > settings.max_producers as usize;
            if id == keep || !(idle || over) {
                break;
            }
            self.by_time.pop_first();
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(id: u64, epoch: u16, base_sequence: u32) -> ProducerStamp {
        ProducerStamp { id, epoch, base_sequence }
    }

    #[test]
    fn sequences_continue_and_retries_are_recognised() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(stamp(1, 0, 0), 3), Verdict::Append);
        t.appended(stamp(1, 0, 0), 3, 10, 1, ProducerSettings::default());
        assert_eq!(t.check(stamp(1, 0, 3), 2), Verdict::Append);
        t.appended(stamp(1, 0, 3), 2, 20, 2, ProducerSettings::default());
        assert_eq!(t.check(stamp(1, 0, 0), 3), Verdict::Duplicate { base_offset: 10 });
        assert_eq!(t.check(stamp(1, 0, 3), 2), Verdict::Duplicate { base_offset: 20 });
        assert_eq!(t.check(stamp(1, 0, 6), 1), Verdict::OutOfOrder { expected: 5, known: true });
        assert_eq!(t.check(stamp(1, 0, 4), 1), Verdict::OutOfOrder { expected: 5, known: true });
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_starts_at_zero() {
        let mut t = ProducerTable::default();
        t.appended(stamp(1, 2, 0), 1, 0, 1, ProducerSettings::default());
        assert_eq!(t.check(stamp(1, 1, 1), 1), Verdict::Fenced { current_epoch: 2 });
        assert_eq!(t.check(stamp(1, 3, 5), 1), Verdict::OutOfOrder { expected: 0, known: true });
        assert_eq!(t.check(stamp(1, 3, 0), 1), Verdict::Append);
        t.appended(stamp(1, 3, 0), 1, 1, 2, ProducerSettings::default());
        assert_eq!(t.check(stamp(1, 2, 1), 1), Verdict::Fenced { current_epoch: 3 });
        assert_eq!(t.check(stamp(1, 3, 1), 1), Verdict::Append);
    }

    #[test]
    fn an_unknown_producer_must_start_a_sequence() {
        let t = ProducerTable::default();
        assert_eq!(t.check(stamp(9, 0, 7), 1), Verdict::OutOfOrder { expected: 0, known: false });
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let mut t = ProducerTable::default();
        for i in 0..10u32 {
            t.appended(stamp(1, 0, i), 1, u64::from(i), 1, ProducerSettings::default());
        }
        assert_eq!(t.check(stamp(1, 0, 9), 1), Verdict::Duplicate { base_offset: 9 });
        assert_eq!(t.check(stamp(1, 0, 5), 1), Verdict::Duplicate { base_offset: 5 });
        assert_eq!(t.check(stamp(1, 0, 4), 1), Verdict::OutOfOrder { expected: 10, known: true });
    }

    #[test]
    fn idle_producers_are_forgotten_by_index_time() {
        let mut t = ProducerTable::default();
        t.appended(stamp(1, 0, 0), 1, 0, 1_000, ProducerSettings::default());
        t.appended(stamp(2, 0, 0), 1, 1, 2_000, ProducerSettings::default());
        t.appended(stamp(2, 0, 1), 1, 2, 1_000 + limits::PRODUCER_IDLE_EXPIRY_MS, ProducerSettings::default());
        assert_eq!(t.len(), 2, "not idle for longer than the expiry yet");
        t.appended(stamp(2, 0, 2), 1, 3, 1_001 + limits::PRODUCER_IDLE_EXPIRY_MS, ProducerSettings::default());
        assert_eq!(t.len(), 1);
        assert_eq!(t.check(stamp(1, 0, 1), 1), Verdict::OutOfOrder { expected: 0, known: false });
    }

    #[test]
    fn past_the_limit_the_idlest_is_forgotten() {
        let mut t = ProducerTable::default();
        let n = limits::PARTITION_PRODUCERS_MAX as u64;
        for id in 1..=n + 1 {
            t.appended(stamp(id, 0, 0), 1, id, id, ProducerSettings::default());
        }
        assert_eq!(t.len(), limits::PARTITION_PRODUCERS_MAX);
        assert_eq!(t.check(stamp(1, 0, 1), 1), Verdict::OutOfOrder { expected: 0, known: false });
        assert_eq!(t.check(stamp(2, 0, 1), 1), Verdict::Append);
    }

    #[test]
    fn the_expiry_and_the_bound_come_with_each_batch() {
        let short = ProducerSettings { idle_expiry_ms: 5_000, max_producers: 2 };
        let mut t = ProducerTable::default();
        t.appended(stamp(1, 0, 0), 1, 0, 1_000, short);
        t.appended(stamp(2, 0, 0), 1, 1, 2_000, short);
        t.appended(stamp(3, 0, 0), 1, 2, 3_000, short);
        assert_eq!(t.len(), 2, "the idlest of three is forgotten past a bound of two");
        assert_eq!(t.check(stamp(1, 0, 1), 1), Verdict::OutOfOrder { expected: 0, known: false });
        t.appended(stamp(3, 0, 1), 1, 3, 7_001, short);
        assert_eq!(t.len(), 1, "producer 2, idle for more than 5 s, is forgotten");
        // Values from the log are clamped alike everywhere.
        let junk = ProducerSettings { idle_expiry_ms: 0, max_producers: u32::MAX }.clamped();
        assert_eq!(junk.idle_expiry_ms, limits::PRODUCER_IDLE_EXPIRY_MS_MIN);
        assert_eq!(junk.max_producers as usize, limits::PARTITION_PRODUCERS_CEILING);
    }
}
