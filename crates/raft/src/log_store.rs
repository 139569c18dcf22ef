//! openraft's log storage over the node's shared storage engine.
//!
//! Appends are written unsynced, so they are readable at once, and openraft is told they
//! are flushed only when the engine reports them durable (the engine batches the syncs
//! of every group on the node into one: group commit). The vote is durable before
//! `save_vote` returns; the committed log id is saved so a restarted node re-applies
//! what was committed (design decision 3, docs/decisions.md).

use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use flotilla_storage::{Engine, StorageError, WriteBatch};
use flotilla_types::planted::{self, Bug};
use flotilla_types::{GroupId, limits};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, RaftTypeConfig};

use crate::TypeConfig;
use crate::keys;
use crate::tail::Tail;

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

pub(crate) fn to_io(e: StorageError) -> io::Error {
    match e {
        StorageError::NoSpace(m) => io::Error::new(io::ErrorKind::StorageFull, m),
        StorageError::Corruption(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        StorageError::Io(m) => io::Error::other(m),
    }
}

/// The one bincode configuration of everything the raft crate writes to disk or sends to
/// a peer. Decoding is bounded: the lengths a message or a stored value claims may add up
/// to at most `limits::DECODE_BYTES_MAX`, so no allocation is sized by a peer's or a
/// file's word beyond that (without the limit, a five-byte message claiming an exabyte
/// `Vec` aborted the node).
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ limits::DECODE_BYTES_MAX }>()
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, config()).expect("in-memory serialisation cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    if bytes.len() > limits::DECODE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {} bytes is over the limit of {}", bytes.len(), limits::DECODE_BYTES_MAX),
        ));
    }
    let (v, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable {what}: {e}")))?;
    if used != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} has {} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(v)
}

/// Writes `b` and waits, without blocking the thread, until the engine reports it
/// durable: the write joins the engine's group commit like any append. A blocking sync
/// here stalled a runtime worker for every vote, truncation and deletion, and an
/// election storm across many groups then stalled the node and caused more elections.
pub(crate) async fn write_durable(engine: &dyn Engine, b: WriteBatch) -> Result<(), StorageError> {
    engine.write(b)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.on_durable(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await.unwrap_or_else(|_| Err(StorageError::Io("the engine dropped a durability callback".into())))
}

/// One group's log, vote and committed id in the node's engine.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    engine: Arc<dyn Engine>,
    /// The entries appended and not yet applied, in memory (`tail`).
    tail: Tail,
    /// The last log index durable in this replica's log (lowered by a truncation).
    durable: Arc<tokio::sync::watch::Sender<u64>>,
}

impl LogStore {
    pub fn new(group: GroupId, engine: Arc<dyn Engine>) -> LogStore {
        LogStore { group, engine, tail: Tail::default(), durable: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }

    /// Changes whenever more of this replica's log is durable; its value is the last
    /// durable index (acks=leader waits on it).
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn lower_durable(&self, below: u64) {
        self.durable.send_if_modified(|d| {
            let lower = *d >= below;
            if lower {
                *d = below.saturating_sub(1);
            }
            lower
        });
    }

    /// The unapplied tail this log keeps in memory; the group's state machine empties
    /// it as it applies.
    pub fn tail(&self) -> Tail {
        self.tail.clone()
    }

    /// Reads the entry at `index`, if present.
    pub fn entry(&self, index: u64) -> io::Result<Option<Entry>> {
        match self.engine.get(&keys::log(self.group, index)).map_err(to_io)? {
            Some(v) => Ok(Some(decode(&v, "log entry")?)),
            None => Ok(None),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, kind: u8, what: &str) -> io::Result<Option<T>> {
        read_meta_from(self.engine.as_ref(), self.group, kind, what)
    }

    /// The engine the log is stored in.
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// The id of the last entry in the log.
    pub fn last_log_id(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        last_log_id(self.engine.as_ref(), self.group)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.tail.read(start, end, usize::MAX) {
            return Ok(entries);
        }
        let end_key = match range.end_bound() {
            Bound::Included(i) => keys::log(self.group, i + 1),
            Bound::Excluded(i) => keys::log(self.group, *i),
            Bound::Unbounded => keys::log_end(self.group),
        };
        let pairs = self.engine.scan(&keys::log(self.group, start), &end_key, usize::MAX).map_err(to_io)?;
        self.entries_from(start, pairs)
    }

    /// What a replication call sends: entries from `start` on, read only while they add
    /// up to `limits::RAFT_APPEND_BYTES_MAX` (and always the first), since no more is
    /// sent in one message. Reading the whole range asked for read up to 256 entries of
    /// up to 4 MiB each for every lagging follower.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        if let Some(entries) = self.tail.read(start, end, limits::RAFT_APPEND_BYTES_MAX) {
            return Ok(entries);
        }
        let pairs = self
            .engine
            .scan_bytes(&keys::log(self.group, start), &keys::log(self.group, end), limits::RAFT_APPEND_BYTES_MAX)
            .map_err(to_io)?;
        self.entries_from(start, pairs)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(keys::VOTE, "vote")
    }
}

