//! The async runtime openraft runs on: tokio, with the one random choice openraft makes
//! (election timeouts, tick phases) drawn from a seedable source, and channels that
//! allocate only for what they hold ([`crate::lazy_mpsc`]).
//!
//! In production the source is seeded from the operating system once per thread. The
//! deterministic simulation calls [`seed_rng`] on its single thread before it builds a
//! cluster, so a seed fixes every election timeout of the run (design decision 10,
//! docs/decisions.md: no `thread_rng` on simulated paths).

#![allow(
    clippy::disallowed_methods,
    reason = "the runtime adapter is where tokio and the seeded generator are plugged in"
)]

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft_rt::AsyncRuntime;
use openraft_rt::OptionalSend;
use openraft_rt_tokio::TokioRuntime;
use rand010::Rng as _;
use rand010::SeedableRng;
use rand010::rngs::SmallRng;

thread_local! {
    /// The next seed this thread hands out; `None` until first use or [`seed_rng`].
    static NEXT_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Seeds this thread's source of openraft randomness. Every later draw on this thread
/// follows from `seed` alone.
pub fn seed_rng(seed: u64) {
    NEXT_SEED.with(|s| s.set(Some(seed)));
}

/// SplitMix64: a bijective mixer, so distinct counters give distinct, well-spread seeds.
fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next_seed() -> u64 {
    NEXT_SEED.with(|s| {
        let current = s.get().unwrap_or_else(|| {
            // The OS-seeded source only where nobody seeded this thread: production.
            rand010::rng().next_u64()
        });
        let next = splitmix64(current);
        s.set(Some(next));
        next
    })
}

/// [`TokioRuntime`] with a seedable `thread_rng` and lazy channels; everything else is
/// tokio's.
#[derive(Debug)]
pub struct Runtime {
    inner: TokioRuntime,
}

impl AsyncRuntime for Runtime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(next_seed())
    }

    type Mpsc = crate::lazy_mpsc::LazyMpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Runtime { inner: TokioRuntime::new(threads) }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use rand010::RngExt;

    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence() {
        let draw = |seed| {
            seed_rng(seed);
            (0..4).map(|_| Runtime::thread_rng().random::<u64>()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
