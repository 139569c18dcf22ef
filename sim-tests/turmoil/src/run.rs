//! One seeded run: build the cluster, run the workload under the fault schedule, heal,
//! let the cluster converge, drain every partition, and judge the history.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_testkit::checker::{self, Verdict};
use flotilla_testkit::history::{Event, History, NEMESIS_PROCESS as NEMESIS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::nemesis::{self, Active, CLIENT, Schedule};
use crate::workload::{self, Plan};

/// Simulated time at which faults may start, and by which they stop.
const FAULTS_FROM: Duration = Duration::from_secs(4);
const FAULTS_UNTIL: Duration = Duration::from_secs(24);
/// How long after the last heal the cluster has to serve every partition again.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);
/// Turmoil's network latency range outside Delay faults.
const LATENCY_MAX: Duration = Duration::from_millis(20);

/// What a run produced.
pub struct Outcome {
    pub seed: u64,
    pub verdict: Verdict,
    /// Replica-divergence anomalies, on top of the history's.
    pub replica_anomalies: Vec<checker::Anomaly>,
    /// Set when the run could not finish (a host failed, the workload never converged).
    pub error: Option<String>,
    pub digest: u64,
    pub sim_time: Duration,
    pub trace: Vec<String>,
    pub history: History,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.verdict.is_valid() && self.replica_anomalies.is_empty()
    }
}

/// FNV-1a, 64 bits: the trace digest. Stable across builds and platforms.
#[derive(Clone, Copy)]
pub struct Digest(u64);

impl Digest {
    pub fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }
    pub fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Runs `seed`. Deterministic: the same seed on the same build gives the same trace.
pub fn run(seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    // openraft's election timeouts, on this thread, follow from the seed too.
    flotilla_raft::rt::seed_rng(rng.random());
    // A disk that syncs every 1 to 20 ms: fast SSD to slow disk.
    let flush_every = Duration::from_millis(rng.random_range(1..=20));
    let cluster = Cluster::new(3, flush_every);
    let schedule = Schedule::draw(&mut rng, FAULTS_FROM, FAULTS_UNTIL);
    let plan = Plan::draw(&mut rng, FAULTS_UNTIL);
    let history = Arc::new(Mutex::new(History::new()));
    let mut trace = vec![format!(
        "seed {seed}: faults {:?}; {} producers ({} retrying), {} consumers; disks sync every {} ms",
        schedule.enabled,
        plan.producers,
        plan.retrying_producers,
        plan.consumers,
        flush_every.as_millis()
    )];

    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.random())
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(LATENCY_MAX)
        .tcp_capacity(65_536)
        .build();
    cluster.install(&mut sim);
    let done = Arc::new(Mutex::new(None::<Result<(), String>>));
    {
        let history = history.clone();
        let done = done.clone();
        let plan = plan.clone();
        let cluster_size = cluster.size;
        sim.client(CLIENT, async move {
            let result = workload::run(plan, cluster_size, history).await;
            *done.lock().expect("done poisoned") = Some(result);
            Ok(())
        });
    }

    let mut active: Option<(Active, Duration)> = None;
    let mut next_fault = schedule.start + Duration::from_millis(rng.random_range(0..2000));
    let mut healed = false;
    let mut error = None;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                error = Some(format!("simulation failed: {e}"));
                break;
            }
        }
        let now = sim.elapsed();
        if let Some((_, until)) = &active
            && now >= *until
        {
            let (a, _) = active.take().expect("active");
            let note = nemesis::heal(a, &mut sim, &cluster, LATENCY_MAX);
            if !note.is_empty() {
                record(&history, &mut trace, now, Event::heal(NEMESIS, ms(now), note));
            }
        }
        if active.is_none() && now >= next_fault && now < schedule.end {
            let kind = *rand::seq::IndexedRandom::choose(schedule.enabled.as_slice(), &mut rng).expect("a fault");
            let (note, nodes, a) = nemesis::inject(kind, &mut sim, &cluster, &mut rng);
            record(&history, &mut trace, now, Event::fault(NEMESIS, ms(now), note, nodes));
            // Every fault ends by the end of the fault phase, so convergence gets its full time.
            let lasts = Duration::from_millis(rng.random_range(300..5000)).min(schedule.end - now);
            active = Some((a, now + lasts));
            next_fault = now + lasts + Duration::from_millis(rng.random_range(0..2000));
        }
        if !healed && now >= schedule.end && active.is_none() {
            healed = true;
            record(&history, &mut trace, now, Event::heal(NEMESIS, ms(now), "all faults healed"));
            trace.push(format!("{:>8} leaders {}", ms(now), cluster.leaders()));
        }
        if healed && now > schedule.end + CONVERGE_BOUND + workload::DRAIN_BOUND {
            error = Some(format!(
                "no convergence: the workload had not drained {} s after the heal",
                (CONVERGE_BOUND + workload::DRAIN_BOUND).as_secs()
            ));
            break;
        }
    }
    let sim_time = sim.elapsed();
    if error.is_none() {
        match done.lock().expect("done poisoned").take() {
            Some(Ok(())) => {}
            Some(Err(e)) => error = Some(format!("workload failed: {e}")),
            None => error = Some("workload did not finish".into()),
        }
    }
    let replica_anomalies = checker::check_replicas(&cluster.replica_logs());
    let history = std::mem::take(&mut *history.lock().expect("history poisoned"));
    let verdict = checker::check(&history);
    // Liveness: after the heal, producers kept sending for the convergence phase; every
    // partition they sent to must have acknowledged something again.
    let stalled = &verdict.liveness.partitions_without_ack_after_heal;
    if error.is_none() && !stalled.is_empty() {
        let names: Vec<String> = stalled.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        error = Some(format!("no progress after the heal: no send acknowledged on {}", names.join(", ")));
    }
    let mut digest = Digest::new();
    for line in &trace {
        digest.add(line.as_bytes());
    }
    digest.add(history.to_jsonl().as_bytes());
    // Dropping the simulation drops every host's runtime; do it before the next run.
    drop(sim);
    Outcome { seed, verdict, replica_anomalies, error, digest: digest.value(), sim_time, trace, history }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn record(history: &Mutex<History>, trace: &mut Vec<String>, now: Duration, event: Event) {
    let mut line = String::new();
    let _ = write!(line, "{:>8} {:?} {}", ms(now), event.op, event.note);
    trace.push(line);
    history.lock().expect("history poisoned").push(event);
}
