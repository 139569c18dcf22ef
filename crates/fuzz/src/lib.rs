//! A small mutation fuzzer that runs on the stable toolchain, for every decoder that reads
//! bytes Flotilla did not write itself in this process: protobuf requests and their
//! conversion to domain types, record batches, node-to-node messages and replies, stored
//! log entries, votes and keys, metadata commands, and the node's config file. The targets
//! are in `tests/targets.rs`; `make test` runs each for a bounded number of cases and
//! `make fuzz` for many more.
//!
//! Each target starts from valid encodings (its seeds) and feeds the decoder mutations of
//! them: flipped bits, bytes set to boundary values, lengths overwritten with huge
//! varints, chunks cut, duplicated or spliced from another seed, and random bytes. A case
//! fails if the decoder panics or if any single allocation during the run exceeds the
//! target's documented limit ([`CountingAlloc`], installed as the test binary's global
//! allocator). A failure prints the seed and case that replay it:
//! `FLOTILLA_FUZZ_SEED=S FLOTILLA_FUZZ_CASE=N cargo test … -- TARGET`.
//!
//! Environment: `FLOTILLA_FUZZ_CASES` (cases per target, default 3000),
//! `FLOTILLA_FUZZ_SEED` (default: derived from the target's name, so a run repeats),
//! `FLOTILLA_FUZZ_CASE` (run that one case only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cases per target when `FLOTILLA_FUZZ_CASES` is not set.
pub const CASES_DEFAULT: u64 = 3000;

/// The largest input a mutation makes, in bytes.
pub const INPUT_BYTES_MAX: usize = 64 * 1024;

