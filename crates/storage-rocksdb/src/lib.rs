//! `RocksEngine`: the [`Engine`] of a real node, on one RocksDB database per node.
//!
//! This crate owns the mapping of the engine contract onto RocksDB: one database at one
//! directory holds every Raft group's keys (the `raft` crate's key prefixes keep them
//! apart; there is one column family, the default); every write goes through the WAL;
//! durability comes from one flusher thread that group-commits WAL syncs; RocksDB errors
//! become [`StorageError`]s; and the options are tuned for a log workload.
//!
//! Architecture invariant: this crate knows nothing of Raft, partitions or the network,
//! and no other crate knows RocksDB: everything above talks to [`Engine`].
//!
//! Durability (docs/ARCHITECTURE.md, "Invariants"):
//! - `write` writes the batch to the WAL without syncing it, so it is readable at once.
//! - `on_durable` queues its callback for the flusher thread, named `flotilla-flusher`,
//!   which takes every queued callback, syncs the WAL once (`flush_wal(true)`), and
//!   completes them all with the result. One fsync covers everything written before it.
//! - `write_durable` writes with `sync = true`, for rare writes such as a Raft vote.
//! - The WAL is recovered in `TolerateCorruptedTailRecords` mode: a final record cut
//!   short (a write torn by a crash, never synced) is dropped, so after a crash the
//!   database holds a prefix of the batches written, which is what the contract asks; a
//!   record that fails its checksum is corruption of data that may have been synced, and
//!   `open` fails with [`StorageError::Corruption`] rather than drop what follows it.
//!   The modes compared, measured: `tests::wal_recovery_modes_on_a_torn_tail_and_on_a_corrupt_middle`
//!   and docs/operating.md.

#![allow(clippy::disallowed_methods, reason = "the RocksDB engine runs on real threads and is never simulated")]

#[cfg(test)]
mod tests;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use flotilla_storage::DurableCallback;
use flotilla_storage::Engine;
use flotilla_storage::EngineSizes;
use flotilla_storage::KeyValue;
use flotilla_storage::Op;
use flotilla_storage::StorageError;
use flotilla_storage::WriteBatch;
use rocksdb::DB;
use rocksdb::DBCompressionType;
use rocksdb::DBRecoveryMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::WriteOptions;

/// Name of the thread that syncs the WAL and completes durability callbacks.
pub const FLUSHER_THREAD_NAME: &str = "flotilla-flusher";
/// `[start, end)` of keys.
type KeyRange = (Vec<u8>, Vec<u8>);

/// Name of the thread that compacts ranges whose keys were deleted (`Engine::compact`).
pub const COMPACTOR_THREAD_NAME: &str = "flotilla-compactor";

/// The memtable size: large enough that a burst of appends does not stall on flushes,
/// small enough that a node's memory stays within its budget (a full memtable is most
/// of what a busy node holds beyond its idle size: docs/perf.md, "The log's lifecycle").
const WRITE_BUFFER_SIZE_BYTES: usize = 32 << 20;
/// Memtables kept before writes stall (one active, the rest flushing).
const MAX_WRITE_BUFFERS: i32 = 4;
/// RocksDB's own info logs to keep (its default is 1,000).
const KEEP_INFO_LOG_FILES: usize = 4;