impl LogStore {
    /// Decodes consecutive log entries read from `start` on (the first may come later,
    /// when the range begins below the log's first entry); a hole between them, a
    /// malformed key or an entry under the wrong index is an error.
    fn entries_from(&self, start: u64, pairs: Vec<flotilla_storage::KeyValue>) -> io::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(pairs.len());
        let first = pairs.first().and_then(|(k, _)| keys::index_of(k)).unwrap_or(start).max(start);
        for (expect, (k, v)) in (first..).zip(pairs) {
            let index = keys::index_of(&k).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("group {}: malformed log key {k:02x?}", self.group))
            })?;
            if index != expect {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("group {}: hole in the log at index {expect} (next is {index})", self.group),
                ));
            }
            let entry: Entry = decode(&v, "log entry")?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("group {}: the entry stored under index {index} says {}", self.group, entry.log_id.index),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = self.read_meta(keys::PURGED, "purged log id")?;
        let last_log_id = last_entry_id(self.engine.as_ref(), self.group)?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        if planted::armed(Bug::ForgetVote) {
            return Ok(());
        }
        let mut b = WriteBatch::new();
        b.put(keys::meta(self.group, keys::VOTE), encode(vote));
        // A vote must never be forgotten: it is durable before we answer anyone.
        write_durable(self.engine.as_ref(), b).await.map_err(to_io)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let mut b = WriteBatch::new();
        match committed {
            Some(c) => b.put(keys::meta(self.group, keys::COMMITTED), encode(&c)),
            None => b.delete(keys::meta(self.group, keys::COMMITTED)),
        };
        // Unsynced is enough: durability is in write order, so a durable committed id
        // implies the entries it names are durable too.
        self.engine.write(b).map_err(to_io)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        self.read_meta(keys::COMMITTED, "committed log id")
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut b = WriteBatch::new();
        let mut kept = Vec::new();
        let mut last = 0;
        for e in entries {
            last = e.log_id.index;
            let bytes = encode(&e);
            let size = bytes.len();
            b.put(keys::log(self.group, e.log_id.index), bytes);
            kept.push((e, size));
        }
        if let Err(e) = self.engine.write(b) {
            let err = to_io(e);
            callback.io_completed(Err(io::Error::new(err.kind(), err.to_string())));
            return Err(err);
        }
        // Written (readable, not yet durable): readers may have them from memory now.
        self.tail.appended(kept);
        if planted::armed(Bug::AckBeforeFlush) {
            callback.io_completed(Ok(()));
            self.engine.on_durable(Box::new(|_| {}));
            return Ok(());
        }
        // openraft counts these entries as flushed only once the engine says they are
        // durable; the leader's commit (and so every acknowledgement) waits for that.
        let durable = self.durable.clone();
        self.engine.on_durable(Box::new(move |r| {
            if r.is_ok() {
                durable.send_if_modified(|d| {
                    let raise = last > *d;
                    if raise {
                        *d = last;
                    }
                    raise
                });
            }
            callback.io_completed(r.map_err(to_io))
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.tail.truncated(from);
        self.lower_durable(from);
        let mut b = WriteBatch::new();
        b.delete_range(keys::log(self.group, from), keys::log_end(self.group));
        // Durable so that conflicting entries cannot come back after a crash.
        write_durable(self.engine.as_ref(), b).await.map_err(to_io)?;
        // Durability comes in order: an append of the entries just removed that became
        // durable meanwhile raised the mark again.
        self.lower_durable(from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.tail.applied(log_id.index);
        let mut b = WriteBatch::new();
        b.put(keys::meta(self.group, keys::PURGED), encode(&log_id));
        b.delete_range(keys::log(self.group, 0), keys::log(self.group, log_id.index + 1));
        self.engine.write(b).map_err(to_io)?;
        // The purged entries are the partition's deleted records: give their space back.
        self.engine.compact(&keys::log(self.group, 0), &keys::log(self.group, log_id.index + 1));
        Ok(())
    }
}

/// What a removed replica had voted and the last log id it held, kept after its data is
/// deleted. Raft's safety rests on a voter never forgetting its vote or its log: a replica
/// removed from a group and later re-created empty on the same node would otherwise grant
/// its vote (and its acknowledgements) to a stale member that still counts it as a voter
/// of an old configuration, with a log missing entries that this replica had helped
/// commit. So a re-created replica starts from the remembered vote and refuses to vote
/// for a candidate whose log is shorter than the one it once held
/// (`Group::refuse_below_floor`), until its own log has caught up past it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    pub vote: Option<VoteOf<TypeConfig>>,
    pub last_log_id: Option<LogIdOf<TypeConfig>>,
}

/// The tombstone `destroy` left for `group` on this node, if any.
pub fn tombstone(engine: &dyn Engine, group: GroupId) -> io::Result<Option<Tombstone>> {
    read_meta_from(engine, group, keys::TOMBSTONE, "tombstone")
}

fn read_meta_from<T: serde::de::DeserializeOwned>(
    engine: &dyn Engine,
    group: GroupId,
    kind: u8,
    what: &str,
) -> io::Result<Option<T>> {
    match engine.get(&keys::meta(group, kind)).map_err(to_io)? {
        Some(v) => Ok(Some(decode(&v, what)?)),
        None => Ok(None),
    }
}

/// The id of the last entry of `group`'s log (or the last purged one).
fn last_log_id(engine: &dyn Engine, group: GroupId) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    match last_entry_id(engine, group)? {
        Some(l) => Ok(Some(l)),
        None => read_meta_from(engine, group, keys::PURGED, "purged log id"),
    }
}

