//! One seeded run: build the cluster, run the workload under the fault schedule, heal,
//! let the cluster converge, drain every partition, and judge the history.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_testkit::checker::{self, Verdict};
use flotilla_testkit::history::{Event, History, NEMESIS_PROCESS as NEMESIS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::cluster::Control;
use crate::nemesis::{self, Active, CLIENT, Schedule};
use crate::profile::Profile;
use crate::workload::{self, Plan};

/// Simulated time at which faults may start, and by which they stop.
const FAULTS_FROM: Duration = Duration::from_secs(4);
const FAULTS_UNTIL: Duration = Duration::from_secs(24);
/// How long after the last heal the cluster has to serve every partition again.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);
/// Controller profile: how long after the convergence phase every move must have
/// finished and the cluster be at rest (`Cluster::settled`).
const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// How often the run checks whether the cluster is at rest, and undrains a node left
/// draining after the heal.
const SETTLE_CHECK_EVERY: Duration = Duration::from_millis(250);
const UNDRAIN_EVERY: Duration = Duration::from_secs(1);
/// Controller profile: how often the trace records what the controller has recorded
/// (node states, moves), when it changed.
const VIEW_EVERY: Duration = Duration::from_millis(100);
/// Turmoil's network latency range outside Delay faults.
const LATENCY_MAX: Duration = Duration::from_millis(20);

/// What a run produced.
pub struct Outcome {
    pub seed: u64,
    pub profile: Profile,
    pub verdict: Verdict,
    /// Replica-divergence anomalies, on top of the history's.
    pub replica_anomalies: Vec<checker::Anomaly>,
    /// Set when the run could not finish (a host failed, the workload never converged).
    pub error: Option<String>,
    pub digest: u64,
    pub sim_time: Duration,
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

/// Runs `seed` with `profile`. Deterministic: the same seed and profile on the same build
/// give the same trace. The classic profile draws exactly what it drew before the
/// controller profile existed, so its regression seeds replay the same schedules.
pub fn run(seed: u64, profile: Profile, live: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    // openraft's election timeouts, on this thread, follow from the seed too.
    flotilla_raft::rt::seed_rng(rng.random());
    // A disk that syncs every 1 to 20 ms: fast SSD to slow disk.
    let flush_every = Duration::from_millis(rng.random_range(1..=20));
    let cluster = Cluster::new(profile, flush_every);
    let schedule = Schedule::draw(&mut rng, profile, FAULTS_FROM, FAULTS_UNTIL);
    let mut plan = Plan::draw(&mut rng, FAULTS_UNTIL);
    let settled = Arc::new(AtomicBool::new(false));
    if profile.settles() {
        plan.settled = Some(settled.clone());
    }
    let history = Arc::new(Mutex::new(History::new()));
    let mut trace = Trace { lines: Vec::new(), live };
    trace.push(format!(
        "seed {seed}: faults {:?}; {} producers ({} retrying), {} consumers; disks sync every {} ms",
        schedule.enabled,
        plan.producers,
        plan.retrying_producers,
        plan.consumers,
        flush_every.as_millis()
    ));
    if profile != Profile::Classic {
        let nodes: Vec<String> = cluster.ids().map(|id| format!("n{id} {}", profile.zone(id))).collect();
        trace.push(format!(
            "profile {profile}: nodes {}; metadata voters {:?}; grace period {} ms",
            nodes.join(", "),
            profile.controllers(),
            profile.dead_after_ms().unwrap_or_default()
        ));
    }

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
    // Controller profile: when the cluster came to rest, and the next checks.
    let settle_from = schedule.end + workload::CONVERGE;
    let mut settled_at: Option<Duration> = None;
    let mut next_settle_check = settle_from;
    // The heal's own undrain first gets a moment to apply.
    let mut next_undrain = schedule.end + UNDRAIN_EVERY * 2;
    let mut unsettled = String::new();
    let (mut next_view, mut last_view) = (Duration::ZERO, String::new());
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
        for note in cluster.take_notes() {
            trace.push(note);
        }
        if profile == Profile::Controller && now >= next_view {
            next_view = now + VIEW_EVERY;
            if let Some(view) = cluster.controller_view()
                && view != last_view
            {
                trace.push(format!("{:>8} controller: {view}", ms(now)));
                last_view = view;
            }
        }
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
            if let Some(kind) = schedule.pick(&mut rng, schedule.end - now) {
                let (note, nodes, a) = nemesis::inject(kind, &mut sim, &cluster, &mut rng);
                record(&history, &mut trace, now, Event::fault(NEMESIS, ms(now), note, nodes));
                // Every fault ends by the end of the fault phase, so convergence gets its full time.
                let lasts = schedule.duration(kind, &mut rng).min(schedule.end - now);
                active = Some((a, now + lasts));
                next_fault = now + lasts + Duration::from_millis(rng.random_range(0..2000));
            } else {
                next_fault = schedule.end;
            }
        }
        if !healed && now >= schedule.end && active.is_none() {
            healed = true;
            record(&history, &mut trace, now, Event::heal(NEMESIS, ms(now), "all faults healed"));
            trace.push(format!("{:>8} leaders {}", ms(now), cluster.leaders()));
        }
        if !profile.settles() {
            if healed && now > schedule.end + CONVERGE_BOUND + workload::DRAIN_BOUND {
                error = Some(format!(
                    "no convergence: the workload had not drained {} s after the heal",
                    (CONVERGE_BOUND + workload::DRAIN_BOUND).as_secs()
                ));
                break;
            }
            continue;
        }
        // A drain whose answer came after its undrain leaves the node draining: once
        // every fault is healed, no node may stay so.
        if healed && settled_at.is_none() && now >= next_undrain {
            next_undrain = now + UNDRAIN_EVERY;
            for node in cluster.draining() {
                let (through, sent) = nemesis::send_admin(&cluster, node, Control::Undrain { node });
                trace.push(format!("{:>8} n{node} left draining: undrain through {through} (sent: {sent})", ms(now)));
            }
        }
        if healed && settled_at.is_none() && now >= next_settle_check {
            next_settle_check = now + SETTLE_CHECK_EVERY;
            match cluster.settled() {
                Ok(layout) => {
                    settled_at = Some(now);
                    settled.store(true, Ordering::SeqCst);
                    trace.push(format!(
                        "{:>8} at rest {} ms after the convergence phase: {layout}",
                        ms(now),
                        ms(now - settle_from)
                    ));
                    trace.push(format!("{:>8} leaders {}", ms(now), cluster.leaders()));
                }
                Err(why) => {
                    if why != unsettled {
                        trace.push(format!("{:>8} not at rest: {why}", ms(now)));
                        unsettled = why;
                    }
                    if now > settle_from + SETTLE_BOUND {
                        error = Some(format!(
                            "no rest: {} s after the convergence phase the cluster still moves: {unsettled}",
                            SETTLE_BOUND.as_secs()
                        ));
                        break;
                    }
                }
            }
        }
        if let Some(at) = settled_at
            && now > at + workload::DRAIN_BOUND + Duration::from_secs(10)
        {
            error = Some(format!(
                "no convergence: the workload had not drained {} s after the cluster came to rest",
                (workload::DRAIN_BOUND + Duration::from_secs(10)).as_secs()
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
    for line in &trace.lines {
        digest.add(line.as_bytes());
    }
    digest.add(history.to_jsonl().as_bytes());
    // Dropping the simulation drops every host's runtime; do it before the next run.
    drop(sim);
    Outcome { seed, profile, verdict, replica_anomalies, error, digest: digest.value(), sim_time, history }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The run's trace: the fault schedule as applied, admin answers, the controller's view.
/// Live (a replay), each line is printed as it is recorded, so a run that a panic stops
/// still shows what led to it.
struct Trace {
    lines: Vec<String>,
    live: bool,
}

impl Trace {
    fn push(&mut self, line: String) {
        if self.live {
            println!("trace {line}");
        }
        self.lines.push(line);
    }
}

fn record(history: &Mutex<History>, trace: &mut Trace, now: Duration, event: Event) {
    let mut line = String::new();
    let _ = write!(line, "{:>8} {:?} {}", ms(now), event.op, event.note);
    trace.push(line);
    history.lock().expect("history poisoned").push(event);
}
