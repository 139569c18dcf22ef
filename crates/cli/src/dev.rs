//! `flotilla dev`: a local cluster of node processes on one machine, for trying
//! Flotilla out. Data is kept under `--dir` across restarts.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// How many nodes (1..=7). Up to three, all vote in the metadata group; beyond
    /// three, every node does (the controller-only layout comes with node joining).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = ".flotilla")]
    dir: PathBuf,
    /// Node i listens on 127.0.0.1:(base-port + i - 1).
    #[arg(long, default_value_t = 7070)]
    base_port: u16,
}

struct Running {
    id: u64,
    addr: String,
    log: PathBuf,
    child: Child,
    exited: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 7 {
        bail!("--nodes must be 1..=7, got {}", args.nodes);
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("finding the flotilla binary")?;
    let addr = |i: u64| format!("127.0.0.1:{}", u64::from(args.base_port) + i - 1);
    let peers: Vec<String> = (1..=args.nodes).map(|i| format!("{i}={}", addr(i))).collect();
    let controllers: Vec<String> = (1..=args.nodes).map(|i| i.to_string()).collect();
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let data = args.dir.join(format!("node-{i}"));
        let log = args.dir.join(format!("node-{i}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .args(["--id", &i.to_string(), "--listen", &addr(i)])
            .arg("--data-dir")
            .arg(&data)
            .args(["--peers", &peers.join(","), "--controllers", &controllers.join(",")])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        nodes.push(Running { id: i, addr: addr(i), log, child, exited: false });
    }
    let bootstrap = addr(1);
    println!("Flotilla dev cluster: {} nodes, data in {} (kept across restarts)", args.nodes, args.dir.display());
    for n in &nodes {
        println!("  node {}  {}  pid {}  log {}", n.id, n.addr, n.child.id().unwrap_or(0), n.log.display());
    }
    match wait_ready(&bootstrap, args.nodes as usize, Duration::from_secs(60)).await {
        Ok(leader) => println!("Ready: metadata leader is node {leader}."),
        Err(e) => println!("Not ready yet ({e}); see the node logs."),
    }
    println!();
    println!("Bootstrap address: {bootstrap}");
    println!("Next, in another terminal:");
    println!("  flotilla topic create demo --partitions 6 --replication-factor 3");
    println!("  seq 1 1000 | flotilla produce demo");
    println!("  flotilla consume demo --from-beginning --max 10");
    println!("  flotilla cluster describe");
    println!("Ctrl-C stops every node.");

    let signal = tokio::spawn(crate::node_cmd::wait_for_signal());
    loop {
        if signal.is_finished() {
            break;
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("stopping {} nodes", nodes.iter().filter(|n| !n.exited).count());
    for n in nodes.iter().filter(|n| !n.exited) {
        if let Some(pid) = n.child.id() {
            // SIGTERM: each node shuts down gracefully and syncs its storage.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut().filter(|n| !n.exited) {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, n.child.wait()).await.is_err() {
            println!("node {} did not stop in time; killing it", n.id);
            let _ = n.child.kill().await;
        }
    }
    Ok(())
}

async fn wait_ready(bootstrap: &str, nodes: usize, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match flotilla_client::Client::connect(bootstrap).await {
            Ok(client) => match client.describe_cluster().await {
                Ok(c) if c.brokers.len() >= nodes && c.metadata_leader.is_some() => {
                    return Ok(c.metadata_leader.unwrap_or(0));
                }
                Ok(c) => last = format!("{} of {nodes} nodes registered", c.brokers.len()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("{last}")
}
