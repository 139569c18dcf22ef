//! The narrow storage interface every Flotilla node writes through, an in-memory engine
//! with a crash model for simulation, and a conformance suite every engine must pass.
//!
//! An engine is an ordered key-value store with four powers: an atomic batch of writes
//! that is visible at once, a way to learn when everything written so far is durable
//! (group commit), ordered reads, and range deletes. Keys are opaque bytes; the `raft`
//! crate lays them out as `[group BE][kind][index BE]`.
//!
//! Architecture invariant: this crate knows nothing of RocksDB, Raft or the network.

pub mod conformance;
pub mod mem;

pub use mem::MemEngine;

/// What an engine operation can fail with. Operating errors, returned to the caller;
/// programmer errors panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The device is full. Nothing of the failed write was applied.
    #[error("no space left on device: {0}")]
    NoSpace(String),
    /// Data read back is not what was written (checksum, truncation).
    #[error("corruption: {0}")]
    Corruption(String),
    /// Any other I/O failure (an fsync error, a read error).
    #[error("i/o error: {0}")]
    Io(String),
}

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Writes applied all together or not at all, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put { key: key.into(), value: value.into() });
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::DeleteRange { start: start.into(), end: end.into() });
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Called once with the outcome of a durability request.
pub type DurableCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// A key and its value, as a scan returns them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An engine's sizes ([`Engine::sizes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSizes {
    /// Bytes in the engine's sorted files (RocksDB's SST files).
    pub files_bytes: u64,
    /// Bytes in write buffers not yet flushed to files (RocksDB's memtables).
    pub memory_bytes: u64,
}

/// The storage engine of one node. Shared by every Raft group on the node.
///
/// Contract (checked by `conformance`):
/// - `write` applies a batch atomically; its effects are visible to every read that
///   starts after it returns, but may be lost on power loss until made durable.
/// - Writes become durable in the order they were made: after a power loss the engine
///   holds exactly the effects of some prefix of the batches written, and that prefix
///   includes every batch that was durable.
/// - `on_durable(cb)` calls `cb(Ok(()))` once every batch written before the call is
///   durable, or `cb(Err(_))` if that cannot be ensured. It may call `cb` before it
///   returns. Engines batch many such requests into one sync (group commit).
/// - `write_durable` is `write` followed by waiting for durability, for rare writes
///   that must be durable before the caller goes on (a Raft vote).
pub trait Engine: Send + Sync + 'static {
    /// Applies `batch` atomically; visible at once, durable later.
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Applies `batch` atomically and returns only once it, and every earlier batch, is
    /// durable.
    fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Calls `done` once every batch written before this call is durable.
    fn on_durable(&self, done: DurableCallback);

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` pairs with `start <= key < end`, in ascending key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError>;

    /// The pair with the greatest key in `[start, end)`.
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError>;

    /// Asks the engine to give the space of deleted keys in `[start, end)` back to the
    /// filesystem soon (after a range delete: RocksDB keeps deleted data on disk until a
    /// compaction rewrites the files that hold it). A hint: it returns at once, and an
    /// engine without such a cost does nothing.
    fn compact(&self, _start: &[u8], _end: &[u8]) {}

    /// What the engine holds, for metrics: bytes in its files on disk and in memory
    /// buffers not yet written to them. An engine that does not know answers zeros.
    fn sizes(&self) -> EngineSizes {
        EngineSizes::default()
    }

    /// Pairs with `start <= key < end` in ascending key order, as `scan` gives them, but
    /// only while their values add up to at most `bytes_max` (always the first pair when
    /// there is one), so that a reader never reads far more than it will use. The default
    /// reads one pair at a time; an engine with iterators reads them in one pass.
    fn scan_bytes(&self, start: &[u8], end: &[u8], bytes_max: usize) -> Result<Vec<KeyValue>, StorageError> {
        let mut out: Vec<KeyValue> = Vec::new();
        let mut total = 0usize;
        let mut from = start.to_vec();
        loop {
            let Some((k, v)) = self.scan(&from, end, 1)?.pop() else { return Ok(out) };
            if !out.is_empty() && total + v.len() > bytes_max {
                return Ok(out);
            }
            total += v.len();
            from = k.clone();
            from.push(0); // the least key after `k`
            out.push((k, v));
        }
    }
}

impl<E: Engine + ?Sized> Engine for std::sync::Arc<E> {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write(batch)
    }
    fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write_durable(batch)
    }
    fn on_durable(&self, done: DurableCallback) {
        (**self).on_durable(done)
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        (**self).scan(start, end, limit)
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        (**self).last(start, end)
    }
    fn scan_bytes(&self, start: &[u8], end: &[u8], bytes_max: usize) -> Result<Vec<KeyValue>, StorageError> {
        (**self).scan_bytes(start, end, bytes_max)
    }
    fn compact(&self, start: &[u8], end: &[u8]) {
        (**self).compact(start, end)
    }
}
