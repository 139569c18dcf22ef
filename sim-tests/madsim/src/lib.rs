//! Tier 2 of Flotilla's simulation suite: the core alone — `flotilla-raft` (openraft on
//! madsim, through `rt_madsim.rs`), the partition and metadata state machines, and
//! `MemEngine` with its crash model — on madsim's simulated nodes, network and clock.
//!
//! One run = one seed: three brokers each host the metadata group (0) and 1–3 partition
//! groups; clients write through whichever node they think leads; the nemesis kills,
//! power-cycles, pauses and cuts off nodes; then every fault ends, the cluster must take a
//! write in every group within a bound, and the checker compares what was acknowledged
//! with what every replica committed (see `checker`).
//!
//! Built only with `RUSTFLAGS="--cfg madsim"` in its own workspace and target dir (see
//! `run`); it knows nothing of tonic, RocksDB, `flotilla-node` or `flotilla-rpc`.

#[cfg(not(madsim))]
compile_error!("flotilla-sim-madsim is built with RUSTFLAGS=\"--cfg madsim\": use sim-tests/madsim/run");

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod nemesis;
pub mod node;
pub mod spec;
pub mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_types::NodeId;

use crate::checker::{Monitor, Verdict};
use crate::cluster::{Cluster, FaultCounts, SharedCluster};
use crate::spec::{CATCH_UP_BOUND, CONVERGENCE_BOUND, NODES, Spec};
use crate::workload::{Client, History, SharedHistory};

/// Logs to stderr when `RUST_LOG` is set (a single-seed replay); silent otherwise.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Arms the planted bug named by `PLANT` (`flotilla_types::planted`), if any: a test of
/// the tests, run by `PLANT=name sim-tests/madsim/run`, which then expects a failure.
pub fn arm_planted_bug() {
    let bug = std::env::var("PLANT").ok().map(|name| {
        flotilla_types::planted::Bug::parse(&name).unwrap_or_else(|| panic!("PLANT={name}: no such planted bug"))
    });
    flotilla_types::planted::arm(bug);
}

/// Everything a test does first: logging (see [`init_logging`]) and the planted bug.
pub fn init() {
    init_logging();
    arm_planted_bug();
}

/// The seed of the running simulation.
pub fn seed() -> u64 {
    madsim::runtime::Handle::current().seed()
}

/// A running cluster with its clients and monitor.
pub struct Sim {
    pub cluster: SharedCluster,
    pub history: SharedHistory,
    pub client: Client,
    client_node: madsim::runtime::NodeHandle,
    monitor: Arc<Mutex<Monitor>>,
}

impl Sim {
    /// Starts the brokers and a client node, and the monitor that samples every replica.
    pub async fn start(spec: Spec) -> Sim {
        let cluster = Arc::new(Mutex::new(Cluster::start(spec)));
        let history: SharedHistory = Arc::new(Mutex::new(History::default()));
        let client_node =
            madsim::runtime::Handle::current().create_node().name("client").ip(workload::CLIENT_IP).build();
        let h = history.clone();
        let client = client_node.spawn(async move { Client::bind(h).await }).await.expect("client started");
        let monitor = Arc::new(Mutex::new(Monitor::default()));
        let (m, c) = (monitor.clone(), cluster.clone());
        madsim::task::spawn(async move {
            loop {
                madsim::time::sleep(Duration::from_millis(100)).await;
                m.lock().expect("monitor poisoned").sample(&c.lock().expect("cluster poisoned"));
            }
        });
        Sim { cluster, history, client, client_node, monitor }
    }

