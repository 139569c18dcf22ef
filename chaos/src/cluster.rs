//! Real `flotilla node` processes, each in its own network namespace of a [`Net`], each
//! on its own RocksDB directory. The runner kills them (SIGKILL), pauses them
//! (SIGSTOP/SIGCONT) and restarts them on their data; every process is stopped by its PID
//! when the cluster is dropped, and registered meanwhile so a signal handler can too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::net::Net;
use crate::powerfs::{DiskFaults, PowerFs};
use crate::registry;

/// The port every node listens on for clients, each in its own namespace.
pub const NODE_PORT: u16 = 7070;
/// The port every node listens on for other nodes (mutual TLS, certificates from
/// `flotilla certs` in the data directory).
pub const RPC_PORT: u16 = NODE_PORT + 100;
/// How long a started node may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);
/// libfaketime (Debian's `faketime` package), the thread-safe build: preloaded into a
/// node, it offsets the wall clock by what the node's clock file says.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Down,
}

struct NodeProc {
    child: Option<Child>,
    paused: bool,
    data_dir: PathBuf,
    log: PathBuf,
    /// A node that joined a running cluster: the address it joins through (instead of
    /// the founding nodes' `--peers`).
    join: Option<String>,
}

/// How the nodes' data directories are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disk {
    /// The host's filesystem.
    Host,
    /// A [`PowerFs`] per node: power loss drops what was not synced.
    PowerFs,
    /// A [`PowerFs`] whose fsync syncs nothing (a planted defect).
    LyingPowerFs,
}

