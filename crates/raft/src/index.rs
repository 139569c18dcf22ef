//! Reads of a partition's offset and time index in the node's storage engine (design
//! decision 13, docs/decisions.md). The partition state machine says where each batch lives
//! (`flotilla_partition::Effect`); the state machine store writes that here with the apply;
//! fetches, seeks by time and retention read it back with a seek each, so a replica's
//! memory does not grow with its data.
//!
//! - `OFFSETS`: base offset → `BatchLocation`. The batch holding offset `o` is the one
//!   with the greatest base offset `<= o`: one backward seek.
//! - `TIMES`: time → base offset, only for batches that raised the partition's greatest
//!   time, so it is sorted by time and by offset alike; the first offset at or after a
//!   time is the first key `>= time`: one forward seek.
//! - Positions (bytes before a batch) rise with offsets; retention by bytes binary-searches
//!   the offset index.

use std::io;

use flotilla_partition::{BatchLocation, ProducerTable};
use flotilla_storage::Engine;
use flotilla_types::{GroupId, Offset};

use crate::keys::{self, OFFSETS, TIMES};
use crate::log_store::{decode, to_io};

/// The batch holding `offset`: the one with the greatest base offset at or below it.
pub fn batch_at(engine: &dyn Engine, group: GroupId, offset: Offset) -> io::Result<Option<BatchLocation>> {
    let end = match offset.checked_add(1) {
        Some(next) => keys::indexed(group, OFFSETS, next),
        None => keys::indexed_end(group, OFFSETS),
    };
    match engine.last(&keys::indexed(group, OFFSETS, 0), &end).map_err(to_io)? {
        Some((_, v)) => Ok(Some(decode(&v, "offset index entry")?)),
        None => Ok(None),
    }
}

/// The batches to read for a fetch at `offset`: the batch holding it, then the following
/// ones while their total stays within `max_bytes` (always the first), stopping before
/// `end` (the high watermark the caller read). Empty when no batch holds `offset` below
/// `end`.
pub fn batches_from(
    engine: &dyn Engine,
    group: GroupId,
    offset: Offset,
    end: Offset,
    max_bytes: usize,
) -> io::Result<Vec<BatchLocation>> {
    if offset >= end {
        return Ok(Vec::new());
    }
    let Some(first) = batch_at(engine, group, offset)? else { return Ok(Vec::new()) };
    if first.end_offset() <= offset {
        // No batch holds `offset`: the index below the log start was deleted.
        return Ok(Vec::new());
    }
    let mut out = vec![first];
    let mut total = first.bytes as usize;
    let mut next = first.end_offset();
    while next < end {
        // A few entries per read: each is ~40 bytes, and most fetches stop at `max_bytes`.
        let pairs = engine
            .scan(&keys::indexed(group, OFFSETS, next), &keys::indexed(group, OFFSETS, end), 16)
            .map_err(to_io)?;
        if pairs.is_empty() {
            break;
        }
        for (_, v) in pairs {
            let loc: BatchLocation = decode(&v, "offset index entry")?;
            if loc.base_offset != next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("group {group}: offset index has a hole at {next} (next batch at {})", loc.base_offset),
                ));
            }
            if total + loc.bytes as usize > max_bytes {
                return Ok(out);
            }
            total += loc.bytes as usize;
            next = loc.end_offset();
            out.push(loc);
        }
    }
    Ok(out)
}

/// Brings `table` past every batch indexed in `[from, to)`, in order: the producer table
/// at `to` from the one at `from` (`flotilla_partition::replay_producer`).
pub fn replay_producers(
    engine: &dyn Engine,
    group: GroupId,
    from: Offset,
    to: Offset,
    table: &mut ProducerTable,
) -> io::Result<()> {
    let mut next = from;
    while next < to {
        let pairs = engine
            .scan(&keys::indexed(group, OFFSETS, next), &keys::indexed(group, OFFSETS, to), 1024)
            .map_err(to_io)?;
        if pairs.is_empty() {
            break;
        }
        for (_, v) in &pairs {
            let loc: BatchLocation = decode(v, "offset index entry")?;
            flotilla_partition::replay_producer(table, &loc);
            next = loc.end_offset();
        }
    }
    Ok(())
}