    /// Runs `f` on the client node (its traffic is subject to the network's faults).
    pub async fn on_client<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_node.spawn(f).await.expect("client task ran")
    }

    /// Starts `f` on the client node.
    pub fn spawn_on_client<F, T>(&self, f: F) -> madsim::task::JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_node.spawn(f)
    }

    /// Registers every broker in the metadata group (so topics can be placed).
    pub async fn register_brokers(&self) {
        for id in NODES {
            let client = self.client.clone();
            let acked = self
                .on_client(async move {
                    client
                        .write_until_acked(flotilla_types::METADATA_GROUP, CONVERGENCE_BOUND, || workload::register(id))
                        .await
                })
                .await;
            assert!(acked.is_some(), "seed {}: broker {id} not registered within {CONVERGENCE_BOUND:?}", seed());
        }
    }

    /// The liveness phase, after every fault ended: each group takes a write within
    /// [`CONVERGENCE_BOUND`], then every replica applies the same log within
    /// [`CATCH_UP_BOUND`].
    pub async fn converge(&self) {
        let start = Instant::now();
        let groups: Vec<u64> = self.cluster.lock().expect("cluster poisoned").spec.groups().collect();
        for group in groups {
            let client = self.client.clone();
            let left = CONVERGENCE_BOUND.saturating_sub(start.elapsed());
            let acked = self
                .on_client(async move {
                    let mut seq = 0;
                    client
                        .write_until_acked(group, left, || {
                            seq += 1;
                            if group == flotilla_types::METADATA_GROUP {
                                workload::register(NODES[0])
                            } else {
                                workload::produce(usize::MAX, seq)
                            }
                        })
                        .await
                })
                .await;
            assert!(
                acked.is_some(),
                "seed {}: group {group} took no write within {CONVERGENCE_BOUND:?} after the faults stopped",
                seed()
            );
        }
        let deadline = Instant::now() + CATCH_UP_BOUND;
        loop {
            if self.caught_up() {
                return;
            }
            assert!(Instant::now() < deadline, "seed {}: replicas did not catch up within {CATCH_UP_BOUND:?}", seed());
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every replica of every group applied the same index.
    fn caught_up(&self) -> bool {
        let c = self.cluster.lock().expect("cluster poisoned");
        c.spec.groups().all(|group| {
            let applied: Vec<Option<u64>> = NODES.iter().map(|n| c.status(*n, group).and_then(|s| s.applied)).collect();
            applied[0].is_some() && applied.iter().all(|a| *a == applied[0])
        })
    }

    /// The final check (see `checker`).
    pub fn verify(&self) -> Verdict {
        let c = self.cluster.lock().expect("cluster poisoned");
        let h = self.history.lock().expect("history poisoned");
        checker::verify(&c, &h, &mut self.monitor.lock().expect("monitor poisoned"))
    }

    pub fn counts(&self) -> FaultCounts {
        self.cluster.lock().expect("cluster poisoned").counts.clone()
    }

    /// The leader of `group` with the highest term among the running nodes (a paused
    /// node's view is stale).
    pub fn leader_of(&self, group: u64) -> Option<NodeId> {
        self.cluster.lock().expect("cluster poisoned").leader_of(group)
    }

    /// Hands the leadership of `group` to `to` and waits until it leads (or `bound` passes).
    pub async fn transfer_leader(&self, group: u64, to: NodeId, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let current = self.leader_of(group);
            if current == Some(to) {
                return true;
            }
            let handle = current.and_then(|l| self.cluster.lock().expect("cluster poisoned").group(l, group));
            if let Some(g) = handle {
                let _ = g.transfer_leader(to).await;
            }
            madsim::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

/// One seed of the sweep: random faults while writers write, then convergence and the
/// checks. Panics (failing the seed) on any violation.
pub async fn random_run() {
    init();
    let spec = Spec::draw();
    let seed = seed();
    tracing::info!(seed, %spec, "run");
    let sim = Sim::start(spec.clone()).await;
    sim.register_brokers().await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..spec.writers {
        let (client, spec, stop) = (sim.client.clone(), spec.clone(), stop.clone());
        writers.push(sim.client_node.spawn(workload::writer(client, spec, w, stop)));
    }
    let faults_until = Instant::now() + spec.faults_for;
    nemesis::run(sim.cluster.clone(), faults_until).await;
    nemesis::heal_all(&sim.cluster);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer ran");
    }
    sim.converge().await;
    let verdict = sim.verify();
    let counts = sim.counts();
    let h = sim.history.lock().expect("history poisoned");
    println!(
        "seed {seed} ok: {} entries, {} produce acks ({} across a pause), {} metadata acks, {} failed, {} \
         unanswered | kills {} (lost unsynced {}, torn {}, sync failures {}), outages {}, slow disks {}, pauses {} (of a leader {}), \
         clogs {}, link clogs {}, losses {}, leader transfers {} | {spec}",
        verdict.entries,
        verdict.produce_acks,
        verdict.acks_across_pause,
        verdict.metadata_acks,
        h.failed,
        h.unanswered,
        counts.kills,
        counts.lost_unsynced,
        counts.torn,
        counts.sync_failures,
        counts.outages,
        counts.slow_disks,
        counts.pauses,
        counts.leader_pauses,
        counts.clogs,
        counts.link_clogs,
        counts.losses,
        counts.transfers,
    );
}