/// The id of the last entry stored in `group`'s log.
fn last_entry_id(engine: &dyn Engine, group: GroupId) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    Ok(engine
        .last(&keys::log(group, 0), &keys::log_end(group))
        .map_err(to_io)?
        .map(|(_, v)| decode::<Entry>(&v, "log entry"))
        .transpose()?
        .map(|e| e.log_id))
}

/// Before a re-created replica starts: its vote is the one its tombstone remembers, so it
/// accepts no leader and grants no candidate that the removed replica would have turned
/// away. Returns the tombstone's last log id (the floor for granting votes).
pub async fn restore_from_tombstone(engine: &dyn Engine, group: GroupId) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    let Some(t) = tombstone(engine, group)? else { return Ok(None) };
    let current: Option<VoteOf<TypeConfig>> = read_meta_from(engine, group, keys::VOTE, "vote")?;
    if let (None, Some(vote)) = (current, &t.vote) {
        use openraft::vote::RaftVote;
        // Not committed: this replica has not seen that leader's quorum since it started.
        let vote = VoteOf::<TypeConfig>::from_leader_id(*vote.leader_id(), false);
        let mut b = WriteBatch::new();
        b.put(keys::meta(group, keys::VOTE), encode(&vote));
        write_durable(engine, b).await.map_err(to_io)?;
    }
    Ok(t.last_log_id)
}

/// Deletes every key of `group` (its log, vote and committed id), durably, leaving its
/// tombstone: the greater of the vote and last log id it had and those of any earlier
/// tombstone.
pub async fn destroy(engine: &dyn Engine, group: GroupId) -> Result<(), StorageError> {
    let io = |e: io::Error| StorageError::Io(e.to_string());
    let earlier = tombstone(engine, group).map_err(io)?.unwrap_or_default();
    let vote: Option<VoteOf<TypeConfig>> = read_meta_from(engine, group, keys::VOTE, "vote").map_err(io)?;
    let last = last_log_id(engine, group).map_err(io)?;
    let t = Tombstone { vote: greater_vote(vote, earlier.vote), last_log_id: last.max(earlier.last_log_id) };
    let (start, end) = keys::group_range(group);
    let mut b = WriteBatch::new();
    b.delete_range(start, end);
    b.put(keys::meta(group, keys::TOMBSTONE), encode(&t));
    write_durable(engine, b).await
}