/// The base offset of the first batch whose time is at or after `time_ms` (by the time
/// index: the first batch that raised the greatest time to `time_ms` or later); `None`
/// when every batch is older.
pub fn first_batch_at_or_after(engine: &dyn Engine, group: GroupId, time_ms: u64) -> io::Result<Option<Offset>> {
    let pairs =
        engine.scan(&keys::indexed(group, TIMES, time_ms), &keys::indexed_end(group, TIMES), 1).map_err(to_io)?;
    match pairs.into_iter().next() {
        Some((_, v)) => Ok(Some(decode(&v, "time index entry")?)),
        None => Ok(None),
    }
}

/// The first offset at or after `start` (the log start) whose batch's time, or the time
/// of a batch before it, is at or after `time_ms`: where a reader of records from
/// `time_ms` on begins, and where time-based retention stops deleting. `None` when every
/// batch from `start` on is older.
///
/// The time index holds only batches that raised the greatest time, and its entries
/// below the log start are deleted (a snapshot installed on a follower deletes them
/// all): so when the greatest time was already at or after `time_ms` at the log start,
/// the index has no entry for it and the answer is `start` itself. Found by the
/// simulation (seed 233, controller profile): retention deleted a hundred records
/// within retention on a leader that had installed a snapshot.
pub fn first_offset_at_or_after(
    engine: &dyn Engine,
    group: GroupId,
    start: Offset,
    time_ms: u64,
) -> io::Result<Option<Offset>> {
    if let Some(b) = batch_at(engine, group, start)?
        && b.end_offset() > start
        && b.max_timestamp_before.max(b.timestamp_ms) >= time_ms
    {
        return Ok(Some(start));
    }
    Ok(first_batch_at_or_after(engine, group, time_ms)?.map(|o| o.max(start)))
}

