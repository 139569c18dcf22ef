//! openraft's log storage over the node's shared storage engine.
//!
//! Appends are written unsynced, so they are readable at once, and openraft is told they
//! are flushed only when the engine reports them durable (the engine batches the syncs
//! of every group on the node into one: group commit). The vote is durable before
//! `save_vote` returns; the committed log id is saved so a restarted node re-applies
//! what was committed (design decision 3).

use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use flotilla_storage::{Engine, StorageError, WriteBatch};
use flotilla_types::GroupId;
use flotilla_types::planted::{self, Bug};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, RaftTypeConfig};

use crate::TypeConfig;
use crate::keys;

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

pub(crate) fn to_io(e: StorageError) -> io::Error {
    match e {
        StorageError::NoSpace(m) => io::Error::new(io::ErrorKind::StorageFull, m),
        StorageError::Corruption(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        StorageError::Io(m) => io::Error::other(m),
    }
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("in-memory serialisation cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable {what}: {e}")))?;
    if used != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} has {} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(v)
}

/// One group's log, vote and committed id in the node's engine.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    engine: Arc<dyn Engine>,
}

impl LogStore {
    pub fn new(group: GroupId, engine: Arc<dyn Engine>) -> LogStore {
        LogStore { group, engine }
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
        let end_key = match range.end_bound() {
            Bound::Included(i) => keys::log(self.group, i + 1),
            Bound::Excluded(i) => keys::log(self.group, *i),
            Bound::Unbounded => keys::log_end(self.group),
        };
        let pairs = self.engine.scan(&keys::log(self.group, start), &end_key, usize::MAX).map_err(to_io)?;
        let mut out = Vec::with_capacity(pairs.len());
        for (expect, (k, v)) in (start..).zip(pairs) {
            let index = keys::index_of(&k);
            if index != expect {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("group {}: hole in the log at index {expect} (next is {index})", self.group),
                ));
            }
            let entry: Entry = decode(&v, "log entry")?;
            assert_eq!(entry.log_id.index, index, "entry stored under the wrong index");
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(keys::VOTE, "vote")
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
        self.engine.write_durable(b).map_err(to_io)
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
        for e in entries {
            b.put(keys::log(self.group, e.log_id.index), encode(&e));
        }
        if let Err(e) = self.engine.write(b) {
            let err = to_io(e);
            callback.io_completed(Err(io::Error::new(err.kind(), err.to_string())));
            return Err(err);
        }
        if planted::armed(Bug::AckBeforeFlush) {
            callback.io_completed(Ok(()));
            self.engine.on_durable(Box::new(|_| {}));
            return Ok(());
        }
        // openraft counts these entries as flushed only once the engine says they are
        // durable; the leader's commit (and so every acknowledgement) waits for that.
        self.engine.on_durable(Box::new(move |r| callback.io_completed(r.map_err(to_io))));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut b = WriteBatch::new();
        b.delete_range(keys::log(self.group, from), keys::log_end(self.group));
        // Durable so that conflicting entries cannot come back after a crash.
        self.engine.write_durable(b).map_err(to_io)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut b = WriteBatch::new();
        b.put(keys::meta(self.group, keys::PURGED), encode(&log_id));
        b.delete_range(keys::log(self.group, 0), keys::log(self.group, log_id.index + 1));
        self.engine.write(b).map_err(to_io)
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
pub fn restore_from_tombstone(engine: &dyn Engine, group: GroupId) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    let Some(t) = tombstone(engine, group)? else { return Ok(None) };
    let current: Option<VoteOf<TypeConfig>> = read_meta_from(engine, group, keys::VOTE, "vote")?;
    if let (None, Some(vote)) = (current, &t.vote) {
        use openraft::vote::RaftVote;
        // Not committed: this replica has not seen that leader's quorum since it started.
        let vote = VoteOf::<TypeConfig>::from_leader_id(*vote.leader_id(), false);
        let mut b = WriteBatch::new();
        b.put(keys::meta(group, keys::VOTE), encode(&vote));
        engine.write_durable(b).map_err(to_io)?;
    }
    Ok(t.last_log_id)
}

/// Deletes every key of `group` (its log, vote and committed id), durably, leaving its
/// tombstone: the greater of the vote and last log id it had and those of any earlier
/// tombstone.
pub fn destroy(engine: &dyn Engine, group: GroupId) -> Result<(), StorageError> {
    let io = |e: io::Error| StorageError::Io(e.to_string());
    let earlier = tombstone(engine, group).map_err(io)?.unwrap_or_default();
    let vote: Option<VoteOf<TypeConfig>> = read_meta_from(engine, group, keys::VOTE, "vote").map_err(io)?;
    let last = last_log_id(engine, group).map_err(io)?;
    let t = Tombstone { vote: greater_vote(vote, earlier.vote), last_log_id: last.max(earlier.last_log_id) };
    let (start, end) = keys::group_range(group);
    let mut b = WriteBatch::new();
    b.delete_range(start, end);
    b.put(keys::meta(group, keys::TOMBSTONE), encode(&t));
    engine.write_durable(b)
}

/// The greater vote (votes are partially ordered; of two incomparable ones, `a`).
fn greater_vote(a: Option<VoteOf<TypeConfig>>, b: Option<VoteOf<TypeConfig>>) -> Option<VoteOf<TypeConfig>> {
    match (&a, &b) {
        (Some(x), Some(y)) if y > x => b,
        (None, _) => b,
        _ => a,
    }
}
