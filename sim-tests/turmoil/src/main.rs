//! `flotilla-sim`: tier 1 of Flotilla's simulation suite (docs/simulation.md).
//!
//! ```text
//! flotilla-sim --seed 42            replay one seed and print its full trace
//! flotilla-sim --seed 21 --profile classic
//! flotilla-sim --seeds 300          sweep seeds 1..=300 (plus the regression list)
//! flotilla-sim --seeds 1000 --start 77000 --jobs 2
//! flotilla-sim --plant ack-before-flush --seeds 50 --expect-anomaly
//! ```
//!
//! A run's profile (`--profile`, default `controller`) is the cluster's shape and the
//! fault kinds its schedule is drawn from: `classic` is three nodes and the original
//! thirteen kinds, `controller` four nodes with drain, reassign and node kill added.
//!
//! The real node code (metadata group, partition groups, reconciler, tonic services)
//! runs on turmoil hosts, gRPC over turmoil's TCP, storage on `MemEngine` with its crash
//! model, time from turmoil, every random choice from the seed.

#![allow(clippy::disallowed_methods, reason = "the runner times whole runs in wall time, outside the simulation")]

#[cfg(not(tokio_unstable))]
compile_error!("the simulation needs --cfg tokio_unstable (set in .cargo/config.toml) so tokio's RNG is seeded");

mod cluster;
mod nemesis;
mod net;
mod profile;
mod run;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use flotilla_types::planted::{self, Bug};
use profile::Profile;

#[derive(Parser, Debug)]
#[command(name = "flotilla-sim", about = "Deterministic simulation of a Flotilla cluster under faults")]
struct Args {
    /// Replay one seed and print its full trace (history, faults, node logs).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// The cluster's shape and fault kinds: `controller` (four nodes, drain, reassign,
    /// node kill) or `classic` (three nodes, the original faults). For --seed, --seeds,
    /// --check-determinism and --plant; each regression seed names its own.
    #[arg(long, value_enum, default_value_t = Profile::Controller)]
    profile: Profile,
    /// Runs in parallel (each seed in a process of its own; a run is single-threaded).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Seeds that once failed, replayed by every sweep: `SEED PROFILE` per line.
    #[arg(long, default_value = "sim-tests/turmoil/regressions.txt")]
    regressions: PathBuf,
    /// Plant a known bug (test of the tests): ack-before-flush, forget-vote,
    /// fetch-past-commit, double-apply.
    #[arg(long)]
    plant: Option<String>,
    /// With --plant: succeed when some seed finds an anomaly, and say which. With a
    /// list (e.g. `--expect-anomaly LostWrite,UnseenAtEnd`), only those kinds count;
    /// `LogReversion` and `VoteBehindLog` name a node that stopped on one of openraft's own
    /// safety assertions, `Panic` any other panic.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_delimiter = None)]
    expect_anomaly: Option<String>,
    /// Run one seed twice and compare the trace digests.
    #[arg(long)]
    check_determinism: Option<u64>,
    /// Save the history of a --seed run here (JSON lines), for offline checking.
    #[arg(long)]
    save_history: Option<PathBuf>,
    /// Internal: run one seed and print its outcome as one JSON line. Sweeps run every
    /// seed in a fresh process of its own, exactly as a replay does.
    #[arg(long, hide = true)]
    child: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(name) = &args.plant {
        match Bug::parse(name) {
            Some(bug) => planted::arm(Some(bug)),
            None => {
                eprintln!("unknown bug {name:?}; known: {}", Bug::ALL.map(|b| b.name()).join(", "));
                return ExitCode::from(2);
            }
        }
    }
    if let Some(seed) = args.child {
        let started = Instant::now();
        let o = run::run(seed, args.profile, false);
        let anomalies: Vec<String> =
            o.verdict.anomalies.iter().chain(&o.replica_anomalies).map(|a| a.to_string()).collect();
        let kinds: Vec<String> =
            o.verdict.anomalies.iter().chain(&o.replica_anomalies).map(|a| format!("{:?}", a.kind)).collect();
        let line = serde_json::json!({
            "seed": seed,
            "profile": args.profile.name(),
            "passed": o.passed(),
            "digest": format!("{:016x}", o.digest),
            "line": summary(&o, started.elapsed()),
            "error": o.error,
            "anomalies": anomalies,
            "kinds": kinds,
        });
        println!("{line}");
        return ExitCode::SUCCESS;
    }
    if let Some(seed) = args.check_determinism {
        return check_determinism(seed, &args);
    }
    if let Some(seed) = args.seed {
        return replay(seed, &args);
    }
    sweep(&args)
}