/// The first batch at or after `from` whose position is at least `position` (retention by
/// bytes: the batch from which at most `end_position - position` bytes remain), or
/// `None` if every batch before `end` starts below it. O(log² n) seeks.
pub fn first_batch_at_position(
    engine: &dyn Engine,
    group: GroupId,
    from: Offset,
    end: Offset,
    position: u64,
) -> io::Result<Option<BatchLocation>> {
    let (mut lo, mut hi) = (from, end);
    let mut found = None;
    // Invariant: every batch holding an offset below `lo` starts below `position`; the
    // batch holding `hi` (when `hi < end`) starts at or after it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let Some(b) = batch_at(engine, group, mid)? else { return Ok(None) };
        if b.position >= position {
            found = Some(b);
            hi = b.base_offset;
        } else {
            lo = b.end_offset();
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use flotilla_partition::{Command, Effect, PartitionState};
    use flotilla_storage::{MemEngine, WriteBatch};
    use flotilla_types::{Record, RecordBatch};

    use super::*;
    use crate::log_store::encode;

    /// Applies `n` batches of 1..=4 records with rising (and sometimes falling) times,
    /// writing the index as the state machine store does.
    fn partition(engine: &MemEngine, n: u64) -> (PartitionState, Vec<BatchLocation>) {
        let mut s = PartitionState::new();
        let mut locs = Vec::new();
        for i in 1..=n {
            let ts = if i % 5 == 0 { 10 } else { 1_000 + i * 10 };
            let records: Vec<Record> =
                (0..(i % 4 + 1)).map(|j| Record { timestamp_ms: ts, ..Record::value(format!("{i}-{j}")) }).collect();
            let cmd = flotilla_partition::produce_command(&RecordBatch::encode(&records).unwrap(), u64::MAX);
            let mut b = WriteBatch::new();
            if let (_, Effect::Indexed { location, new_max_time }) = s.apply(i, &cmd) {
                b.put(keys::indexed(7, OFFSETS, location.base_offset), encode(&location));
                if new_max_time {
                    b.put(keys::indexed(7, TIMES, location.timestamp_ms), encode(&location.base_offset));
                }
                locs.push(location);
            }
            engine.write(b).unwrap();
        }
        let _ = Command::DeleteRecords { before: 0 };
        (s, locs)
    }

    #[test]
    fn a_fetch_finds_the_batch_holding_an_offset_and_reads_on_within_its_budget() {
        let engine = MemEngine::new();
        let (s, locs) = partition(&engine, 50);
        let hw = s.high_watermark();
        for loc in &locs {
            for o in loc.base_offset..loc.end_offset() {
                assert_eq!(batch_at(&engine, 7, o).unwrap(), Some(*loc));
                let got = batches_from(&engine, 7, o, hw, 0).unwrap();
                assert_eq!(got, vec![*loc], "at least one batch, even over the budget");
            }
        }
        let all = batches_from(&engine, 7, 0, hw, usize::MAX).unwrap();
        assert_eq!(all, locs);
        let some = batches_from(&engine, 7, 0, locs[10].base_offset, usize::MAX).unwrap();
        assert_eq!(some, locs[..10].to_vec(), "nothing at or past the end asked for");
        assert_eq!(batches_from(&engine, 7, hw, hw, usize::MAX).unwrap(), vec![]);
        let budget = (locs[0].bytes + locs[1].bytes) as usize;
        assert_eq!(batches_from(&engine, 7, 0, hw, budget).unwrap(), locs[..2].to_vec());
    }

    #[test]
    fn a_seek_by_time_finds_the_first_batch_at_or_after_it() {
        let engine = MemEngine::new();
        let (_, locs) = partition(&engine, 50);
        // Times 1010, 1020, ... with a 10 every fifth batch (which never raises the
        // maximum, so a seek never lands on it).
        assert_eq!(first_batch_at_or_after(&engine, 7, 0).unwrap(), Some(0));
        assert_eq!(first_batch_at_or_after(&engine, 7, 1_015).unwrap(), Some(locs[1].base_offset));
        assert_eq!(first_batch_at_or_after(&engine, 7, 1_020).unwrap(), Some(locs[1].base_offset));
        assert_eq!(first_batch_at_or_after(&engine, 7, 1_045).unwrap(), Some(locs[5].base_offset));
        assert_eq!(first_batch_at_or_after(&engine, 7, 1_501).unwrap(), None, "past the end");
    }

    /// Simulation seed 233 (controller): on a replica whose time index lost its entries
    /// below the log start (a snapshot installed), a seek to a time already reached
    /// before the log start must answer the log start, not the next batch that raised
    /// the greatest time.
    #[test]
    fn a_seek_to_a_time_reached_before_the_log_start_answers_the_log_start() {
        let engine = MemEngine::new();
        let (s, locs) = partition(&engine, 50);
        let start = locs[20].base_offset;
        let mut b = WriteBatch::new();
        b.delete_range(keys::indexed(7, TIMES, 0), keys::indexed_end(7, TIMES));
        engine.write(b).unwrap();
        assert_eq!(first_offset_at_or_after(&engine, 7, start, 1_050).unwrap(), Some(start));
        assert_eq!(first_offset_at_or_after(&engine, 7, start, 0).unwrap(), Some(start));
        // A time after every batch: none.
        assert_eq!(first_offset_at_or_after(&engine, 7, start, s.max_timestamp_ms() + 1).unwrap(), None);
    }

    #[test]
    fn retention_by_bytes_finds_the_first_batch_past_a_position() {
        let engine = MemEngine::new();
        let (s, locs) = partition(&engine, 50);
        let hw = s.high_watermark();
        for target in [0, 1, locs[7].position, locs[7].position + 1, locs[49].position] {
            let expect = locs.iter().find(|l| l.position >= target).copied();
            assert_eq!(first_batch_at_position(&engine, 7, 0, hw, target).unwrap(), expect, "position {target}");
        }
        assert_eq!(first_batch_at_position(&engine, 7, 0, hw, s.end_position()).unwrap(), None);
        assert_eq!(
            first_batch_at_position(&engine, 7, locs[20].base_offset, hw, 0).unwrap(),
            Some(locs[20]),
            "never before `from`"
        );
    }
}
