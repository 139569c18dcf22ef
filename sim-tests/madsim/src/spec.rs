//! What one seed runs: every parameter of the run is drawn here, from the simulation's
//! seeded RNG, before anything starts, and printed with the seed so a failure report
//! says what the run was.

use std::fmt;
use std::time::Duration;

use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use madsim::rand::Rng;

/// The cluster is three voters: every group has a replica on each.
pub const NODES: [NodeId; 3] = [1, 2, 3];

/// Just over the partition groups' shortest election timeout (1.5 s of a randomised
/// 1.5–3 s, set in `node::run`): a pause longer than this lets the others elect a new
/// leader, sooner or later.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1600);

/// After the faults stop, every group must take a write within this much simulated time.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

/// After that, every replica must have applied the same log within this much more.
pub const CATCH_UP_BOUND: Duration = Duration::from_secs(15);

/// What a node waits for a write to commit (`Group::write`'s timeout). Longer than the
/// longest pause, so a leader frozen in the middle of a write answers it after it wakes:
/// the case the pause fault is there to test.
pub const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// What a client waits for an answer, longer than the server's own timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);

/// The parameters of one run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Partition groups `1..=partitions`; group 0 is the metadata group.
    pub partitions: u64,
    /// Concurrent client writers.
    pub writers: usize,
    /// How long faults are injected.
    pub faults_for: Duration,
    /// Mean time between two faults.
    pub fault_every: Duration,
    /// At most this many faults at once.
    pub faults_at_once: usize,
    /// The group-commit window of every node's disk.
    pub flush_window: Duration,
    /// One-way message latency range.
    pub latency: (Duration, Duration),
    /// The packet loss rate a loss fault sets.
    pub loss_max: f64,
    /// One write in this many goes to the metadata group.
    pub metadata_every: u32,
}

impl Spec {
    /// Draws a run from the simulation's RNG.
    pub fn draw() -> Spec {
        let mut rng = madsim::rand::thread_rng();
        let slow_net = rng.gen_bool(0.3);
        Spec {
            partitions: rng.gen_range(1..=3),
            writers: rng.gen_range(2..=6),
            faults_for: Duration::from_millis(rng.gen_range(6_000..=16_000)),
            fault_every: Duration::from_millis(rng.gen_range(300..=2_000)),
            faults_at_once: rng.gen_range(1..=2),
            flush_window: Duration::from_millis(rng.gen_range(0..=10)),
            latency: if slow_net {
                (Duration::from_millis(1), Duration::from_millis(rng.gen_range(20..=80)))
            } else {
                (Duration::from_millis(1), Duration::from_millis(10))
            },
            loss_max: rng.gen_range(0.01..0.3),
            metadata_every: rng.gen_range(4..=12),
        }
    }

    /// A fixed, fault-free run for scenario tests.
    pub fn quiet(partitions: u64) -> Spec {
        Spec {
            partitions,
            writers: 0,
            faults_for: Duration::ZERO,
            fault_every: Duration::from_secs(1),
            faults_at_once: 0,
            flush_window: Duration::from_millis(2),
            latency: (Duration::from_millis(1), Duration::from_millis(10)),
            loss_max: 0.0,
            metadata_every: u32::MAX,
        }
    }

    /// Every group, the metadata group first.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + use<> {
        std::iter::once(METADATA_GROUP).chain(1..=self.partitions)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partitions={} writers={} faults_for={:?} fault_every={:?} faults_at_once={} flush_window={:?} \
             latency={:?}..{:?} loss_max={:.2} metadata_every={}",
            self.partitions,
            self.writers,
            self.faults_for,
            self.fault_every,
            self.faults_at_once,
            self.flush_window,
            self.latency.0,
            self.latency.1,
            self.loss_max,
            self.metadata_every
        )
    }
}
