//! A cluster of real node processes on 127.0.0.1.

#![allow(clippy::disallowed_methods, reason = "starts and watches real processes in real time")]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct NodeProc {
    id: u64,
    addr: String,
    /// Its node-to-node listener.
    rpc_addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Extra flags of this node (its zone, `--join`).
    args: Vec<String>,
    metrics: Option<String>,
}

/// How to start a cluster's nodes.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Node `i` (from 1) is in zone `zones[(i - 1) % len]`; no zone when empty.
    pub zones: Vec<String>,
    /// Flags every node gets (for example `--dead-after-ms 4000`).
    pub node_args: Vec<String>,
    /// Serve Prometheus metrics from every node (`metrics_addr`).
    pub metrics: bool,
    /// Nodes `start_with` does not start: they are in every node's `--peers` but stay
    /// down until `restart` starts them (a cluster still forming).
    pub deferred: Vec<u64>,
    /// Node `id`'s data directory when it is not the cluster's own (for example on a
    /// small filesystem the test mounted).
    pub data_dirs: Vec<(u64, PathBuf)>,
    /// Node-to-node traffic without TLS. By default the nodes talk over mutual TLS, with
    /// certificates `flotilla certs` makes in the cluster's directory, as `flotilla dev`
    /// runs them.
    pub plain_rpc: bool,
    /// Clients connect over TLS too: every node's client listener presents its node
    /// certificate (good for 127.0.0.1); clients need `certs_dir()/ca.pem`.
    pub client_tls: bool,
    /// With `client_tls`: every client must present a certificate from the cluster's
    /// authority (`tls-client-ca`).
    pub client_certs: bool,
    /// Environment variables every node gets (for example `FLOTILLA_BOOTSTRAP_PASSWORD`).
    pub node_env: Vec<(String, String)>,
}

/// Real `flotilla node` processes. Every node is killed when this is dropped.
pub struct ProcessCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    peers: String,
    nodes: Vec<NodeProc>,
    options: ClusterOptions,
}

/// Ports that were free a moment ago (bound to port 0, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

impl ProcessCluster {
    /// Starts `n` nodes of the binary at `bin`; returns once they are listening.
    pub fn start(bin: impl AsRef<Path>, n: u64) -> ProcessCluster {
        Self::start_with(bin, n, ClusterOptions::default())
    }

