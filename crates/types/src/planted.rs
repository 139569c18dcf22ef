//! Known bugs that the simulation suite plants, one at a time, to prove it finds them
//! (a test of the tests; docs/simulation.md).
//!
//! Nothing in the product arms a bug: no flag, setting or environment variable reaches
//! [`arm`]. Only the simulator calls it, in its own process. Disarmed, each check is
//! one relaxed atomic load on the path it guards.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The log store reports an append durable before the engine synced it.
    AckBeforeFlush = 1,
    /// The log store writes the vote without waiting for it to be durable.
    ForgetVote = 2,
    /// Fetch serves the leader's log past the commit index.
    FetchPastCommit = 3,
    /// The first batch a partition applies in a new term is applied twice.
    DoubleApply = 4,
    /// The partition appends an idempotent producer's batch without checking its
    /// sequence, so a retried batch is written twice.
    SkipSequenceCheck = 5,
    /// A consumer group accepts a commit from any member id at any epoch, so a member
    /// evicted (a paused process) overwrites the group's progress from a stale generation.
    StaleGroupCommit = 6,
}

impl Bug {
    pub const ALL: [Bug; 6] = [
        Bug::AckBeforeFlush,
        Bug::ForgetVote,
        Bug::FetchPastCommit,
        Bug::DoubleApply,
        Bug::SkipSequenceCheck,
        Bug::StaleGroupCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFlush => "ack-before-flush",
            Bug::ForgetVote => "forget-vote",
            Bug::FetchPastCommit => "fetch-past-commit",
            Bug::DoubleApply => "double-apply",
            Bug::SkipSequenceCheck => "skip-sequence-check",
            Bug::StaleGroupCommit => "stale-group-commit",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

static ARMED: AtomicU8 = AtomicU8::new(0);

/// Arms `bug` for the whole process, or disarms every bug with `None`.
pub fn arm(bug: Option<Bug>) {
    ARMED.store(bug.map_or(0, |b| b as u8), Ordering::SeqCst);
}

/// Whether `bug` is armed.
#[inline]
pub fn armed(bug: Bug) -> bool {
    ARMED.load(Ordering::Relaxed) == bug as u8
}