/// The greater vote (votes are partially ordered; of two incomparable ones, `a`).
fn greater_vote(a: Option<VoteOf<TypeConfig>>, b: Option<VoteOf<TypeConfig>>) -> Option<VoteOf<TypeConfig>> {
    match (&a, &b) {
        (Some(x), Some(y)) if y > x => b,
        (None, _) => b,
        _ => a,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use flotilla_storage::{DurableCallback, KeyValue, MemEngine};
    use openraft::entry::RaftEntry;

    use super::*;
    use crate::Command;

    /// A `MemEngine` that counts the value bytes every read returns.
    struct Counting {
        inner: MemEngine,
        read: AtomicUsize,
    }

    impl Engine for Counting {
        fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.inner.write(batch)
        }
        fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.inner.write_durable(batch)
        }
        fn on_durable(&self, done: DurableCallback) {
            self.inner.on_durable(done)
        }
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            let v = self.inner.get(key)?;
            self.read.fetch_add(v.as_ref().map_or(0, Vec::len), Ordering::Relaxed);
            Ok(v)
        }
        fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
            let pairs = self.inner.scan(start, end, limit)?;
            self.read.fetch_add(pairs.iter().map(|(_, v)| v.len()).sum(), Ordering::Relaxed);
            Ok(pairs)
        }
        fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
            self.inner.last(start, end)
        }
    }

    /// An engine whose syncs take `SYNC`: `write_durable` blocks its caller that long,
    /// `on_durable` calls back from another thread after it.
    struct SlowSync(MemEngine);

    const SYNC: std::time::Duration = std::time::Duration::from_millis(300);

    impl Engine for SlowSync {
        fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.0.write(batch)
        }
        fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
            std::thread::sleep(SYNC);
            self.0.write_durable(batch)
        }
        #[allow(clippy::disallowed_methods, reason = "a slow disk's callback comes from its own thread")]
        fn on_durable(&self, done: DurableCallback) {
            std::thread::spawn(move || {
                std::thread::sleep(SYNC);
                done(Ok(()));
            });
        }
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.0.get(key)
        }
        fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
            self.0.scan(start, end, limit)
        }
        fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
            self.0.last(start, end)
        }
    }

    /// t98 (docs/simulation.md, "Defects found by review"): saving a vote, truncating and
    /// deleting a group waited for their sync on the runtime's worker thread, so an
    /// election storm across many groups stalled every other task of the node. They now
    /// wait for the engine's group commit without holding the thread: on a one-thread
    /// runtime, another task keeps running while a vote is being made durable.
    #[tokio::test(flavor = "current_thread")]
    async fn t98_durable_writes_do_not_block_the_runtime() {
        let engine: Arc<dyn Engine> = Arc::new(SlowSync(MemEngine::new()));
        let mut store = LogStore::new(7, engine.clone());
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        tokio::task::yield_now().await;
        let vote: VoteOf<TypeConfig> = openraft::Vote::new(3, 1);
        store.save_vote(&vote).await.unwrap();
        store.truncate_after(None).await.unwrap();
        destroy(engine.as_ref(), 7).await.unwrap();
        let during = ticks.load(Ordering::Relaxed);
        ticker.abort();
        // Three syncs of 300 ms: a runtime left free ticks about 180 times; a blocked
        // one not at all.
        assert!(during >= 20, "the runtime ran {during} ticks during three syncs");
        assert_eq!(store.read_vote().await.unwrap(), None, "destroy removed the vote");
        assert!(tombstone(engine.as_ref(), 7).unwrap().unwrap().vote.is_some(), "the tombstone has the vote");
    }

    /// t97 (docs/simulation.md, "Defects found by review"): a replication call read every
    /// entry of the range openraft asks for (up to 256 entries of up to 4 MiB each), then
    /// sent at most `RAFT_APPEND_BYTES_MAX`. It now reads only what it will send.
    #[tokio::test]
    async fn t97_a_replication_read_is_bounded_by_what_one_message_sends() {
        const MIB: usize = 1 << 20;
        let engine = Arc::new(Counting { inner: MemEngine::new(), read: AtomicUsize::new(0) });
        let mut b = WriteBatch::new();
        for i in 1..=32u64 {
            let cmd = Command::Partition(flotilla_partition::Command::Produce {
                batch: bytes::Bytes::from(vec![i as u8; MIB]),
                records: 1,
                timestamp_ms: 1,
                producers: Default::default(),
            });
            let entry = Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, i), cmd);
            b.put(keys::log(7, i), encode(&entry));
        }
        engine.write(b).unwrap();
        let mut store = LogStore::new(7, engine.clone());

        let got = store.limited_get_log_entries(1, 33).await.unwrap();
        let read = engine.read.swap(0, Ordering::Relaxed);
        assert!(!got.is_empty(), "at least one entry");
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (1..=got.len() as u64).collect::<Vec<_>>());
        // What it sends, and the one entry that showed the next would not fit.
        assert!(read <= limits::RAFT_APPEND_BYTES_MAX + MIB + 1024, "read {read} bytes to send one message");
        assert!(got.len() >= 5, "as much as fits: {} entries", got.len());

        // An entry larger than the budget alone is still read, alone.
        let big = Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(1, 1, 33),
            Command::Partition(flotilla_partition::Command::Produce {
                batch: bytes::Bytes::from(vec![0u8; limits::RAFT_APPEND_BYTES_MAX + 1]),
                records: 1,
                timestamp_ms: 1,
                producers: Default::default(),
            }),
        );
        let mut b = WriteBatch::new();
        b.put(keys::log(7, 33), encode(&big));
        engine.write(b).unwrap();
        assert_eq!(store.limited_get_log_entries(33, 34).await.unwrap().len(), 1);

        // Reading a range for applying or a snapshot still reads all of it.
        assert_eq!(store.try_get_log_entries(1..33).await.unwrap().len(), 32);
    }
}