/// The storage engine of one node, on a RocksDB database in one directory.
///
/// `Send + Sync`: share it between threads by reference or in an `Arc`. Dropping it stops
/// the flusher thread, after it has completed every queued callback, and closes the
/// database without syncing anything else; call [`close`](RocksEngine::close) for a
/// clean shutdown.
///
/// Durability callbacks run on the flusher thread: they must be quick and must not wait
/// for another durability callback (they may call `on_durable`). A callback that panics
/// is a programmer error: the flusher thread stops, later requests fail with
/// [`StorageError::Io`], and the panic is raised again when the engine is dropped.
pub struct RocksEngine {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
    /// `Some` until `drop` joins it.
    flusher_thread: Option<JoinHandle<()>>,
    /// Ranges to compact, for the compactor thread; `None` once `drop` closes it.
    compactions: Mutex<Option<std::sync::mpsc::Sender<KeyRange>>>,
    /// `Some` until `drop` joins it.
    compactor_thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// The queue between `on_durable` and the flusher thread.
struct Flusher {
    queue: Mutex<FlushQueue>,
    /// Signalled when a callback is queued or the engine is dropped.
    wake: Condvar,
    /// WAL syncs the flusher has made, successful or not.
    syncs: AtomicU64,
}

struct FlushQueue {
    /// Callbacks waiting for the next WAL sync, oldest first.
    waiting: Vec<DurableCallback>,
    /// The engine is being dropped: finish the queue, then exit.
    stopping: bool,
    /// False once the flusher thread has exited; later callbacks fail at once.
    running: bool,
}

impl RocksEngine {
    /// Opens the database at `path`, creating it if missing, and starts the flusher.
    pub fn open(path: impl AsRef<Path>) -> Result<RocksEngine, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Arc::new(DB::open(&options(), &path).map_err(storage_error)?);
        let flusher = Arc::new(Flusher {
            queue: Mutex::new(FlushQueue { waiting: Vec::new(), stopping: false, running: true }),
            wake: Condvar::new(),
            syncs: AtomicU64::new(0),
        });
        let flusher_thread = std::thread::Builder::new()
            .name(FLUSHER_THREAD_NAME.to_string())
            .spawn({
                let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
                move || run_flusher(&db, &flusher)
            })
            .map_err(|e| StorageError::Io(format!("cannot start the {FLUSHER_THREAD_NAME} thread: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel::<KeyRange>();
        let compactor_thread = std::thread::Builder::new()
            .name(COMPACTOR_THREAD_NAME.to_string())
            .spawn({
                let db = Arc::clone(&db);
                move || {
                    // Compacting the range rewrites the files that hold it without the
                    // deleted keys: that, not the delete, gives the disk space back.
                    while let Ok((start, end)) = rx.recv() {
                        db.compact_range(Some(&start), Some(&end));
                    }
                }
            })
            .map_err(|e| StorageError::Io(format!("cannot start the {COMPACTOR_THREAD_NAME} thread: {e}")))?;
        Ok(RocksEngine {
            db,
            flusher,
            flusher_thread: Some(flusher_thread),
            compactions: Mutex::new(Some(tx)),
            compactor_thread: Some(compactor_thread),
            path,
        })
    }

    /// Shuts down cleanly: syncs the WAL, so that everything written survives, then
    /// drops the engine.
    pub fn close(self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(storage_error)
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// WAL syncs the flusher thread has made so far: with group commit, usually far fewer
    /// than `on_durable` calls.
    pub fn wal_syncs(&self) -> u64 {
        self.flusher.syncs.load(Ordering::Relaxed)
    }

    fn write_with_sync(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        options.disable_wal(false);
        self.db.write_opt(rocks_batch(batch), &options).map_err(storage_error)
    }
}

/// Options for a log workload: short-lived, mostly appended keys.
fn options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    // Raft entries live briefly; lz4 is cheap enough for every level.
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_write_buffer_size(WRITE_BUFFER_SIZE_BYTES);
    options.set_max_write_buffer_number(MAX_WRITE_BUFFERS);
    // RocksDB writes each batch to the WAL file itself, so an unsynced write survives a
    // process crash, and `flush_wal(true)` only has to sync.
    options.set_manual_wal_flush(false);
    // Tolerate a torn final record (what a crash during an unsynced write leaves: the
    // contract's prefix property) and refuse a corrupt one before the end. PointInTime
    // would stop at a corrupt record and open without the synced records after it (Raft
    // votes among them); AbsoluteConsistency would refuse a torn tail, so a node could
    // not restart after a kill -9. See docs/operating.md.
    options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    options.set_keep_log_file_num(KEEP_INFO_LOG_FILES);
    options
}

/// The RocksDB batch with the same ops, in the same order.
fn rocks_batch(batch: WriteBatch) -> rocksdb::WriteBatch {
    let mut rocks = rocksdb::WriteBatch::default();
    for op in batch.ops {
        match op {
            Op::Put { key, value } => rocks.put(key, value),
            Op::Delete { key } => rocks.delete(key),
            // An empty or inverted range deletes nothing; RocksDB may reject one.
            Op::DeleteRange { start, end } if start >= end => {}
            Op::DeleteRange { start, end } => rocks.delete_range(start, end),
        }
    }
    rocks
}

/// Maps a RocksDB error by its message, the only thing the C API gives.
fn storage_error(error: rocksdb::Error) -> StorageError {
    error_from_message(error.into_string())
}

fn error_from_message(message: String) -> StorageError {
    if message.contains("No space") {
        StorageError::NoSpace(message)
    } else if message.contains("Corruption") {
        StorageError::Corruption(message)
    } else {
        StorageError::Io(message)
    }
}

impl Flusher {
    /// The queue's state is valid at every unlock (callbacks never run under the lock),
    /// so a poisoned lock is safe to use.
    fn lock(&self) -> MutexGuard<'_, FlushQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The flusher thread: waits for callbacks, syncs the WAL once for all of them, and
/// completes them, until the engine is dropped and the queue is empty.
fn run_flusher(db: &DB, flusher: &Flusher) {
    let _stopped = StoppedGuard(flusher);
    loop {
        let group = {
            let mut queue = flusher.lock();
            while queue.waiting.is_empty() && !queue.stopping {
                queue = flusher.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
            if queue.waiting.is_empty() {
                assert!(queue.stopping);
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        assert!(!group.is_empty());
        // Every batch written before these callbacks were queued is in the WAL file.
        let result = db.flush_wal(true).map_err(storage_error);
        flusher.syncs.fetch_add(1, Ordering::Relaxed);
        for done in group {
            done(result.clone());
        }
    }
}

/// Marks the flusher stopped when its thread exits, normally or by a panic, and fails
/// whatever is still queued so that no caller waits forever.
struct StoppedGuard<'a>(&'a Flusher);

impl Drop for StoppedGuard<'_> {
    fn drop(&mut self) {
        let orphans = {
            let mut queue = self.0.lock();
            queue.running = false;
            std::mem::take(&mut queue.waiting)
        };
        for done in orphans {
            done(Err(StorageError::Io(format!("the {FLUSHER_THREAD_NAME} thread stopped"))));
        }
    }
}

impl Drop for RocksEngine {
    fn drop(&mut self) {
        // Closing the channel ends the compactor after the compaction it is running.
        drop(self.compactions.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(thread) = self.compactor_thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
        self.flusher.lock().stopping = true;
        self.flusher.wake.notify_all();
        let Some(thread) = self.flusher_thread.take() else { return };
        if thread.thread().id() == std::thread::current().id() {
            // The last reference was dropped by a callback, on the flusher thread itself:
            // it cannot join itself. It exits on its own once the queue is empty, and
            // keeps the database open until then.
            return;
        }
        if let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
        assert!(!self.flusher.lock().running, "the flusher thread has exited");
        // `db` closes when its last `Arc`, this one, drops.
    }
}

impl Engine for RocksEngine {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_with_sync(batch, false)
    }

    fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // A synced write syncs the whole WAL, so every earlier batch is durable too.
        self.write_with_sync(batch, true)
    }

    fn on_durable(&self, done: DurableCallback) {
        let mut queue = self.flusher.lock();
        if !queue.running {
            drop(queue);
            done(Err(StorageError::Io(format!("the {FLUSHER_THREAD_NAME} thread stopped"))));
            return;
        }
        assert!(!queue.stopping, "on_durable on an engine being dropped");
        queue.waiting.push(done);
        drop(queue);
        self.flusher.wake.notify_one();
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get(key).map_err(storage_error)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut options = ReadOptions::default();
        // The bound stops the iterator at `end` instead of walking tombstones past it.
        options.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.raw_iterator_opt(options);
        iter.seek(start);
        let mut pairs = Vec::new();
        while pairs.len() < limit {
            let Some((key, value)) = iter.item() else { break };
            assert!(start <= key && key < end, "the iterator stays in [start, end)");
            pairs.push((key.to_vec(), value.to_vec()));
            iter.next();
        }
        iter.status().map_err(storage_error)?;
        Ok(pairs)
    }

    fn compact(&self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        if let Some(tx) = self.compactions.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = tx.send((start.to_vec(), end.to_vec()));
        }
    }

    fn sizes(&self) -> EngineSizes {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineSizes {
            files_bytes: int("rocksdb.total-sst-files-size"),
            memory_bytes: int("rocksdb.cur-size-all-mem-tables"),
        }
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let mut options = ReadOptions::default();
        // The bound stops a backward walk at `start` instead of walking into other groups.
        options.set_iterate_lower_bound(start.to_vec());
        let mut iter = self.db.raw_iterator_opt(options);
        // The greatest key <= end; `end` itself is excluded.
        iter.seek_for_prev(end);
        if iter.key() == Some(end) {
            iter.prev();
        }
        let found = match iter.item() {
            Some((key, value)) if start <= key => {
                assert!(key < end, "seek_for_prev lands at or below its target");
                Some((key.to_vec(), value.to_vec()))
            }
            _ => None,
        };
        iter.status().map_err(storage_error)?;
        Ok(found)
    }
}

/// `RocksEngine` must stay shareable between threads, as `Engine` requires.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RocksEngine>();
};
