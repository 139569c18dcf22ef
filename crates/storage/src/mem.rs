//! `MemEngine`: an in-memory [`Engine`] with a crash model, for deterministic simulation.
//!
//! It keeps two things: the durable state, and the batches written since the last sync.
//! A sync (`on_durable`, `write_durable`) folds those batches into the durable state. A
//! simulated power loss keeps a prefix of them (a torn tail) and drops the rest, which is
//! exactly the freedom the [`Engine`] contract gives a real engine.
//!
//! It owns no threads, reads no clock and draws no random numbers: every choice (which
//! prefix survives, when a sync fails) is the simulator's, through the crash-model methods.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use crate::DurableCallback;
use crate::Engine;
use crate::KeyValue;
use crate::Op;
use crate::StorageError;
use crate::WriteBatch;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine with a crash model.
///
/// Sharing: `MemEngine` is a handle; `clone` is cheap and every clone sees the same
/// state (one `Arc<Mutex<_>>` inside). The simulator keeps one clone to crash the node
/// and hands another to the node's code.
///
/// `on_durable` syncs at once and calls its callback before it returns, so group commit
/// degenerates to one sync per request; that is enough for a simulation, whose interest
/// is in what survives a crash, not in how fast.
///
/// Crash model:
/// - [`power_loss`](MemEngine::power_loss) drops unsynced batches except a prefix; the
///   same value then behaves as the reopened engine.
/// - [`fail_syncs`](MemEngine::fail_syncs) makes every sync fail and nothing durable.
/// - [`fail_writes_no_space`](MemEngine::fail_writes_no_space) makes every write fail
///   with [`StorageError::NoSpace`] and apply nothing.
///
/// Faults stay armed across a power loss until the simulator disarms them.
#[derive(Clone, Default)]
pub struct MemEngine {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    /// What survives any power loss.
    durable: Map,
    /// What reads see: `durable` with every batch of `unsynced` applied in order.
    visible: Map,
    /// Batches written since the last successful sync, oldest first.
    unsynced: Vec<WriteBatch>,
    fail_syncs: bool,
    no_space: bool,
    /// Group commit: `on_durable` callbacks wait here for the next [`MemEngine::sync_deferred`].
    deferred: Option<Vec<DurableCallback>>,
}

impl MemEngine {
    /// An empty engine with no faults armed.
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    /// Simulates a power loss and the reopen after it: every unsynced batch is lost except
    /// the first `keep_unsynced` of them (a torn tail: the disk kept a prefix of what it
    /// was given). The surviving batches are durable from now on; a `keep_unsynced` at or
    /// above [`unsynced_batches`](MemEngine::unsynced_batches) keeps everything (a
    /// process crash that the operating system survived).
    pub fn power_loss(&self, keep_unsynced: usize) {
        let mut state = self.lock();
        let keep = keep_unsynced.min(state.unsynced.len());
        let unsynced = std::mem::take(&mut state.unsynced);
        for batch in &unsynced[..keep] {
            apply(&mut state.durable, batch);
        }
        state.visible = state.durable.clone();
        assert!(state.unsynced.is_empty());
        // Whoever waited for a sync is gone with the process.
        if let Some(waiting) = state.deferred.as_mut() {
            waiting.clear();
        }
    }

    /// While `on`, every sync fails: `on_durable` calls back with
    /// `Err(StorageError::Io(_))`, `write_durable` applies its batch as an unsynced write
    /// and returns `Err(StorageError::Io(_))`, and nothing becomes durable.
    pub fn fail_syncs(&self, on: bool) {
        self.lock().fail_syncs = on;
    }

    /// While `on`, `write` and `write_durable` return `Err(StorageError::NoSpace(_))` and
    /// apply nothing. Syncs still work.
    pub fn fail_writes_no_space(&self, on: bool) {
        self.lock().no_space = on;
    }

    /// Switches to group commit, as a real engine's flusher does it: from now on
    /// `on_durable` only queues its callback, and the simulator's flusher task calls
    /// [`sync_deferred`](MemEngine::sync_deferred) every few milliseconds to sync once
    /// and call every queued callback. Writes thus stay unsynced for a while, which is
    /// the window a power loss can cut into. A power loss drops the queued callbacks.
    pub fn defer_syncs(&self) {
        let mut state = self.lock();
        if state.deferred.is_none() {
            state.deferred = Some(Vec::new());
        }
    }

    /// Syncs once and calls every callback queued since the last call (see
    /// [`defer_syncs`](MemEngine::defer_syncs)). Returns how many it called.
    pub fn sync_deferred(&self) -> usize {
        let (result, waiting) = {
            let mut state = self.lock();
            let waiting = state.deferred.as_mut().map(std::mem::take).unwrap_or_default();
            if waiting.is_empty() {
                return 0;
            }
            (state.sync(), waiting)
        };
        let n = waiting.len();
        // The lock is released: the callbacks may call back into the engine.
        for done in waiting {
            done(result.clone());
        }
        n
    }