/// The system allocator, recording the largest single allocation asked for.
pub struct CountingAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The largest single allocation since the last call (then starts counting again).
/// Process-wide: tests that check it run one at a time (`serial`).
pub fn take_largest_allocation() -> usize {
    LARGEST.swap(0, Ordering::Relaxed)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// A stable 64-bit hash of a name (FNV-1a), so a target's default seed never changes.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Mutates seeds into fuzz inputs.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator { rng: StdRng::seed_from_u64(seed) }
    }

    /// One input: a seed (or random bytes) with one to eight mutations.
    pub fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        if seeds.is_empty() || self.rng.random_ratio(1, 20) {
            let n = self.rng.random_range(0..256);
            return (0..n).map(|_| self.rng.random()).collect();
        }
        let mut b = seeds[self.rng.random_range(0..seeds.len())].clone();
        for _ in 0..self.rng.random_range(1..=8) {
            self.mutate(&mut b, seeds);
        }
        b.truncate(INPUT_BYTES_MAX);
        b
    }

    fn mutate(&mut self, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        const BOUNDARY: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xff];
        let at = |rng: &mut StdRng, b: &Vec<u8>| if b.is_empty() { 0 } else { rng.random_range(0..b.len()) };
        match self.rng.random_range(0..9) {
            0 if !b.is_empty() => {
                let i = at(&mut self.rng, b);
                b[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = at(&mut self.rng, b);
                b[i] = BOUNDARY[self.rng.random_range(0..BOUNDARY.len())];
            }
            2 => {
                // A huge length where a length may be: a bincode u64 varint, a protobuf
                // varint of ten bytes, or four 0xff bytes.
                let i = at(&mut self.rng, b);
                let huge: Vec<u8> = match self.rng.random_range(0..3) {
                    0 => std::iter::once(0xfd).chain((u64::MAX >> self.rng.random_range(0..8)).to_le_bytes()).collect(),
                    1 => vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                    _ => vec![0xff; 4],
                };
                let end = (i + huge.len()).min(b.len());
                b.splice(i..end, huge);
            }
            3 if !b.is_empty() => {
                let i = at(&mut self.rng, b);
                let n = self.rng.random_range(1..=16.min(b.len() - i));
                b.drain(i..i + n);
            }
            4 if !b.is_empty() => {
                let i = at(&mut self.rng, b);
                let n = self.rng.random_range(1..=64.min(b.len() - i));
                let chunk = b[i..i + n].to_vec();
                let j = at(&mut self.rng, b);
                b.splice(j..j, chunk);
            }
            5 => {
                let other = &seeds[self.rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let from = self.rng.random_range(0..other.len());
                    let i = at(&mut self.rng, b);
                    b.truncate(i);
                    b.extend_from_slice(&other[from..]);
                }
            }
            6 => {
                let n = self.rng.random_range(0..=b.len());
                b.truncate(n);
            }
            7 => {
                let i = at(&mut self.rng, b);
                let n = self.rng.random_range(1..16);
                let junk: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                b.splice(i..i, junk);
            }
            _ if !b.is_empty() => {
                let i = at(&mut self.rng, b);
                b[i] = b[i].wrapping_add(self.rng.random_range(1..=4)).wrapping_sub(2);
            }
            _ => b.push(self.rng.random()),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub cases: u64,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    pub largest_allocation: usize,
}

/// Runs `target` on mutations of `seeds` (see the crate doc for the environment).
/// `target` answers whether it accepted the input. Panics, with the replay command, if
/// the target panics or allocates more than `allocation_max` bytes at once.
pub fn run(name: &str, seeds: &[Vec<u8>], allocation_max: usize, mut target: impl FnMut(&[u8]) -> bool) -> Report {
    let cases = env_u64("FLOTILLA_FUZZ_CASES").unwrap_or(CASES_DEFAULT);
    let seed = env_u64("FLOTILLA_FUZZ_SEED").unwrap_or_else(|| name_seed(name));
    let only = env_u64("FLOTILLA_FUZZ_CASE");
    let mut mutator = Mutator::new(seed);
    let mut report = Report { cases: 0, accepted: 0, largest_allocation: 0 };
    // The seeds themselves first: each must be accepted, or the target is mis-wired.
    take_largest_allocation();
    for (i, s) in seeds.iter().enumerate() {
        assert!(target(s), "{name}: seed {i} ({} bytes) is refused; the target or its seeds are wrong", s.len());
    }
    for case in 0..cases {
        let input = mutator.input(seeds);
        if only.is_some_and(|c| c != case) {
            continue;
        }
        take_largest_allocation();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let largest = take_largest_allocation();
        let replay = format!("FLOTILLA_FUZZ_SEED={seed} FLOTILLA_FUZZ_CASE={case}");
        match outcome {
            Err(_) => {
                panic!("{name}: case {case} panicked on {} bytes {:02x?}; replay with {replay}", input.len(), input)
            }
            Ok(accepted) => report.accepted += u64::from(accepted),
        }
        assert!(
            largest <= allocation_max,
            "{name}: case {case} allocated {largest} bytes at once (limit {allocation_max}) on {:02x?}; replay with {replay}",
            input
        );
        report.largest_allocation = report.largest_allocation.max(largest);
        report.cases += 1;
    }
    eprintln!(
        "fuzz {name}: {} cases, {} accepted, largest allocation {} bytes, seed {seed}",
        report.cases, report.accepted, report.largest_allocation
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_repeat_for_a_seed_and_differ_across_seeds() {
        let seeds = vec![b"hello, world".to_vec(), vec![1, 2, 3, 4, 5, 6, 7, 8]];
        let a: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7);
            (0..50).map(|_| m.input(&seeds)).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7);
            (0..50).map(|_| m.input(&seeds)).collect()
        };
        let c: Vec<Vec<u8>> = {
            let mut m = Mutator::new(8);
            (0..50).map(|_| m.input(&seeds)).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().any(|x| !seeds.contains(x)), "no input was mutated");
    }

    #[test]
    #[should_panic(expected = "panicked on")]
    fn a_panicking_decoder_is_reported() {
        run("panics", &[vec![1, 2, 3]], usize::MAX, |b| {
            assert!(b.len() == 3 && b[0] == 1, "not the seed");
            true
        });
    }
}