pub struct Cluster {
    /// The nodes that are members now: the founders, plus nodes that joined, less nodes
    /// retired. A node's namespace and directory exist from the start (spares for
    /// replacements included).
    members: Vec<u64>,
    bin: PathBuf,
    net: Net,
    nodes: Vec<NodeProc>,
    peers: String,
    node_args: Vec<String>,
    /// Per node with a [`Disk::PowerFs`]: the filesystem and its mount (unmounted on drop).
    disks: Vec<(PowerFs, fuser::BackgroundSession)>,
    /// With skewed clocks: the file each node's libfaketime reads its offset from.
    clock_files: Option<PathBuf>,
    /// The cluster's certificate authority and every node's certificate.
    certs: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes of `bin` on `net`, data under `data`, logs under `logs`; returns
    /// once every node listens.
    /// With `skewable_clocks`, every node runs under libfaketime reading its wall-clock
    /// offset from a file ([`Cluster::set_clock`]); monotonic time is left alone, as NTP
    /// leaves it.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bin: &Path,
        net: Net,
        n: u64,
        data: &Path,
        logs: &Path,
        node_args: Vec<String>,
        disk: Disk,
        skewable_clocks: bool,
    ) -> anyhow::Result<Cluster> {
        let peers = (1..=n).map(|i| format!("{i}={}:{RPC_PORT}", net.node_ip(i))).collect::<Vec<_>>().join(",");
        // A new authority per run: a new cluster.
        let certs = data.join("certs");
        let _ = std::fs::remove_dir_all(&certs);
        let make = |args: &[String]| -> anyhow::Result<()> {
            let out = Command::new(bin).arg("certs").args(args).output().context("running flotilla certs")?;
            if !out.status.success() {
                bail!("flotilla certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let dir = certs.display().to_string();
        make(&["ca".into(), "--dir".into(), dir.clone()])?;
        for i in 1..=net.nodes() {
            make(&["node".into(), "--id".into(), i.to_string(), "--ca-dir".into(), dir.clone()])?;
        }
        // Spares: the namespaces the network has beyond the founders.
        let nodes = (1..=net.nodes())
            .map(|i| NodeProc {
                child: None,
                paused: false,
                data_dir: data.join(format!("node-{i}")),
                log: logs.join(format!("node-{i}.log")),
                join: None,
            })
            .collect();
        let clock_files = skewable_clocks.then(|| logs.to_path_buf());
        if skewable_clocks && !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: apt-get install faketime");
        }
        let members = (1..=n).collect();
        let mut c = Cluster {
            members,
            bin: bin.to_path_buf(),
            net,
            nodes,
            peers,
            node_args,
            disks: vec![],
            clock_files,
            certs,
        };
        for id in c.ids() {
            c.set_clock(id, 0)?;
        }
        if disk != Disk::Host {
            for id in c.ids() {
                let at = c.node(id).data_dir.clone();
                std::fs::create_dir_all(&at)?;
                let fs = PowerFs::new(disk == Disk::LyingPowerFs);
                registry::add_mount(&at);
                let session =
                    fs.mount(&at).with_context(|| format!("mounting the power-loss filesystem on {}", at.display()))?;
                c.disks.push((fs, session));
            }
        }
        for id in c.ids() {
            c.spawn(id)?;
        }
        for id in c.ids() {
            c.wait_listening(id)?;
        }
        Ok(c)
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The members' ids.
    pub fn ids(&self) -> Vec<u64> {
        self.members.clone()
    }

    /// Starts spare node `id` on an empty directory, joining the cluster through member
    /// `via`, as an operator adds a node; returns once it listens.
    pub fn join(&mut self, id: u64, via: u64) -> anyhow::Result<()> {
        assert!(!self.members.contains(&id), "node {id} is a member already");
        let through = self.addr(via);
        self.node_mut(id).join = Some(through);
        self.members.push(id);
        self.spawn(id)?;
        self.wait_listening(id)
    }

    /// Node `id` is no longer a member (it was removed from the cluster); it must be down.
    pub fn retire(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} retired while it runs");
        self.members.retain(|m| *m != id);
    }

    /// The first spare: a node id past the founders' that never joined.
    pub fn spare(&self) -> Option<u64> {
        (self.founders() + 1..=self.nodes.len() as u64).find(|i| self.node(*i).join.is_none())
    }

    fn founders(&self) -> u64 {
        self.peers.split(',').count() as u64
    }

    /// Damages one file of node `id`'s data directory while the node is down, as a disk
    /// or a stray write would: a bit flipped in the newest WAL, in a table file (SST) or
    /// in the MANIFEST, or a table file cut short. What was done, for the report.
    pub fn corrupt(&self, id: u64, rng: &mut crate::rng::Rng) -> anyhow::Result<String> {
        assert!(self.node(id).child.is_none(), "corrupting node {id}'s files while it runs");
        let mut files = vec![];
        let mut dirs = vec![self.node(id).data_dir.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
                let e = e?;
                let meta = e.metadata()?;
                if meta.is_dir() {
                    dirs.push(e.path());
                } else if meta.len() > 0 {
                    files.push((e.path(), meta.len(), meta.modified().ok()));
                }
            }
        }
        files.sort();
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let wal = |p: &Path| {
            name(p).ends_with(".log") && name(p).trim_end_matches(".log").bytes().all(|b| b.is_ascii_digit())
        };
        let sst = |p: &Path| name(p).ends_with(".sst");
        let manifest = |p: &Path| name(p).starts_with("MANIFEST-");
        // The kinds of damage this directory allows, one drawn evenly among them: 0 a
        // bit of the newest WAL, 1 a bit of a table, 2 a table cut short, 3 a bit of the
        // MANIFEST.
        let of_kind = |kind: u64, p: &Path| match kind {
            0 => wal(p),
            1 | 2 => sst(p),
            _ => manifest(p),
        };
        let kinds: Vec<u64> = (0..4).filter(|k| files.iter().any(|(p, _, _)| of_kind(*k, p))).collect();
        if let Some(&kind) = kinds.get(rng.range(0, kinds.len().max(1) as u64 - 1) as usize) {
            let mut candidates: Vec<&(PathBuf, u64, Option<std::time::SystemTime>)> =
                files.iter().filter(|(p, _, _)| of_kind(kind, p)).collect();
            let (path, len, _) = if kind == 0 {
                // The newest WAL: the one a restart replays.
                candidates.sort_by_key(|(_, _, m)| *m);
                *candidates.last().expect("not empty")
            } else {
                candidates[rng.range(0, candidates.len() as u64 - 1) as usize]
            };
            let shown = path.strip_prefix(&self.node(id).data_dir).unwrap_or(path).display().to_string();
            if kind == 2 {
                let to = rng.range(0, len - 1);
                File::options().write(true).open(path)?.set_len(to)?;
                return Ok(format!("cut {shown} from {len} to {to} bytes"));
            }
            let at = rng.range(0, len - 1);
            let bit = 1u8 << rng.range(0, 7);
            let mut bytes = std::fs::read(path)?;
            bytes[at as usize] ^= bit;
            std::fs::write(path, &bytes)?;
            return Ok(format!("flipped bit {} of byte {at} of {shown} ({len} bytes)", bit.trailing_zeros()));
        }
        bail!("node {id} has no WAL, table or MANIFEST file to damage")
    }

    /// The client address of node `id`.
    pub fn addr(&self, id: u64) -> String {
        format!("{}:{NODE_PORT}", self.net.node_ip(id))
    }

    /// Every node's address, comma-separated: the client's bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.ids().iter().map(|i| self.addr(*i)).collect::<Vec<_>>().join(",")
    }

    pub fn state(&self, id: u64) -> State {
        let n = self.node(id);
        match (&n.child, n.paused) {
            (None, _) => State::Down,
            (Some(_), true) => State::Paused,
            (Some(_), false) => State::Running,
        }
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let addr = self.addr(id);
        let netns_path = format!("/var/run/netns/{}", self.net.netns(id));
        let netns = File::open(&netns_path).with_context(|| format!("opening {netns_path}"))?;
        let (bin, peers, args) = (self.bin.clone(), self.peers.clone(), self.node_args.clone());
        let rpc = format!("{}:{RPC_PORT}", self.net.node_ip(id));
        let certs = self.certs.clone();
        let join = self.node(id).join.clone();
        let clock_file = self.clock_file(id);
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "node {id} is already running");
        let log = File::options().create(true).append(true).open(&n.log).context("opening the node log")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("node").args(["--id", &id.to_string(), "--listen", &addr, "--rpc-listen", &rpc]);
        cmd.arg("--rpc-tls-ca").arg(certs.join("ca.pem"));
        cmd.arg("--rpc-tls-cert").arg(certs.join(format!("node-{id}.pem")));
        cmd.arg("--rpc-tls-key").arg(certs.join(format!("node-{id}.key")));
        match &join {
            Some(via) => cmd.args(["--join", via]),
            None => cmd.args(["--peers", &peers]),
        };
        cmd.arg("--data-dir")
            .arg(&n.data_dir)
            .args(&args)
            .env("RUST_LOG", std::env::var("FLOTILLA_CHAOS_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(file) = clock_file {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let fd = netns.as_raw_fd();
        // Safety: between fork and exec only setns(2), which is async-signal-safe, and the
        // file stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        registry::add_pid(child.id());
        n.child = Some(child);
        n.paused = false;
        drop(netns);
        Ok(())
    }

    fn wait_listening(&mut self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + LISTEN_WITHIN;
        let addr = self.addr(id).parse().expect("a socket address");
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.node_mut(id).child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let pid = c.id();
                registry::remove_pid(pid);
                self.node_mut(id).child = None;
                bail!("node {id} exited ({status}) before listening; log:\n{}", self.log_tail(id, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("node {id} is not listening on {addr} after {LISTEN_WITHIN:?}; log:\n{}", self.log_tail(id, 30))
    }

    /// SIGKILL and reap: no chance to sync.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
            registry::remove_pid(c.id());
        }
        self.node_mut(id).paused = false;
    }

    /// SIGTERM, as an operator's restart or an orchestrator does: the node stops
    /// gracefully; SIGKILL after `within` if it has not.
    pub fn stop(&mut self, id: u64, within: Duration) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            registry::remove_pid(c.id());
        }
        self.node_mut(id).paused = false;
    }

    fn clock_file(&self, id: u64) -> Option<PathBuf> {
        self.clock_files.as_ref().map(|dir| dir.join(format!("clock-n{id}")))
    }

    /// Sets node `id`'s wall clock `offset_s` seconds off the real one (within about a
    /// second: libfaketime reads the file at most once a second). Nothing without
    /// skewable clocks.
    pub fn set_clock(&self, id: u64, offset_s: i64) -> anyhow::Result<()> {
        if let Some(file) = self.clock_file(id) {
            std::fs::write(&file, format!("{offset_s:+}s\n")).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    }

    /// The fault switches of node `id`'s disk; `None` on the host's filesystem.
    pub fn disk_faults(&self, id: u64) -> Option<&DiskFaults> {
        self.disks.get((id - 1) as usize).map(|(fs, _)| fs.faults())
    }

    /// SIGSTOP: the process stays, silent, its sockets open.
    pub fn pause(&mut self, id: u64) {
        let n = self.node_mut(id);
        if let Some(c) = &n.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
            n.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        let n = self.node_mut(id);
        if let Some(c) = &n.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        n.paused = false;
    }

    /// Empties a stopped node's data directory, as a lost disk leaves it.
    pub fn wipe(&self, id: u64) -> anyhow::Result<()> {
        assert!(self.node(id).child.is_none(), "wiping node {id}'s data while it runs");
        let dir = &self.node(id).data_dir;
        for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = e?.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Starts a killed node again on its data; returns once it listens.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.node(id).child.is_some() {
            return Ok(());
        }
        self.spawn(id)?;
        self.wait_listening(id)
    }

    /// Node `id`'s disk loses every write it had not synced; the bytes lost. The node
    /// must be down. Without a power-loss filesystem, nothing happens.
    pub fn power_loss(&mut self, id: u64) -> u64 {
        assert!(self.node(id).child.is_none(), "power loss of node {id} while it runs");
        self.disks.get((id - 1) as usize).map_or(0, |(fs, _)| fs.power_loss())
    }

    /// Nodes that exited by themselves (a crash, a refusal to start), with their status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut gone = vec![];
        for id in self.ids() {
            let n = self.node_mut(id);
            if let Some(c) = n.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                registry::remove_pid(c.id());
                n.child = None;
                gone.push((id, status.to_string()));
            }
        }
        gone
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines containing `needle` in the logs of every node that ever ran here.
    pub fn log_count(&self, needle: &str) -> usize {
        let logs = self.nodes.iter().filter_map(|n| std::fs::read_to_string(&n.log).ok());
        logs.map(|text| text.lines().filter(|l| l.contains(needle)).count()).sum()
    }

    /// Lines of node logs that say a node panicked or stopped a replica on an error.
    pub fn log_alarms(&self) -> Vec<String> {
        let mut found = vec![];
        for id in self.ids() {
            let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
            for line in text.lines() {
                if line.contains("panicked") || line.contains(" ERROR ") {
                    found.push(format!("n{id}: {}", line.chars().take(300).collect::<String>()));
                }
            }
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                registry::remove_pid(c.id());
            }
        }
        // Every node is gone: the filesystems can be unmounted.
        for (i, (_, session)) in self.disks.drain(..).enumerate() {
            drop(session);
            registry::remove_mount(&self.nodes[i].data_dir);
        }
    }
}
