//! Message delay and loss between nodes, where the kernel has no `netem`: a TCP proxy in
//! the runner through which every node-to-node connection passes.
//!
//! For each ordered pair of nodes (i, j) the runner listens on its bridge address at
//! [`Proxy::port`]`(i, j)`, and a DNAT rule in node i's namespace (`iptables -t nat`,
//! `OUTPUT`) sends i's connections to j's port there; the proxy connects on to j. The
//! rules are in place from the cluster's start, so the long-lived connections pass
//! through the proxy too; faults only change how it forwards. Client traffic (from the
//! runner) is not proxied.
//!
//! How it forwards each direction of a connection from a to b is the [`Shape`] of the
//! link a→b at the time a chunk is read:
//! - **delay**: each chunk is written after a delay drawn from a range (jitter), never
//!   before the chunk read before it: bytes of one connection stay in order, as TCP
//!   keeps them, while chunks on different connections and directions overtake each
//!   other (messages reordered between streams);
//! - **loss**: TCP cannot lose bytes inside a stream; what an application sees of a lossy
//!   link is a stall while the sender retransmits. With a probability per chunk, the
//!   chunk (and everything behind it) is held for a retransmission timeout drawn from a
//!   range;
//! - **reset**: with a probability per chunk the connection is reset (RST both ways), as
//!   when a link loses enough to time out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::net::Net;
use crate::rng::Rng;

/// The first port of the proxy's listeners.
const PORT_BASE: u16 = 17_100;
/// Bytes read at once.
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction before the reader waits.
const QUEUE: usize = 256;

/// How the proxy forwards one link (one direction between two nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Each chunk delayed by this many ms, drawn uniformly.
    pub delay_ms: (u64, u64),
    /// Per mille of chunks held for a retransmission timeout.
    pub stall_per_mille: u64,
    /// The retransmission timeout, ms, drawn uniformly.
    pub stall_ms: (u64, u64),
    /// Per mille of chunks on which the connection is reset.
    pub reset_per_mille: u64,
}

type Shapes = Arc<Mutex<HashMap<(u64, u64), Shape>>>;

/// The proxy of one cluster's node-to-node traffic.
pub struct Proxy {
    shapes: Shapes,
    /// Connections through each link so far (for the report).
    counts: Arc<Mutex<HashMap<(u64, u64), u64>>>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// The runner's port for connections from node `from` to node `to`.
    pub fn port(from: u64, to: u64) -> u16 {
        PORT_BASE + (from * 16 + to) as u16
    }

    /// Listens for every ordered pair of `nodes` nodes on `net` and sends each node's
    /// connections to its peers' `port` through it (DNAT rules in the node namespaces).
    pub async fn start(net: &Net, nodes: u64, port: u16, seed: u64) -> anyhow::Result<Proxy> {
        let shapes: Shapes = Arc::default();
        let counts: Arc<Mutex<HashMap<(u64, u64), u64>>> = Arc::default();
        let mut tasks = JoinSet::new();
        for from in 1..=nodes {
            for to in (1..=nodes).filter(|t| *t != from) {
                let listen = format!("{}:{}", net.host_ip(), Self::port(from, to));
                let listener =
                    TcpListener::bind(&listen).await.with_context(|| format!("proxy: listening on {listen}"))?;
                let target = format!("{}:{port}", net.node_ip(to));
                let (shapes, counts) = (shapes.clone(), counts.clone());
                let mut rng = Rng::new(seed ^ (from << 8 | to));
                tasks.spawn(async move {
                    let mut conns = JoinSet::new();
                    while let Ok((inbound, _)) = listener.accept().await {
                        *counts.lock().expect("proxy counts").entry((from, to)).or_default() += 1;
                        let seeds = (rng.next_u64(), rng.next_u64());
                        let (shapes, target) = (shapes.clone(), target.clone());
                        conns.spawn(connection(inbound, target, (from, to), shapes, seeds));
                        while conns.try_join_next().is_some() {}
                    }
                });
                net.dnat(from, &net.node_ip(to), port, &net.host_ip(), Self::port(from, to))?;
            }
        }
        Ok(Proxy { shapes, counts, tasks })
    }

    /// Forwards the link `from`→`to` as `shape` says from now on.
    pub fn shape(&self, from: u64, to: u64, shape: Shape) {
        self.shapes.lock().expect("proxy shapes").insert((from, to), shape);
    }

    /// Every link forwards at once again.
    pub fn clear(&self) {
        self.shapes.lock().expect("proxy shapes").clear();
    }

    /// Connections made through the proxy, per link, as `n1->n2: 3, ...`.
    pub fn connections(&self) -> String {
        let counts = self.counts.lock().expect("proxy counts");
        let mut links: Vec<_> = counts.iter().collect();
        links.sort();
        links.iter().map(|((a, b), n)| format!("n{a}->n{b}: {n}")).collect::<Vec<_>>().join(", ")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One proxied connection: two directions, each a reader and a writer; any of them
/// ending (EOF, an error, a reset) ends the connection, with an RST on both sockets.
async fn connection(inbound: TcpStream, target: String, (from, to): (u64, u64), shapes: Shapes, seeds: (u64, u64)) {
    let Ok(Ok(outbound)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&target)).await else {
        reset_on_drop(&inbound);
        return;
    };
    for s in [&inbound, &outbound] {
        let _ = s.set_nodelay(true);
        reset_on_drop(s);
    }
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut halves = JoinSet::new();
    pump(&mut halves, in_read, out_write, (from, to), shapes.clone(), seeds.0);
    pump(&mut halves, out_read, in_write, (to, from), shapes, seeds.1);
    // The first half to end ends them all (dropping the set aborts the rest).
    let _ = halves.join_next().await;
}

/// A dropped socket is reset (RST), not closed: a reset fault looks like one.
#[allow(deprecated, reason = "a zero linger resets at once; only a nonzero one blocks the dropping thread")]
fn reset_on_drop(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Forwards `read` to `write` shaped as the link `link` is when each chunk is read.
fn pump(
    set: &mut JoinSet<()>,
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    link: (u64, u64),
    shapes: Shapes,
    seed: u64,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    set.spawn(async move {
        let mut rng = Rng::new(seed);
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let shape = shapes.lock().expect("proxy shapes").get(&link).copied().unwrap_or_default();
            if shape.reset_per_mille > 0 && rng.range(0, 999) < shape.reset_per_mille {
                return;
            }
            let mut delay = Duration::ZERO;
            if shape.delay_ms.1 > 0 {
                delay += rng.millis(shape.delay_ms.0, shape.delay_ms.1);
            }
            if shape.stall_per_mille > 0 && rng.range(0, 999) < shape.stall_per_mille {
                delay += rng.millis(shape.stall_ms.0, shape.stall_ms.1);
            }
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    });
    set.spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
}