    /// How many batches were written since the last successful sync: the batches a power
    /// loss may drop.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().unsynced.len()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // Poisoning means a panic while the state was being changed: a programmer error.
        self.inner.lock().expect("MemEngine state poisoned by an earlier panic")
    }
}

impl MemState {
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        if self.no_space {
            return Err(StorageError::NoSpace("MemEngine: fail_writes_no_space is armed".to_string()));
        }
        apply(&mut self.visible, &batch);
        self.unsynced.push(batch);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.fail_syncs {
            return Err(StorageError::Io("MemEngine: fail_syncs is armed".to_string()));
        }
        for batch in std::mem::take(&mut self.unsynced) {
            apply(&mut self.durable, &batch);
        }
        assert_eq!(self.durable.len(), self.visible.len(), "a sync makes the visible state durable");
        Ok(())
    }
}

/// Applies the ops of `batch` to `map`, in order.
fn apply(map: &mut Map, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            Op::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            Op::Delete { key } => {
                map.remove(key);
            }
            Op::DeleteRange { start, end } => {
                if start < end {
                    let doomed: Vec<Vec<u8>> =
                        map.range::<[u8], _>(bounds(start, end)).map(|(k, _)| k.clone()).collect();
                    for key in doomed {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

/// The range `[start, end)`, for `BTreeMap::range`. `start < end`, or `range` panics.
fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    assert!(start < end);
    (Bound::Included(start), Bound::Excluded(end))
}

impl Engine for MemEngine {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.lock().write(batch)
    }

    fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.write(batch)?;
        state.sync()
    }

    fn on_durable(&self, done: DurableCallback) {
        let result = {
            let mut state = self.lock();
            if let Some(waiting) = state.deferred.as_mut() {
                waiting.push(done);
                return;
            }
            state.sync()
        };
        // The lock is released: the callback may call back into the engine.
        done(result);
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().visible.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let state = self.lock();
        let pairs: Vec<KeyValue> = state
            .visible
            .range::<[u8], _>(bounds(start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(pairs.len() <= limit);
        Ok(pairs)
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let state = self.lock();
        Ok(state.visible.range::<[u8], _>(bounds(start, end)).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::conformance;

    /// Crashes by a power loss that keeps no unsynced batch: the harshest the contract
    /// allows.
    struct MemHarness;

    impl conformance::Harness for MemHarness {
        type E = MemEngine;
        fn open(&mut self) -> MemEngine {
            MemEngine::new()
        }
        fn crash_and_reopen(&mut self, engine: MemEngine) -> MemEngine {
            engine.power_loss(0);
            engine
        }
        fn clean_reopen(&mut self, engine: MemEngine) -> MemEngine {
            engine.power_loss(usize::MAX);
            engine
        }
    }

    #[test]
    fn conformance_suite_passes() {
        conformance::run_all(&mut MemHarness);
    }

    fn numbered(i: u8) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(vec![b'k', i], vec![i]).put(b"last".to_vec(), vec![i]);
        batch
    }

    fn sync(engine: &MemEngine) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::channel();
        engine.on_durable(Box::new(move |r| tx.send(r).expect("receiver alive")));
        // MemEngine calls back before on_durable returns.
        rx.try_recv().expect("MemEngine calls back synchronously")
    }

    #[test]
    fn torn_tail_keeps_exactly_the_first_k_unsynced_batches() {
        for k in 0..=5u8 {
            let engine = MemEngine::new();
            engine.write(numbered(0)).unwrap();
            sync(&engine).unwrap();
            for i in 1..=5 {
                engine.write(numbered(i)).unwrap();
            }
            assert_eq!(engine.unsynced_batches(), 5);
            engine.power_loss(usize::from(k));
            assert_eq!(engine.unsynced_batches(), 0);
            for i in 0..=5u8 {
                let expect = (i <= k).then(|| vec![i]);
                assert_eq!(engine.get(&[b'k', i]).unwrap(), expect, "k={k} i={i}");
            }
            assert_eq!(engine.get(b"last").unwrap(), Some(vec![k]));
            // The survivors are durable now: a second power loss keeps them.
            engine.power_loss(0);
            assert_eq!(engine.get(b"last").unwrap(), Some(vec![k]));
        }
    }

    #[test]
    fn deferred_syncs_wait_for_the_flusher_and_die_with_a_power_loss() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let engine = MemEngine::new();
        engine.defer_syncs();
        let called = Arc::new(AtomicUsize::new(0));
        for i in 0..2 {
            engine.write(numbered(i)).unwrap();
            let c = called.clone();
            engine.on_durable(Box::new(move |r| {
                r.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert_eq!(called.load(Ordering::SeqCst), 0, "nothing is durable before the flusher runs");
        assert_eq!(engine.unsynced_batches(), 2);
        assert_eq!(engine.sync_deferred(), 2);
        assert_eq!(called.load(Ordering::SeqCst), 2);
        assert_eq!(engine.unsynced_batches(), 0);

        engine.write(numbered(2)).unwrap();
        let c = called.clone();
        engine.on_durable(Box::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        engine.power_loss(0);
        assert_eq!(engine.sync_deferred(), 0, "the waiter died with the power");
        assert_eq!(called.load(Ordering::SeqCst), 2);
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![1]));
    }

    #[test]
    fn power_loss_beyond_the_tail_keeps_everything() {
        let engine = MemEngine::new();
        for i in 0..3 {
            engine.write(numbered(i)).unwrap();
        }
        engine.power_loss(10);
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![2]));
    }

    #[test]
    fn fail_syncs_makes_nothing_durable_and_errors() {
        let engine = MemEngine::new();
        engine.write(numbered(0)).unwrap();
        sync(&engine).unwrap();
        engine.fail_syncs(true);
        engine.write(numbered(1)).unwrap();
        assert!(matches!(sync(&engine), Err(StorageError::Io(_))));
        assert!(matches!(engine.write_durable(numbered(2)), Err(StorageError::Io(_))));
        // Writes still apply and are visible, but none is durable.
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![2]));
        assert_eq!(engine.unsynced_batches(), 2);
        engine.power_loss(0);
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![0]));
        assert_eq!(engine.get(&[b'k', 1]).unwrap(), None);
        // Disarmed, syncs work again.
        engine.fail_syncs(false);
        engine.write(numbered(3)).unwrap();
        sync(&engine).unwrap();
        engine.power_loss(0);
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![3]));
    }

    #[test]
    fn no_space_applies_nothing() {
        let engine = MemEngine::new();
        engine.write(numbered(0)).unwrap();
        engine.fail_writes_no_space(true);
        assert!(matches!(engine.write(numbered(1)), Err(StorageError::NoSpace(_))));
        assert!(matches!(engine.write_durable(numbered(2)), Err(StorageError::NoSpace(_))));
        assert_eq!(engine.get(&[b'k', 1]).unwrap(), None);
        assert_eq!(engine.get(&[b'k', 2]).unwrap(), None);
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![0]));
        assert_eq!(engine.unsynced_batches(), 1);
        // Syncs still work while the disk is full.
        sync(&engine).unwrap();
        assert_eq!(engine.unsynced_batches(), 0);
        engine.fail_writes_no_space(false);
        engine.write(numbered(3)).unwrap();
        assert_eq!(engine.get(b"last").unwrap(), Some(vec![3]));
    }

    #[test]
    fn clones_share_state() {
        let engine = MemEngine::new();
        let other = engine.clone();
        engine.write(numbered(7)).unwrap();
        assert_eq!(other.get(b"last").unwrap(), Some(vec![7]));
        other.power_loss(0);
        assert_eq!(engine.get(b"last").unwrap(), None);
    }

    /// An engine that acknowledges durability without syncing, to show the suite notices.
    struct Forgetful(MemEngine);

    impl Engine for Forgetful {
        fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.0.write(batch)
        }
        fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.0.write(batch)
        }
        fn on_durable(&self, done: DurableCallback) {
            done(Ok(()))
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

    struct ForgetfulHarness;

    impl conformance::Harness for ForgetfulHarness {
        type E = Forgetful;
        fn open(&mut self) -> Forgetful {
            Forgetful(MemEngine::new())
        }
        fn crash_and_reopen(&mut self, engine: Forgetful) -> Forgetful {
            engine.0.power_loss(0);
            engine
        }
        fn clean_reopen(&mut self, engine: Forgetful) -> Forgetful {
            engine.0.power_loss(usize::MAX);
            engine
        }
    }

    #[test]
    #[should_panic(expected = "case `durable_data_survives_crash` failed")]
    fn the_suite_catches_an_engine_that_does_not_sync() {
        conformance::run_one(&mut ForgetfulHarness, "durable_data_survives_crash");
    }

    #[test]
    #[should_panic(expected = "case `crash_keeps_a_prefix_with_every_durable_batch` failed")]
    fn the_suite_catches_a_lost_durable_batch() {
        conformance::run_one(&mut ForgetfulHarness, "crash_keeps_a_prefix_with_every_durable_batch");
    }
}
