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
        match self.engine.get(&keys::meta(self.group, kind)).map_err(to_io)? {
            Some(v) => Ok(Some(decode(&v, what)?)),
            None => Ok(None),
        }
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
        let last = self
            .engine
            .last(&keys::log(self.group, 0), &keys::log_end(self.group))
            .map_err(to_io)?
            .map(|(_, v)| decode::<Entry>(&v, "log entry"))
            .transpose()?
            .map(|e| e.log_id);
        let last_log_id = last.or(last_purged);
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

/// Deletes every key of `group` (its log, vote and committed id), durably.
pub fn destroy(engine: &dyn Engine, group: GroupId) -> Result<(), StorageError> {
    let (start, end) = keys::group_range(group);
    let mut b = WriteBatch::new();
    b.delete_range(start, end);
    engine.write_durable(b)
}
