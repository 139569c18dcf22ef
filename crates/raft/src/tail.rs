//! A group's unapplied tail in memory: the entries this replica appended and has not
//! applied yet. Replication to followers and the apply read them from here instead of
//! reading back from the engine and decoding what was just encoded; anything else (a
//! follower that lags further, a restart) reads the engine as before.
//!
//! The tail is a cache of the log, never a second source of truth: it changes only where
//! the log does (append, truncate, purge), always holds consecutive entries that are
//! also in the engine, and is emptied as entries are applied, so an idle group holds
//! none. It is bounded by `TAIL_BYTES_MAX` per group: past it the oldest entries go.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use openraft::RaftTypeConfig;

use crate::TypeConfig;

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

/// The most a group's tail holds, in encoded bytes.
pub use flotilla_types::limits::RAFT_TAIL_BYTES_MAX as TAIL_BYTES_MAX;

/// Whether `entry` is a produce of the batch whose bytes are at `key` (address, length).
pub fn holds_batch(entry: &Entry, key: (usize, usize)) -> bool {
    matches!(&entry.payload, openraft::EntryPayload::Normal(crate::Command::Partition(
        flotilla_partition::Command::Produce { batch, .. },
    )) if (batch.as_ptr() as usize, batch.len()) == key)
}

#[derive(Default)]
struct Entries {
    /// (entry, its encoded size), consecutive by index.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

/// Shared by a group's log store, its readers and its state machine.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<Entries>>);

impl Entries {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn end(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0.lock().expect("tail lock poisoned")
    }

    /// Entries just written to the engine (`size`: each one's encoded bytes).
    pub fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut t = self.lock();
        for (entry, size) in entries {
            let index = entry.log_id.index;
            // An entry written over ones the tail holds replaces them and what follows;
            // past the tail's end (after a purge), the tail starts over from it. Either
            // way the tail stays consecutive.
            while t.end().is_some_and(|end| end > index) {
                t.pop_back();
            }
            if t.end().is_some_and(|end| end < index) {
                *t = Entries::default();
            }
            t.bytes += size;
            t.entries.push_back((entry, size));
        }
        while t.bytes > TAIL_BYTES_MAX && t.entries.len() > 1 {
            t.pop_front();
        }
    }

    /// The log lost every entry from `from` on.
    pub fn truncated(&self, from: u64) {
        let mut t = self.lock();
        while t.end().is_some_and(|end| end > from) {
            t.pop_back();
        }
    }

    /// Every entry up to `index` is applied (or purged): no reader needs it from here.
    pub fn applied(&self, index: u64) {
        let mut t = self.lock();
        while t.first().is_some_and(|f| f <= index) {
            t.pop_front();
        }
        // An idle group keeps no buffer either (thousands of idle replicas per node).
        if t.entries.is_empty() && t.entries.capacity() > 8 {
            t.entries = VecDeque::new();
        }
    }

    /// The entries from `start` below `end`, while they add up to `max_bytes` (always
    /// the first), when the tail holds all of `start..end`; `None` when it does not, and
    /// the caller reads the engine.
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let t = self.lock();
        let (first, tail_end) = (t.first()?, t.end()?);
        if start < first || start >= end || end > tail_end {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, size) in t.entries.iter().skip((start - first) as usize) {
            if entry.log_id.index >= end || (!out.is_empty() && bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }

    /// The index of the entry holding the produce batch `key` (its bytes' address and
    /// length), searching from the newest entry.
    pub fn find_batch(&self, key: (usize, usize)) -> Option<u64> {
        let t = self.lock();
        t.entries.iter().rev().find(|(e, _)| holds_batch(e, key)).map(|(e, _)| e.log_id.index)
    }

    #[cfg(test)]
    fn indexes(&self) -> Vec<u64> {
        self.lock().entries.iter().map(|(e, _)| e.log_id.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn entry(index: u64) -> (Entry, usize) {
        let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
        (Entry { log_id, payload: EntryPayload::Blank }, 100)
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn reads_what_it_holds_and_sends_the_rest_to_the_engine() {
        let t = Tail::default();
        t.appended((5..10).map(entry));
        assert_eq!(indexes(t.read(5, 10, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(t.read(7, 9, usize::MAX)), Some(vec![7, 8]));
        assert_eq!(indexes(t.read(7, 100, usize::MAX)), None, "past the tail's end: the engine says what is there");
        assert_eq!(indexes(t.read(4, 10, usize::MAX)), None, "below the tail: the engine");
        assert_eq!(indexes(t.read(10, 12, usize::MAX)), None, "past the tail: the engine");
        assert_eq!(indexes(t.read(5, 10, 250)), Some(vec![5, 6]), "bounded by bytes");
        assert_eq!(indexes(t.read(5, 10, 10)), Some(vec![5]), "always the first");
    }

    #[test]
    fn follows_the_log_through_truncation_apply_and_gaps() {
        let t = Tail::default();
        t.appended((1..6).map(entry));
        t.truncated(4);
        assert_eq!(t.indexes(), vec![1, 2, 3]);
        t.appended([entry(4)]);
        assert_eq!(t.indexes(), vec![1, 2, 3, 4]);
        t.applied(2);
        assert_eq!(t.indexes(), vec![3, 4]);
        // Written over: what follows goes too.
        t.appended([entry(3)]);
        assert_eq!(t.indexes(), vec![3]);
        t.appended([entry(4)]);
        // Past the end: starts over.
        t.appended([entry(9)]);
        assert_eq!(t.indexes(), vec![9]);
        t.applied(9);
        assert!(t.indexes().is_empty(), "an applied tail holds nothing");
        assert_eq!(t.read(9, 10, usize::MAX).map(|v| v.len()), None);
    }

    #[test]
    fn is_bounded_by_bytes() {
        let t = Tail::default();
        let n = TAIL_BYTES_MAX / 100 + 10;
        t.appended((0..n as u64).map(entry));
        assert_eq!(t.indexes().len(), TAIL_BYTES_MAX / 100);
        assert_eq!(t.indexes().last(), Some(&(n as u64 - 1)));
    }
}
