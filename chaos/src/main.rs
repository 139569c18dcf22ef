//! `flotilla-chaos`: Flotilla's chaos suite. Each scenario starts a real cluster of
//! `flotilla node` processes (RocksDB, real fsync), each node in its own network
//! namespace on a bridge; drives a workload through the smart client while testkit's
//! recorder writes the history; injects the scenario's faults on a schedule drawn from
//! the seed (kill -9, SIGSTOP, iptables partitions, a reassignment); heals; drains every
//! partition; and judges the history with testkit's checker. It prints one line per
//! scenario and writes a report (JSON, text, an HTML page with timelines) under the
//! results directory.
//!
//! It knows the node only as a binary and its flags, and the cluster only through the
//! client: nothing here links the node or RocksDB. Every process it starts it stops by
//! PID, and every namespace it creates (with its links and rules) it deletes, after a
//! failure or a signal too (`registry`).

#![allow(clippy::disallowed_methods, reason = "the runner drives real processes in real time")]

mod cluster;
mod net;
mod powerfs;
mod proxy;
mod registry;
mod replicas;
mod report;
mod rng;
mod scenario;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flotilla_client::{Client, ClientConfig, ClientError, ErrorCode};
use flotilla_testkit::{Actor, History, Recorder, check};

use crate::cluster::{Cluster, Disk};
use crate::net::Net;
use crate::report::{FaultRecord, ScenarioReport};
use crate::rng::Rng;
use crate::scenario::{Ctx, Fault, Scenario};

/// Load before the first fault.
const WARMUP: Duration = Duration::from_secs(5);
/// Load after the last heal, before the drain.
const RECOVER: Duration = Duration::from_secs(8);
/// How long a new cluster may take to elect its metadata leader and register its nodes.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The process id the runner's own operations (the topic's creation) are recorded under.
const SETUP_PROCESS: u64 = 900;

#[derive(Parser)]
#[command(name = "flotilla-chaos", about = "Faults against real flotilla nodes, judged by the history checker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenarios (needs root: network namespaces and iptables).
    Run {
        /// `all`, `ci`, or scenario names, comma-separated (see `list`).
        #[arg(long, default_value = "all", value_delimiter = ',')]
        scenario: Vec<String>,
        /// Seed of the fault schedule (default: drawn from the clock, and printed).
        #[arg(long)]
        seed: Option<u64>,
        /// The `flotilla` binary the nodes run.
        #[arg(long, env = "FLOTILLA_CHAOS_BIN")]
        bin: PathBuf,
        /// Where each run's report directory goes.
        #[arg(long, default_value = "chaos/report")]
        results: PathBuf,
        /// Plant a defect to prove a scenario catches it: `lying-fsync` makes the
        /// power-loss filesystem answer fsync without syncing (acknowledged before
        /// durable, as NATS 2.12 did); only scenarios on that filesystem are affected.
        #[arg(long)]
        plant: Option<String>,
        /// Keep the nodes' data directories of passing scenarios too (failing ones are
        /// always kept).
        #[arg(long)]
        keep_data: bool,
    },
    /// Lists the scenarios.
    List,
    /// Removes what an interrupted run left behind: processes in the runner's namespaces
    /// (by PID), the namespaces, their links and rules.
    Cleanup,
}

fn main() {
    // One line, not anyhow's backtrace (RUST_BACKTRACE may be set for the nodes).
    if let Err(e) = main_result() {
        eprintln!("flotilla-chaos: {e:#}");
        std::process::exit(1);
    }
}

fn main_result() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for s in scenario::ALL {
                let ci = if scenario::CI.contains(&s.name) { " [ci]" } else { "" };
                println!("{:<22} {} nodes, {} faults: {}{ci}", s.name, s.nodes, s.cycles, s.about);
            }
            Ok(())
        }
        Command::Cleanup => registry::sweep(),
        Command::Run { scenario, seed, bin, results, plant, keep_data } => {
            let mut scenarios = select(&scenario)?;
            match plant.as_deref() {
                None => {}
                Some("lying-fsync") => {
                    for s in scenarios.iter_mut().filter(|s| s.disk == Disk::PowerFs) {
                        s.disk = Disk::LyingPowerFs;
                    }
                }
                Some(other) => bail!("no planted defect {other:?}; there is: lying-fsync"),
            }
            preflight(&bin)?;
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
            });
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
            rt.block_on(run(scenarios, seed, bin, results, plant, keep_data))
        }
    }
}

