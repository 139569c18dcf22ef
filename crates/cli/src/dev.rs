//! `flotilla dev`: a local cluster of node processes on one machine, for trying
//! Flotilla out. Data is kept under `--dir` across restarts. The first three nodes vote
//! in the metadata group; any further ones are learners that only host partitions.
//! Nodes talk to each other over mutual TLS, with a certificate authority and node
//! certificates made in `--dir`/certs at the first start (`flotilla certs`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The most nodes `flotilla dev` starts.
const DEV_NODES_MAX: u64 = 64;
/// Node i serves metrics on its gRPC port plus this.
const METRICS_PORT_OFFSET: u64 = 1000;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// How many nodes (1..=64). The first three vote in the metadata group; the others
    /// are learners.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = ".flotilla")]
    dir: PathBuf,
    /// Node i listens for clients on 127.0.0.1:(base-port + i - 1), for other nodes on
    /// that port plus 100, and serves metrics on that port plus 1000.
    #[arg(long, default_value_t = 7070)]
    base_port: u16,
    /// Zones to spread the nodes over: node i is in zone zones[(i - 1) % len] (region
    /// "local"). Default: no zones.
    #[arg(long, value_delimiter = ',')]
    zones: Vec<String>,
    /// A node not heard from for this long is dead and its replicas are re-created
    /// elsewhere.
    #[arg(long, default_value_t = flotilla_node::NodeConfig::default().dead_after_ms)]
    dead_after_ms: u64,
    /// Clients connect over TLS too (node certificates good for 127.0.0.1); client
    /// commands then need `--tls-ca DIR/certs/ca.pem`.
    #[arg(long)]
    client_tls: bool,
}

impl DevArgs {
    /// The gRPC and metrics addresses of node `i`; checked by [`DevArgs::check`].
    fn addrs(&self, i: u64) -> (String, String) {
        let port = u64::from(self.base_port) + i - 1;
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", port + METRICS_PORT_OFFSET))
    }

    /// Node `i`'s node-to-node address (the node's default: its client port + 100).
    fn rpc_addr(&self, i: u64) -> String {
        let port = u64::from(self.base_port) + i - 1 + u64::from(flotilla_node::config::RPC_PORT_OFFSET);
        format!("127.0.0.1:{port}")
    }