    /// Starts `n` nodes with `options`; returns once they are listening. The first three
    /// are the metadata group's voters; the others become its learners.
    pub fn start_with(bin: impl AsRef<Path>, n: u64, options: ClusterOptions) -> ProcessCluster {
        let dir = tempfile::Builder::new().prefix("flotilla-cluster-").tempdir().expect("temp dir");
        // Every port at once: ports picked in separate calls can repeat, since each call
        // releases what it bound (a metrics listener would then take a node's gRPC port).
        let k = n as usize;
        let per_node = if options.metrics { 3 } else { 2 };
        let ports = free_ports(k * per_node);
        let addrs: Vec<String> = ports[..k].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let rpc_addrs: Vec<String> = ports[k..2 * k].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let metrics_ports = &ports[2 * k..];
        let peers = rpc_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = i as u64 + 1;
                NodeProc {
                    id,
                    addr: a.clone(),
                    rpc_addr: rpc_addrs[i].clone(),
                    data_dir: options
                        .data_dirs
                        .iter()
                        .find(|(n, _)| *n == id)
                        .map_or_else(|| dir.path().join(format!("node-{id}")), |(_, d)| d.clone()),
                    log: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    args: zone_args(&options, id),
                    metrics: options.metrics.then(|| format!("127.0.0.1:{}", metrics_ports[i])),
                }
            })
            .collect();
        let mut c = ProcessCluster { bin: bin.as_ref().to_path_buf(), dir, peers, nodes, options };
        if !c.options.plain_rpc || c.options.client_tls {
            c.certs(&["ca", "--dir"], &[]);
        }
        let started: Vec<u64> = (1..=n).filter(|id| !c.options.deferred.contains(id)).collect();
        for id in &started {
            c.spawn(*id);
        }
        for id in started {
            c.wait_listening(id, Duration::from_secs(30));
        }
        c
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts a new node that joins the running cluster through node 1 (`--join`), in
    /// `zone`; returns its id once it listens.
    pub fn join(&mut self, zone: &str) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let ports = free_ports(3);
        let addr = format!("127.0.0.1:{}", ports[0]);
        let rpc_addr = format!("127.0.0.1:{}", ports[2]);
        let mut args = vec!["--zone".to_string(), zone.to_string(), "--join".to_string(), self.bootstrap()];
        args.extend(self.options.node_args.iter().cloned());
        self.nodes.push(NodeProc {
            id,
            addr,
            rpc_addr,
            data_dir: self.dir.path().join(format!("node-{id}")),
            log: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            args,
            metrics: self.options.metrics.then(|| format!("127.0.0.1:{}", ports[1])),
        });
        self.spawn(id);
        self.wait_listening(id, Duration::from_secs(30));
        id
    }

    /// Runs `flotilla certs ARGS CERTS-DIR EXTRA` (the cluster's certificates).
    fn certs(&self, args: &[&str], extra: &[&str]) {
        let out = Command::new(&self.bin)
            .arg("certs")
            .args(args)
            .arg(self.certs_dir())
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} certs: {e}", self.bin.display()));
        assert!(out.status.success(), "flotilla certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Client `name`'s certificate and key (PEM) from the cluster's authority, made with
    /// `flotilla certs client` when missing, for nodes that require client certificates.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.certs_dir();
        let (cert, key) = (dir.join(format!("client-{name}.pem")), dir.join(format!("client-{name}.key")));
        if !cert.exists() {
            self.certs(&["client", "--name", name, "--ca-dir"], &[]);
        }
        (cert, key)
    }

    /// The `--peers` every node of the initial cluster is started with.
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// Where the cluster's certificate authority and node certificates are.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn spawn(&mut self, id: u64) {
        let bin = self.bin.clone();
        let peers = self.peers.clone();
        let tls = !self.options.plain_rpc;
        let certs = self.certs_dir();
        if (tls || self.options.client_tls) && !certs.join(format!("node-{id}.pem")).exists() {
            self.certs(&["node", "--id", &id.to_string(), "--ca-dir"], &["--name", "127.0.0.1"]);
        }
        let (client_tls, client_certs) = (self.options.client_tls, self.options.client_certs);
        let env = self.options.node_env.clone();
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "node {id} is already running");
        let log = File::options().create(true).append(true).open(&n.log).expect("open node log");
        let joins = n.args.iter().any(|a| a == "--join");
        let mut cmd = Command::new(&bin);
        cmd.arg("node").args(["--id", &id.to_string(), "--listen", &n.addr, "--rpc-listen", &n.rpc_addr]);
        if tls {
            cmd.arg("--rpc-tls-ca").arg(certs.join("ca.pem"));
            cmd.arg("--rpc-tls-cert").arg(certs.join(format!("node-{id}.pem")));
            cmd.arg("--rpc-tls-key").arg(certs.join(format!("node-{id}.key")));
        }
        if client_tls {
            cmd.arg("--tls-cert").arg(certs.join(format!("node-{id}.pem")));
            cmd.arg("--tls-key").arg(certs.join(format!("node-{id}.key")));
            if client_certs {
                cmd.arg("--tls-client-ca").arg(certs.join("ca.pem"));
            }
        }
        if !joins {
            cmd.args(["--peers", &peers]);
        }
        if let Some(m) = &n.metrics {
            cmd.args(["--metrics-listen", m]);
        }
        let child = cmd
            .args(&n.args)
            .arg("--data-dir")
            .arg(&n.data_dir)
            .env("RUST_LOG", std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        n.child = Some(child);
    }

    fn wait_listening(&self, id: u64, within: Duration) {
        let deadline = Instant::now() + within;
        let addr = &self.node(id).addr;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {id} is not listening on {addr} after {within:?}; log:\n{}", self.log_tail(id, 40));
    }

    /// The address of node 1, for clients.
    pub fn bootstrap(&self) -> String {
        self.node(1).addr.clone()
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// Node `id`'s node-to-node address.
    pub fn rpc_addr(&self, id: u64) -> String {
        self.node(id).rpc_addr.clone()
    }

    /// Where node `id` serves `/metrics` (with `ClusterOptions::metrics`).
    pub fn metrics_addr(&self, id: u64) -> Option<String> {
        self.node(id).metrics.clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn id_of_addr(&self, addr: &str) -> Option<u64> {
        self.nodes.iter().find(|n| n.addr == addr).map(|n| n.id)
    }

    /// The process id of node `id`, while this cluster runs it.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// SIGKILL: no chance to sync or clean up.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit (SIGKILL after 15 s).
    pub fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Starts a stopped or killed node again on its data (or a deferred node for the
    /// first time).
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_listening(id, Duration::from_secs(30));
    }

    /// The last `lines` lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where the cluster keeps data and logs (deleted on drop unless FLOTILLA_KEEP=1).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn zone_args(options: &ClusterOptions, id: u64) -> Vec<String> {
    let mut args = Vec::new();
    if !options.zones.is_empty() {
        let zone = &options.zones[(id as usize - 1) % options.zones.len()];
        args.extend(["--zone".to_string(), zone.clone()]);
    }
    args.extend(options.node_args.iter().cloned());
    args
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::env::var("FLOTILLA_KEEP").as_deref() == Ok("1") {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping cluster data in {}", path.display());
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")));
        }
    }
}