fn select(names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    let mut out = vec![];
    for n in names {
        match n.as_str() {
            "all" => out.extend(scenario::ALL.iter().copied()),
            "ci" => out.extend(scenario::CI.iter().filter_map(|n| scenario::find(n))),
            name => match scenario::find(name) {
                Some(s) => out.push(s),
                None => bail!(
                    "no scenario {name:?}; there are: {}",
                    scenario::ALL.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
    Ok(out)
}

fn preflight(bin: &Path) -> anyhow::Result<()> {
    if !bin.is_file() {
        bail!(
            "the flotilla binary {} does not exist: build it with `make build` (or `cargo build -p flotilla-cli`) and pass --bin or FLOTILLA_CHAOS_BIN",
            bin.display()
        );
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("the chaos suite needs root: it creates network namespaces and iptables rules");
    }
    for tool in ["ip", "iptables"] {
        let ok = std::process::Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
        if !ok {
            bail!("`{tool}` is needed (Debian: apt-get install iproute2 iptables)");
        }
    }
    Ok(())
}

/// A name's hash: each scenario draws its own schedule from the run's seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

async fn run(
    scenarios: Vec<Scenario>,
    seed: u64,
    bin: PathBuf,
    results: PathBuf,
    plant: Option<String>,
    keep_data: bool,
) -> anyhow::Result<()> {
    let bin = bin.canonicalize()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_dir = results.join(format!("run-{stamp}"));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let work = std::env::temp_dir().join(format!("{}{}", registry::DATA_DIR_PREFIX, std::process::id()));
    let names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
    let planted = plant.map(|p| format!(" --plant {p}")).unwrap_or_default();
    let command = format!("flotilla-chaos run --scenario {} --seed {seed}{planted}", names.join(","));
    println!("{command}\nreport: {}", run_dir.display());

    let work2 = work.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: stopping every node and deleting the network namespaces");
        registry::emergency();
        let _ = std::fs::remove_dir_all(&work2);
        std::process::exit(130);
    });

    let started = Instant::now();
    let mut reports = vec![];
    for (i, s) in scenarios.iter().enumerate() {
        let dir = run_dir.join(s.name);
        std::fs::create_dir_all(&dir)?;
        let data = work.join(s.name);
        let outcome = run_scenario(s, seed, i, &bin, &dir, &data).await;
        let (report, summary) = match outcome {
            Ok(r) => r,
            Err(e) => failed_setup(s, seed, format!("{e:#}")),
        };
        println!("{}", report.line());
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
        std::fs::write(dir.join("summary.txt"), &summary)?;
        if report.passed && !keep_data {
            let _ = std::fs::remove_dir_all(&data);
        } else {
            println!("  data kept in {}; report in {}", data.display(), dir.display());
        }
        reports.push((report, summary));
        std::fs::write(run_dir.join("index.html"), report::page(&command, &reports))?;
    }
    let passed = reports.iter().filter(|(r, _)| r.passed).count();
    let lines: Vec<String> = reports.iter().map(|(r, _)| r.line()).collect();
    let summary = format!(
        "{command}\n{}\n{passed} of {} scenarios passed in {:.0} s\n",
        lines.join("\n"),
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(run_dir.join("summary.txt"), &summary)?;
    let all: Vec<&ScenarioReport> = reports.iter().map(|(r, _)| r).collect();
    std::fs::write(run_dir.join("report.json"), serde_json::to_string_pretty(&all)?)?;
    let _ = std::fs::remove_dir(&work);
    println!(
        "{passed} of {} scenarios passed in {:.0} s; report: {}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        run_dir.join("index.html").display()
    );
    if passed < reports.len() {
        bail!("{} scenarios failed", reports.len() - passed);
    }
    Ok(())
}

/// The report of a scenario that could not run (a network or a node would not start).
fn failed_setup(s: &Scenario, seed: u64, error: String) -> (ScenarioReport, String) {
    let verdict = check(&History::new());
    let r = report::build(s, seed, &History::new(), &verdict, vec![], vec![error], vec![], 0.0);
    let summary = r.summary(&verdict);
    (r, summary)
}

async fn ready_client(cluster: &Cluster, nodes: usize, seed: u64) -> anyhow::Result<Client> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry_deadline: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        seed: Some(seed),
        ..ClientConfig::default()
    };
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let attempt = async {
            let client = Client::connect_with(&cluster.bootstrap(), config.clone()).await?;
            let info = client.describe_cluster().await?;
            if info.brokers.len() >= nodes && info.metadata_leader.is_some() {
                Ok(client)
            } else {
                Err(ClientError::Closed)
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(c)) => return Ok(c),
            _ if Instant::now() > deadline => bail!("the cluster was not ready within {READY_WITHIN:?}"),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn create_topic(recorder: &Recorder, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let actor = Actor::new(SETUP_PROCESS, 1);
    loop {
        match recorder.create_topic(actor, topic, partitions, 3).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(ErrorCode::TopicExists) => break,
            Err(e) if Instant::now() > deadline => bail!("creating {topic}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    loop {
        if let Ok(t) = recorder.client().describe_topic(topic).await
            && t.partitions.len() == partitions as usize
            && t.partitions.iter().all(|p| p.leader.is_some())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{topic}: not every partition has a leader after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_scenario(
    s: &Scenario,
    seed: u64,
    index: usize,
    bin: &Path,
    dir: &Path,
    data: &Path,
) -> anyhow::Result<(ScenarioReport, String)> {
    let started = Instant::now();
    let pid = std::process::id();
    let tag = format!("{:04x}{:02}", pid & 0xffff, index % 100);
    let subnet = ((pid as usize + index) % 200 + 20) as u8;
    let net = Net::create(&tag, subnet, s.nodes + s.spares)?;
    std::fs::create_dir_all(data)?;
    let proxy = match s.fault.proxied() {
        true => Some(proxy::Proxy::start(&net, s.nodes, cluster::RPC_PORT, seed ^ fnv1a(s.name)).await?),
        false => None,
    };
    let mut cluster = tokio::task::block_in_place(|| {
        let node_args = s.node_args.iter().map(|a| a.to_string()).collect();
        Cluster::start(bin, net, s.nodes, data, dir, node_args, s.disk, s.fault == Fault::ClockSkew)
    })?;
    let client = ready_client(&cluster, s.nodes as usize, seed).await?;
    let recorder = Recorder::new(client.clone());
    let topic = format!("chaos-{}", s.name);
    create_topic(&recorder, &topic, s.partitions).await?;

    let mut rng = Rng::new(seed ^ fnv1a(s.name));
    let load = workload::Workload::start(&recorder, &topic, s.partitions, seed, s.load);
    tokio::time::sleep(WARMUP).await;
    let mut faults = vec![];
    let mut errors = vec![];
    let mut ctx = Ctx {
        cluster: &mut cluster,
        client: &client,
        recorder: &recorder,
        topic: &topic,
        partitions: s.partitions,
        proxy: proxy.as_ref(),
    };
    let nemesis: anyhow::Result<()> = async {
        for _ in 0..s.cycles {
            let injected = s.inject(&mut ctx, &mut rng).await?;
            let rules = ctx.cluster.net().rules();
            let hold = rng.millis(s.fault_ms.0, s.fault_ms.1);
            s.hold(&mut ctx, &injected, hold, &mut rng).await?;
            let healed_ms = recorder.time_ms();
            let did = s.heal(&mut ctx, &injected).await?;
            faults.push(FaultRecord {
                note: did.map_or_else(|| injected.note.clone(), |d| format!("{}; then {d}", injected.note)),
                nodes: injected.nodes.clone(),
                affected: injected.affected.clone(),
                at_ms: injected.at_ms,
                healed_ms,
                rules,
                failover_ms: None,
            });
            for (id, status) in ctx.cluster.exited() {
                errors.push(format!("node {id} exited by itself ({status}): {}", ctx.cluster.log_tail(id, 5)));
            }
            tokio::time::sleep(rng.millis(s.gap_ms.0, s.gap_ms.1)).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = nemesis {
        errors.push(format!("nemesis: {e:#}"));
    }
    if let Err(e) = scenario::heal_all(&mut ctx).await {
        errors.push(format!("heal: {e:#}"));
    }
    tokio::time::sleep(RECOVER).await;
    load.stop().await;
    if let Err(e) = workload::drain(&recorder, &topic, s.partitions, s.load).await {
        errors.push(format!("{e:#}"));
    }
    let replicas = replicas::compare(&client, &cluster, &topic, s.partitions).await;
    for r in &replicas.unreadable {
        errors.push(format!("replica not read: {r}"));
    }
    for (id, status) in cluster.exited() {
        errors.push(format!("node {id} exited by itself ({status}): {}", cluster.log_tail(id, 5)));
    }
    let history = recorder.history();
    history.save(dir.join("history.jsonl")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut verdict = check(&history);
    verdict.anomalies.extend(replicas.anomalies);
    let alarms = cluster.log_alarms();
    let snapshots = cluster.log_count("installed a snapshot from the leader");
    drop(cluster);
    let mut r = report::build(s, seed, &history, &verdict, faults, errors, alarms, started.elapsed().as_secs_f64());
    r.replicas_compared = replicas.read;
    r.notes.push(format!("snapshots installed from a leader: {snapshots}"));
    if let Some(p) = &proxy {
        r.notes.push(format!("connections through the proxy: {}", p.connections()));
    }
    let summary = r.summary(&verdict);
    Ok((r, summary))
}
