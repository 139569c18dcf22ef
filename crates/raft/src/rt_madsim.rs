//! The async runtime openraft runs on in the madsim tier (`--cfg madsim`): tasks, timers
//! and randomness come from madsim, so a madsim seed fixes every election timeout, every
//! message delay and the order in which ready tasks run.
//!
//! `lib.rs` compiles this file as `rt` in place of the tokio runtime (`rt.rs`) when built
//! with `--cfg madsim`; both export the same items. openraft's mpsc, oneshot and mutex
//! stay tokio's (`tokio::sync` runs on any executor). Its watch channel does not: tokio's
//! `watch::Receiver::changed` parks each waiter on one of eight `Notify`s picked by
//! tokio's thread-local RNG, which is seeded from a process-wide counter, so the order
//! in which a send wakes the waiters changes from run to run (madsim's determinism check
//! caught it). [`SimWatch`] is the same channel with one `Notify`: waiters wake in the
//! order they waited. Nothing here starts an OS thread, which madsim refuses.

#![allow(clippy::disallowed_methods, reason = "madsim serves these calls from the simulation")]

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use openraft_rt::AsyncRuntime;
use openraft_rt::OptionalSend;
use openraft_rt::OptionalSync;
use openraft_rt::watch::{RecvError, SendError, Watch, WatchReceiver, WatchSender};
use openraft_rt_tokio::TokioRuntime;
use rand010::SeedableRng;
use rand010::rngs::SmallRng;

/// Kept for parity with the tokio runtime's API. Under madsim every draw already follows
/// from the simulation's seed (`MADSIM_TEST_SEED`), so there is nothing to seed.
pub fn seed_rng(_seed: u64) {}

/// openraft's runtime on madsim. `new`/`block_on` run a fresh simulation with seed 0, for
/// openraft's own test helpers; the simulator itself builds its runtime with a seed.
pub struct Runtime {
    inner: madsim::runtime::Runtime,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("kind", &"madsim").finish()
    }
}

/// A future bounded by a deadline, as `tokio::time::Timeout`: the future is polled
/// first, so one that is ready when the deadline passes still wins.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: madsim::time::Sleep,
}

/// The error of a [`Timeout`] whose deadline passed.
pub type Elapsed = madsim::time::error::Elapsed;

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        // `Sleep` is `Unpin`: it holds a deadline and a handle to the simulated clock.
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(madsim::time::error::Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for Runtime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    // madsim serves `std::time::Instant::now` from the simulated clock.
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // Spawned on the current simulated node: killing the node kills the task.
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout { future: Box::pin(future), sleep: madsim::time::sleep(duration) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Timeout { future: Box::pin(future), sleep: madsim::time::sleep_until(deadline) }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        // One draw from the simulation's seeded RNG (and its determinism log) per use.
        SmallRng::seed_from_u64(madsim::rand::random::<u64>())
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = SimWatch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(_threads: usize) -> Self {
        Runtime { inner: madsim::runtime::Runtime::new() }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    async fn spawn_blocking<F, T>(f: F) -> Result<T, io::Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // No threads in a simulation: the closure runs inline when the future is polled.
        Ok(f())
    }
}

/// openraft's watch channel, deterministic: tokio's without the random choice of
/// `Notify` (see the module documentation). Same semantics: a version counter marks
/// values seen; `send` fails once every receiver is gone; `changed` fails once every
/// sender is gone and the last value was seen.
pub struct SimWatch;

struct WatchShared<T> {
    value: RwLock<T>,
    /// Bumped by every send, under the value's write lock.
    version: AtomicU64,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    closed: AtomicBool,
    changed: tokio::sync::Notify,
}

impl<T> WatchShared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        // A panic while a value was being replaced leaves the old or the new one: both
        // are values the sender meant to publish.
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }

    fn modify(&self, f: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut value = self.value.write().unwrap_or_else(|e| e.into_inner());
            let modified = f(&mut value);
            if modified {
                self.version.fetch_add(1, Ordering::SeqCst);
            }
            modified
        };
        if modified {
            self.changed.notify_waiters();
        }
        modified
    }
}

pub struct SimWatchSender<T> {
    shared: Arc<WatchShared<T>>,
}

pub struct SimWatchReceiver<T> {
    shared: Arc<WatchShared<T>>,
    /// The version this receiver has seen.
    seen: u64,
}

impl<T> Clone for SimWatchSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        SimWatchSender { shared: self.shared.clone() }
    }
}

impl<T> Drop for SimWatchSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.closed.store(true, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

impl<T> Clone for SimWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        SimWatchReceiver { shared: self.shared.clone(), seen: self.seen }
    }
}

impl<T> Drop for SimWatchReceiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watch for SimWatch {
    type Sender<T: OptionalSend + OptionalSync> = SimWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = SimWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(WatchShared {
            value: RwLock::new(init),
            version: AtomicU64::new(0),
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        });
        (SimWatchSender { shared: shared.clone() }, SimWatchReceiver { shared, seen: 0 })
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<SimWatch, T> for SimWatchSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.receivers.load(Ordering::SeqCst) == 0 {
            return Err(SendError(value));
        }
        self.shared.modify(|v| {
            *v = value;
            true
        });
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        self.shared.modify(modify)
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn subscribe(&self) -> SimWatchReceiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        let seen = self.shared.version.load(Ordering::SeqCst);
        SimWatchReceiver { shared: self.shared.clone(), seen }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<SimWatch, T> for SimWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            // Registered before the checks, so a send between them still wakes us.
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::SeqCst);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let value = self.shared.read();
        // Sends bump the version under the write lock, so it is stable while we read.
        self.seen = self.shared.version.load(Ordering::SeqCst);
        value
    }
}
