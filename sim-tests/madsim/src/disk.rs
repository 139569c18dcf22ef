//! A node's disk: the shared [`MemEngine`] (which survives the node's crashes, as a disk
//! does) behind a group-commit flusher, like the RocksDB engine's.
//!
//! `MemEngine::on_durable` syncs at once, which would leave a power loss nothing to lose.
//! Here durability requests wait for the node's flusher task, which syncs once per
//! group-commit window and then completes every request made before the sync. Entries
//! appended in the meantime are readable but unsynced, so killing the node and calling
//! `MemEngine::power_loss(k)` loses them, or keeps a torn prefix of `k` batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_storage::{DurableCallback, Engine, KeyValue, MemEngine, StorageError, WriteBatch};

/// Requests for durability that wait for the next sync; bounded by what openraft keeps in
/// flight (one per append) between two flushes.
pub struct GroupCommitDisk {
    engine: MemEngine,
    waiting: Mutex<Vec<DurableCallback>>,
    wake: tokio::sync::Notify,
    /// How long the flusher gathers requests before it syncs them all, in milliseconds;
    /// shared with the supervisor, which can make the disk slow.
    window_ms: Arc<AtomicU64>,
}

impl GroupCommitDisk {
    pub fn new(engine: MemEngine, window_ms: Arc<AtomicU64>) -> Arc<GroupCommitDisk> {
        Arc::new(GroupCommitDisk {
            engine,
            waiting: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            window_ms,
        })
    }

    /// The flusher: runs for the life of the node (the node's death drops it, and with it
    /// every request it had not completed: those writes were never acknowledged).
    pub async fn run_flusher(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            let window = self.window_ms.load(Ordering::Relaxed);
            if window > 0 {
                madsim::time::sleep(Duration::from_millis(window)).await;
            }
            let batch = std::mem::take(&mut *self.waiting.lock().expect("disk lock poisoned"));
            if batch.is_empty() {
                continue;
            }
            // One sync covers every request taken above: each was made after the writes
            // it waits for, and the sync makes everything written so far durable.
            self.engine.on_durable(Box::new(move |result| {
                for done in batch {
                    done(result.clone());
                }
            }));
        }
    }
}

impl Engine for GroupCommitDisk {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.engine.write(batch)
    }

    fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // A synchronous write (a vote, a truncation): durable before it returns.
        self.engine.write_durable(batch)
    }

    fn on_durable(&self, done: DurableCallback) {
        self.waiting.lock().expect("disk lock poisoned").push(done);
        self.wake.notify_one();
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(key)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.engine.scan(start, end, limit)
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.engine.last(start, end)
    }
}
