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

/// The port every node listens on, each in its own namespace.
pub const NODE_PORT: u16 = 7070;
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
    bin: PathBuf,
    net: Net,
    nodes: Vec<NodeProc>,
    peers: String,
    node_args: Vec<String>,
    /// Per node with a [`Disk::PowerFs`]: the filesystem and its mount (unmounted on drop).
    disks: Vec<(PowerFs, fuser::BackgroundSession)>,
    /// With skewed clocks: the file each node's libfaketime reads its offset from.
    clock_files: Option<PathBuf>,
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
        let peers = (1..=n).map(|i| format!("{i}={}:{NODE_PORT}", net.node_ip(i))).collect::<Vec<_>>().join(",");
        let nodes = (1..=n)
            .map(|i| NodeProc {
                child: None,
                paused: false,
                data_dir: data.join(format!("node-{i}")),
                log: logs.join(format!("node-{i}.log")),
            })
            .collect();
        let clock_files = skewable_clocks.then(|| logs.to_path_buf());
        if skewable_clocks && !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: apt-get install faketime");
        }
        let mut c = Cluster { bin: bin.to_path_buf(), net, nodes, peers, node_args, disks: vec![], clock_files };
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

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
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
        let clock_file = self.clock_file(id);
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "node {id} is already running");
        let log = File::options().create(true).append(true).open(&n.log).context("opening the node log")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("node")
            .args(["--id", &id.to_string(), "--listen", &addr, "--peers", &peers])
            .arg("--data-dir")
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