fn replay_command(seed: u64, profile: Profile, args: &Args) -> String {
    match &args.plant {
        Some(bug) => format!("make sim SEED={seed} PROFILE={profile} PLANT={bug}"),
        None => format!("make sim SEED={seed} PROFILE={profile}"),
    }
}

fn summary(o: &run::Outcome, wall: std::time::Duration) -> String {
    let status = if o.passed() { "ok" } else { "FAIL" };
    format!(
        "seed {} {} {status} digest {:016x} sim {:.1}s wall {:.1}s {}",
        o.seed,
        o.profile,
        o.digest,
        o.sim_time.as_secs_f64(),
        wall.as_secs_f64(),
        o.verdict.summary()
    )
}

fn report_failure(o: &run::Outcome, args: &Args) {
    if let Some(e) = &o.error {
        eprintln!("  error: {e}");
    }
    for a in o.verdict.anomalies.iter().chain(&o.replica_anomalies).take(20) {
        eprintln!("  {a}");
    }
    eprintln!("  replay: {}", replay_command(o.seed, o.profile, args));
}

/// Stamps the nodes' log lines with simulated milliseconds, as the trace lines are.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>8}", t.as_millis()),
            None => write!(w, "{:>8}", "-"),
        }
    }
}

fn replay(seed: u64, args: &Args) -> ExitCode {
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn,h2=warn,hyper=warn,tower=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SimTime)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let started = Instant::now();
    // The trace is printed as it is recorded, among the nodes' logs.
    let outcome = run::run(seed, args.profile, true);
    for e in outcome.history.events() {
        println!("event {}", serde_json::to_string(e).expect("event serialises"));
    }
    println!("{}", outcome.verdict);
    if let Some(path) = &args.save_history
        && let Err(e) = outcome.history.save(path)
    {
        eprintln!("could not save the history: {e}");
    }
    println!("{}", summary(&outcome, started.elapsed()));
    if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        report_failure(&outcome, args);
        ExitCode::FAILURE
    }
}

/// Runs `seed` in a fresh process of its own; its outcome line.
fn run_child(seed: u64, profile: Profile, args: &Args) -> Child {
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--child").arg(seed.to_string()).arg("--profile").arg(profile.name()).env_remove("RUST_LOG");
    if let Some(bug) = &args.plant {
        cmd.arg("--plant").arg(bug);
    }
    let started = Instant::now();
    let out = cmd.stderr(std::process::Stdio::piped()).output();
    let wall = started.elapsed();
    let parsed = out.as_ref().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    });
    match parsed {
        Some(v) => Child {
            passed: v["passed"].as_bool().unwrap_or(false),
            digest: v["digest"].as_str().unwrap_or("").to_string(),
            line: v["line"].as_str().unwrap_or("").to_string(),
            details: v["error"]
                .as_str()
                .map(|e| format!("error: {e}"))
                .into_iter()
                .chain(v["anomalies"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)))
                .collect(),
            kinds: v["kinds"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect(),
        },
        None => {
            let stderr = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_else(|e| e.to_string());
            // The first panic is the cause; later ones are the runtime unwinding.
            let lines: Vec<&str> = stderr.lines().collect();
            let panic = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .map(|i| format!("{} {}", lines[i].trim(), lines.get(i + 1).map_or("", |l| l.trim())));
            let (kind, detail) = match panic {
                Some(p) => (panic_kind(&p), format!("PANIC {p}")),
                None => ("Crash", lines.iter().rev().take(5).rev().copied().collect::<Vec<_>>().join(" | ")),
            };
            Child {
                passed: false,
                digest: String::new(),
                line: format!("seed {seed} {profile} FAIL {} after {:.1}s", kind.to_lowercase(), wall.as_secs_f64()),
                details: vec![detail],
                kinds: vec![kind.to_string()],
            }
        }
    }
}

/// Names a node that stopped on one of openraft's own safety assertions after what the
/// assertion caught; any other panic is `Panic`.
fn panic_kind(message: &str) -> &'static str {
    if message.contains("log reversion") {
        // A leader saw a follower's log go back: entries the follower had reported
        // durable were gone.
        "LogReversion"
    } else if message.contains("must GE last_leader_log_ids") {
        // A node's vote is older than leaders recorded in its own log: a vote was lost.
        "VoteBehindLog"
    } else {
        "Panic"
    }
}

/// One seed's outcome, as a child process reported it.
struct Child {
    passed: bool,
    digest: String,
    line: String,
    details: Vec<String>,
    kinds: Vec<String>,
}