    /// Every node's gRPC address, comma-separated: what clients bootstrap from.
    fn bootstrap(&self) -> String {
        (1..=self.nodes).map(|i| self.addrs(i).0).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s zone, when zones were given.
    fn zone(&self, i: u64) -> Option<&str> {
        (!self.zones.is_empty()).then(|| self.zones[((i - 1) % self.zones.len() as u64) as usize].as_str())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.nodes > DEV_NODES_MAX {
            bail!("--nodes must be 1..={DEV_NODES_MAX}, got {}", self.nodes);
        }
        let last_metrics_port = u64::from(self.base_port) + self.nodes - 1 + METRICS_PORT_OFFSET;
        if self.base_port == 0 || last_metrics_port > u64::from(u16::MAX) {
            bail!(
                "--base-port {}: the ports {}..={last_metrics_port} (gRPC, then metrics) must fit in 1..=65535",
                self.base_port,
                self.base_port
            );
        }
        if let Some(z) = self.zones.iter().find(|z| z.trim().is_empty() || z.contains(char::is_whitespace)) {
            bail!("--zones: {z:?} is not a zone name");
        }
        Ok(())
    }
}

struct Running {
    id: u64,
    addr: String,
    metrics: String,
    log: PathBuf,
    child: Child,
    exited: bool,
}

/// The signals that stop `flotilla dev` and every node it started, whenever they come.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// How the start of the cluster ended.
enum Startup {
    Ready(anyhow::Result<u64>),
    /// A node exited before the cluster was ready (index into the nodes).
    Exited(usize, std::process::ExitStatus),
    Signal(&'static str),
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    args.check()?;
    // Listening before the first node starts: a signal at any moment stops every node
    // started so far.
    let mut signals = Signals::listen()?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("finding the flotilla binary")?;
    let mut nodes = Vec::new();
    if let Err(e) = start_nodes(&args, &exe, &mut nodes) {
        stop(&mut nodes, &mut signals).await;
        return Err(e);
    }
    let bootstrap = args.bootstrap();
    let ca = args.dir.join("certs").join("ca.pem");
    let client_tls = match args.client_tls {
        true => Some(flotilla_client::ClientTls::from_files(&ca, None)?),
        false => None,
    };
    println!("Flotilla dev cluster: {} nodes, data in {} (kept across restarts)", args.nodes, args.dir.display());
    println!(
        "  nodes talk to each other over mutual TLS (certificates in {}){}",
        args.dir.join("certs").display(),
        if args.client_tls { "; clients too" } else { "" }
    );
    for n in &nodes {
        let zone = args.zone(n.id).map(|z| format!("  zone {z}")).unwrap_or_default();
        println!(
            "  node {}  {}{zone}  metrics http://{}/metrics  pid {}  log {}",
            n.id,
            n.addr,
            n.metrics,
            n.child.id().unwrap_or(0),
            n.log.display()
        );
    }
    let startup = tokio::select! {
        r = wait_ready(&bootstrap, args.nodes as usize, client_tls.clone(), Duration::from_secs(60)) => Startup::Ready(r),
        (i, status) = first_exit(&mut nodes) => Startup::Exited(i, status),
        s = signals.recv() => Startup::Signal(s),
    };
    match startup {
        Startup::Ready(Ok(leader)) => {
            println!("Ready: every node has registered and is alive; metadata leader is node {leader}.")
        }
        Startup::Ready(Err(e)) => println!("Not ready yet ({e}); see the node logs."),
        Startup::Exited(i, status) => {
            let n = &nodes[i];
            let why = last_error(&n.log).unwrap_or_else(|| format!("exited ({status})"));
            eprintln!("node {} did not start: {why}", n.id);
            eprintln!("the end of its log ({}):\n{}", n.log.display(), log_tail(&n.log, 10));
            let (id, addr) = (n.id, n.addr.clone());
            stop(&mut nodes, &mut signals).await;
            bail!("node {id} ({addr}) did not start: {why}");
        }
        Startup::Signal(s) => {
            println!("{s} while starting");
            stop(&mut nodes, &mut signals).await;
            return Ok(());
        }
    }
    println!();
    println!("Bootstrap addresses: {bootstrap}");
    if bootstrap.split(',').all(|a| crate::DEFAULT_BOOTSTRAP.split(',').any(|d| d == a)) {
        println!("  (the CLI's default: flotilla commands find this cluster without --bootstrap)");
    } else {
        println!("  (not the CLI's default; in other terminals: export FLOTILLA_BOOTSTRAP={bootstrap})");
    }
    if args.client_tls {
        println!("Clients connect over TLS: in other terminals, export FLOTILLA_TLS_CA={}", ca.display());
    }
    println!("Next, in another terminal:");
    println!("  flotilla topic create demo --partitions 6 --replication-factor 3");
    println!("  seq 1 1000 | flotilla produce demo");
    println!("  flotilla consume demo -n 10");
    println!("  flotilla cluster describe");
    println!("  flotilla cluster health");
    println!("  curl -s http://{}/metrics", nodes[0].metrics);
    println!("The console: http://{}/", nodes[0].metrics);
    println!("Ctrl-C stops every node.");

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let signal = loop {
        tokio::select! {
            s = signals.recv() => break s,
            _ = tick.tick() => {}
        }
        for n in nodes.iter_mut().filter(|n| !n.exited) {
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = true;
                println!("node {} exited ({status}); the others keep running. Its log: {}", n.id, n.log.display());
            }
        }
        if nodes.iter().all(|n| n.exited) {
            bail!("every node has exited; see the logs in {}", args.dir.display());
        }
    };
    println!("{signal}");
    stop(&mut nodes, &mut signals).await;
    Ok(())
}

/// Starts every node, pushing each onto `nodes` as it starts.
fn start_nodes(args: &DevArgs, exe: &std::path::Path, nodes: &mut Vec<Running>) -> anyhow::Result<()> {
    let peers: Vec<String> = (1..=args.nodes).map(|i| format!("{i}={}", args.rpc_addr(i))).collect();
    let certs = dev_certs(args)?;
    for i in 1..=args.nodes {
        let data = args.dir.join(format!("node-{i}"));
        let log = args.dir.join(format!("node-{i}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let (grpc, metrics) = args.addrs(i);
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .args(["--id", &i.to_string(), "--listen", &grpc, "--rpc-listen", &args.rpc_addr(i)])
            .arg("--data-dir")
            .arg(&data)
            .arg("--rpc-tls-ca")
            .arg(certs.join("ca.pem"))
            .arg("--rpc-tls-cert")
            .arg(certs.join(format!("node-{i}.pem")))
            .arg("--rpc-tls-key")
            .arg(certs.join(format!("node-{i}.key")))
            .args(["--peers", &peers.join(",")])
            .args(["--dead-after-ms", &args.dead_after_ms.to_string(), "--metrics-listen", &metrics]);
        if let Some(zone) = args.zone(i) {
            cmd.args(["--zone", zone]);
        }
        if args.client_tls {
            cmd.arg("--tls-cert").arg(certs.join(format!("node-{i}.pem")));
            cmd.arg("--tls-key").arg(certs.join(format!("node-{i}.key")));
        }
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe. The node gets SIGTERM when
        // the thread that started it (dev's main thread) ends, even by SIGKILL.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("flotilla dev exited"));
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        nodes.push(Running { id: i, addr: grpc, metrics, log, child, exited: false });
    }
    Ok(())
}

/// The certificates of the dev cluster's node-to-node TLS, in `--dir`/certs: the
/// authority, made with a new cluster id at the first start, and each node's
/// certificate, made when missing. Returns the directory.
fn dev_certs(args: &DevArgs) -> anyhow::Result<PathBuf> {
    let dir = args.dir.join("certs");
    let nodes: Vec<u64> = (1..=args.nodes).collect();
    // Good for 127.0.0.1 too, the host clients dial (with --client-tls).
    crate::certs::init(&dir, &nodes, None, &["127.0.0.1".into(), "localhost".into()])?;
    Ok(dir)
}

/// The first node to exit, and how.
async fn first_exit(nodes: &mut [Running]) -> (usize, std::process::ExitStatus) {
    loop {
        for (i, n) in nodes.iter_mut().enumerate() {
            if !n.exited
                && let Ok(Some(status)) = n.child.try_wait()
            {
                n.exited = true;
                return (i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM to every node still running (each shuts down gracefully and syncs its
/// storage); SIGKILL to those still running after 10 s, or at once on another signal.
async fn stop(nodes: &mut [Running], signals: &mut Signals) {
    let running: Vec<&mut Running> = nodes.iter_mut().filter(|n| !n.exited).collect();
    if running.is_empty() {
        return;
    }
    println!("stopping {} nodes", running.len());
    for n in &running {
        if let Some(pid) = n.child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut hurry = false;
    for n in running {
        if !hurry {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                r = tokio::time::timeout(left, n.child.wait()) => {
                    if r.is_ok() {
                        n.exited = true;
                        continue;
                    }
                    println!("node {} did not stop in time; killing it", n.id);
                }
                s = signals.recv() => {
                    println!("{s}: killing the nodes still running");
                    hurry = true;
                }
            }
        }
        let _ = n.child.kill().await;
        n.exited = true;
    }
}

/// The node's own error: the last line of its log that starts with "error:".
fn last_error(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| l.strip_prefix("error: ")).map(str::to_string)
}

/// The last `lines` lines of a log.
fn log_tail(log: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until every node has registered and is alive and the metadata group has a
/// leader (then a topic with replication factor `nodes` can be created); the leader.
async fn wait_ready(
    bootstrap: &str,
    nodes: usize,
    tls: Option<flotilla_client::ClientTls>,
    within: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    let config = flotilla_client::ClientConfig { tls, ..flotilla_client::ClientConfig::default() };
    while Instant::now() < deadline {
        match flotilla_client::Client::connect_with(bootstrap, config.clone()).await {
            Ok(client) => match client.describe_cluster().await {
                Ok(c) => {
                    let alive = c.brokers.iter().filter(|b| b.state == "alive").count();
                    match c.metadata_leader {
                        Some(leader) if alive >= nodes => return Ok(leader),
                        Some(_) => last = format!("{} of {nodes} nodes registered, {alive} alive", c.brokers.len()),
                        None => last = "no metadata leader yet".into(),
                    }
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("{last}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> DevArgs {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            dev: DevArgs,
        }
        Cli::try_parse_from(std::iter::once("dev").chain(args.iter().copied())).unwrap().dev
    }

    #[test]
    fn zones_ports_and_limits() {
        let d = parse(&[]);
        assert_eq!(d.nodes, 3);
        assert_eq!(d.dead_after_ms, flotilla_node::NodeConfig::default().dead_after_ms);
        assert_eq!(d.zone(1), None);
        assert_eq!(d.addrs(2), ("127.0.0.1:7071".to_string(), "127.0.0.1:8071".to_string()));
        d.check().unwrap();

        let d = parse(&["--nodes", "5", "--zones", "a,b,c", "--dead-after-ms", "4000"]);
        assert_eq!((1..=5).map(|i| d.zone(i).unwrap()).collect::<Vec<_>>(), ["a", "b", "c", "a", "b"]);
        assert_eq!(d.dead_after_ms, 4000);
        d.check().unwrap();

        assert!(parse(&["--nodes", "0"]).check().is_err());
        assert!(parse(&["--nodes", "65"]).check().is_err());
        assert!(parse(&["--base-port", "65000"]).check().unwrap_err().to_string().contains("must fit"));
        assert!(parse(&["--zones", "a,,b"]).check().is_err());
    }

    #[test]
    fn the_cli_default_bootstrap_is_the_default_dev_cluster() {
        assert_eq!(parse(&[]).bootstrap(), crate::DEFAULT_BOOTSTRAP);
        assert_eq!(parse(&["--nodes", "2", "--base-port", "9000"]).bootstrap(), "127.0.0.1:9000,127.0.0.1:9001");
    }
}