/// Runs `seed` twice, each time in a fresh process, and compares the trace digests.
fn check_determinism(seed: u64, args: &Args) -> ExitCode {
    let a = run_child(seed, args.profile, args);
    let b = run_child(seed, args.profile, args);
    println!("seed {seed} ({}): digest {} then {}", args.profile, a.digest, b.digest);
    if !a.digest.is_empty() && a.digest == b.digest {
        println!("determinism: ok");
        ExitCode::SUCCESS
    } else {
        eprintln!("determinism: FAILED; compare the traces of two `{}` runs", replay_command(seed, args.profile, args));
        ExitCode::FAILURE
    }
}

/// The regression list: `SEED PROFILE` per line, `#` starts a comment. A seed listed
/// twice (it caught two bugs) runs once.
fn regressions(args: &Args) -> Result<Vec<(u64, Profile)>, String> {
    let path = args.regressions.display();
    let Ok(text) = std::fs::read_to_string(&args.regressions) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
        let entry = match words.as_slice() {
            [] => continue,
            [seed, profile] => seed.parse().ok().zip(Profile::parse(profile)),
            _ => None,
        };
        let Some(entry) = entry else {
            return Err(format!("{path}:{}: not `SEED classic|controller`: {line:?}", i + 1));
        };
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(out)
}

fn sweep(args: &Args) -> ExitCode {
    let count = args.seeds.unwrap_or(100);
    let mut seeds: Vec<(u64, Profile)> = if args.plant.is_some() {
        Vec::new()
    } else {
        match regressions(args) {
            Ok(list) => list,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    };
    let listed = seeds.len();
    seeds.extend((args.start..args.start + count).map(|s| (s, args.profile)));
    println!(
        "sweeping {} seeds ({listed} from the regression list, {count} {} from {}) on {} threads{}",
        seeds.len(),
        args.profile,
        args.start,
        args.jobs,
        args.plant.as_ref().map(|b| format!(", planted bug {b}")).unwrap_or_default()
    );
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let found = Mutex::new(None::<(u64, Profile, String)>);
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| {
                loop {
                    if args.expect_anomaly.is_some() && found.lock().expect("found").is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(seed, profile)) = seeds.get(i) else { return };
                    let outcome = run_child(seed, profile, args);
                    println!("{}", outcome.line);
                    if !outcome.passed {
                        if let Some(expected) = &args.expect_anomaly {
                            let wanted: Vec<&str> = expected.split(',').filter(|k| !k.is_empty()).collect();
                            let hits: Vec<&String> = outcome
                                .kinds
                                .iter()
                                .filter(|k| wanted.is_empty() || wanted.contains(&k.as_str()))
                                .collect();
                            if !hits.is_empty() {
                                let mut kinds: Vec<&String> = hits.clone();
                                kinds.dedup();
                                // details list the error (if any) first, then one line per kind.
                                let offset = outcome.details.len().saturating_sub(outcome.kinds.len());
                                let first = outcome
                                    .kinds
                                    .iter()
                                    .position(|k| wanted.is_empty() || wanted.contains(&k.as_str()))
                                    .and_then(|i| outcome.details.get(offset + i))
                                    .cloned()
                                    .unwrap_or_default();
                                let what = format!(
                                    "{}: {first}",
                                    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
                                );
                                let mut f = found.lock().expect("found");
                                if f.is_none() {
                                    *f = Some((seed, profile, what));
                                }
                            }
                        } else {
                            for d in outcome.details.iter().take(20) {
                                eprintln!("  {d}");
                            }
                            eprintln!("  replay: {}", replay_command(seed, profile, args));
                        }
                        failures.lock().expect("failures").push((seed, profile));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    let elapsed = started.elapsed().as_secs_f64();
    if args.expect_anomaly.is_some() {
        let bug = args.plant.clone().unwrap_or_default();
        return match found.into_inner().expect("found") {
            Some((seed, profile, what)) => {
                println!("planted bug {bug}: found by seed {seed} ({profile}; {what}) after {elapsed:.0} s");
                ExitCode::SUCCESS
            }
            None => {
                println!("planted bug {bug}: NOT found in {count} {} seeds ({elapsed:.0} s)", args.profile);
                ExitCode::FAILURE
            }
        };
    }
    println!("{} seeds, {} failed, {elapsed:.0} s", seeds.len(), failures.len());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        let mut sorted = failures;
        sorted.sort_unstable();
        let list: Vec<String> = sorted.iter().map(|(s, p)| format!("{s} {p}")).collect();
        println!("failing seeds: {}", list.join(", "));
        ExitCode::FAILURE
    }
}
