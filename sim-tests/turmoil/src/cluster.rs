//! The simulated cluster: each node is a turmoil host running the production `Node`
//! (metadata group, partition groups, reconciler) behind the production gRPC server,
//! on a `MemEngine` that outlives the host so a crash can decide what survives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::{AddressBook, Node, NodeConfig};
use flotilla_raft::state_machine::GroupState;
use flotilla_rpc::GrpcTransport;
use flotilla_storage::MemEngine;
use flotilla_testkit::checker::ReplicaLog;
use flotilla_types::batch::RecordBatch;
use flotilla_types::{Clock, GroupId, METADATA_GROUP, NodeId};
use tokio::sync::mpsc;

use crate::net;

pub type SimNode = Node<GrpcTransport>;

/// Milliseconds since the Unix epoch at simulated time zero (2026-01-01T00:00:00Z).
const EPOCH_MS: u64 = 1_767_225_600_000;

/// Wall-clock time for the nodes: simulated time plus jumps the nemesis makes.
#[derive(Clone, Default)]
pub struct SimClock {
    jump_ms: Arc<AtomicI64>,
}

impl SimClock {
    pub fn jump(&self, by_ms: i64) {
        self.jump_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64;
        (EPOCH_MS as i64 + elapsed + self.jump_ms.load(Ordering::SeqCst)).max(0) as u64
    }
}

pub fn host(id: NodeId) -> String {
    format!("n{id}")
}

pub fn address(id: NodeId) -> String {
    format!("{}:{}", host(id), net::PORT)
}

/// What the nemesis and the final checks hold on to across crashes.
#[derive(Clone)]
pub struct Cluster {
    pub size: u64,
    /// How often each node's simulated disk syncs what was written (its group commit).
    pub flush_every: Duration,
    /// The nodes' disks: they survive crashes; the crash model decides what of them does.
    pub engines: BTreeMap<NodeId, MemEngine>,
    /// The running node instances, for inspection (leaders, replica logs). A crashed
    /// node is removed by the nemesis; a started one adds itself.
    pub running: Arc<Mutex<BTreeMap<NodeId, SimNode>>>,
    pub clocks: BTreeMap<NodeId, SimClock>,
    /// Admin operations for the running nodes, carried out inside their hosts.
    pub control: Arc<Mutex<BTreeMap<NodeId, mpsc::UnboundedSender<Control>>>>,
}

/// An admin operation the nemesis asks a node to perform.
#[derive(Debug)]
pub enum Control {
    /// Hand the leadership of `group` (led by this node) to node `to`.
    TransferLeader { group: GroupId, to: NodeId },
}

impl Cluster {
    pub fn new(size: u64, flush_every: Duration) -> Cluster {
        Cluster {
            size,
            flush_every,
            engines: (1..=size)
                .map(|id| {
                    let e = MemEngine::new();
                    e.defer_syncs();
                    (id, e)
                })
                .collect(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            clocks: (1..=size).map(|id| (id, SimClock::default())).collect(),
            control: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        1..=self.size
    }

    fn config(&self, id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            listen: address(id),
            peers: self.ids().map(|i| format!("{i}={}", address(i))).collect(),
            zone: format!("z{id}"),
            ..NodeConfig::default()
        }
    }

    /// Registers every node as a turmoil host. turmoil calls the closure again on
    /// restart (`bounce`), which reopens the node from its engine.
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        for id in self.ids() {
            let engine = self.engines[&id].clone();
            let clock = self.clocks[&id].clone();
            let running = self.running.clone();
            let control = self.control.clone();
            let config = self.config(id);
            let flush_every = self.flush_every;
            sim.host(host(id), move || {
                let engine = engine.clone();
                let clock = clock.clone();
                let running = running.clone();
                let control = control.clone();
                let config = config.clone();
                async move {
                    // The node's flusher: group commit every `flush_every`, as RocksEngine's
                    // flusher thread does it. It dies with the host; what it had not
                    // synced is what a power loss may take.
                    let flusher = engine.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(flush_every).await;
                            flusher.sync_deferred();
                        }
                    });
                    let incoming = net::incoming().await?;
                    let addresses = AddressBook::new();
                    let transport = GrpcTransport::with_dialer(id, addresses.clone(), net::dialer());
                    let clock: Arc<dyn Clock> = Arc::new(clock);
                    let node = Node::start(config, Arc::new(engine), transport, addresses, clock).await?;
                    running.lock().expect("running poisoned").insert(id, node.clone());
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    control.lock().expect("control poisoned").insert(id, tx);
                    let admin = node.clone();
                    tokio::spawn(async move {
                        while let Some(op) = rx.recv().await {
                            match op {
                                Control::TransferLeader { group, to } => {
                                    if let Some(g) = admin.groups().get(group) {
                                        let _ = g.transfer_leader(to).await;
                                    }
                                }
                            }
                        }
                    });
                    flotilla_rpc::serve_with_incoming(node, incoming, std::future::pending()).await?;
                    Ok(())
                }
            });
        }
    }

    /// The node that leads the most groups right now, with how many it leads.
    pub fn busiest_leader(&self) -> Option<(NodeId, usize)> {
        let running = self.running.lock().expect("running poisoned");
        running
            .iter()
            .map(|(id, n)| {
                let led =
                    n.groups().ids().into_iter().filter(|g| n.groups().get(*g).is_some_and(|g| g.is_leader())).count();
                (*id, led)
            })
            .filter(|(_, led)| *led > 0)
            .max_by_key(|(id, led)| (*led, std::cmp::Reverse(*id)))
    }

    /// Asks node `at` to perform `op`; false if it is not running.
    pub fn control(&self, at: NodeId, op: Control) -> bool {
        self.control.lock().expect("control poisoned").get(&at).is_some_and(|tx| tx.send(op).is_ok())
    }

    /// The partition groups `node` leads right now.
    pub fn led_partitions(&self, node: NodeId) -> Vec<GroupId> {
        let running = self.running.lock().expect("running poisoned");
        let Some(n) = running.get(&node) else { return Vec::new() };
        n.groups()
            .ids()
            .into_iter()
            .filter(|g| *g != METADATA_GROUP && n.groups().get(*g).is_some_and(|g| g.is_leader()))
            .collect()
    }

    /// A one-line fingerprint of who leads what, for the trace.
    pub fn leaders(&self) -> String {
        let running = self.running.lock().expect("running poisoned");
        let mut out = Vec::new();
        for (id, n) in running.iter() {
            let led: Vec<String> = n
                .groups()
                .ids()
                .into_iter()
                .filter(|g| n.groups().get(*g).is_some_and(|g| g.is_leader()))
                .map(|g| g.to_string())
                .collect();
            out.push(format!("n{id}:[{}]", led.join(",")));
        }
        out.join(" ")
    }

    /// Every running replica's applied (hence committed) partition log, for the
    /// replica-divergence check.
    pub fn replica_logs(&self) -> Vec<ReplicaLog> {
        let running = self.running.lock().expect("running poisoned");
        let mut logs = Vec::new();
        for (id, node) in running.iter() {
            let names: BTreeMap<u64, (String, u32)> = node.with_metadata(|m| {
                m.topics()
                    .values()
                    .flat_map(|t| t.partitions.iter().map(|p| (p.group, (t.name.clone(), p.partition))))
                    .collect()
            });
            for g in node.groups().ids() {
                if g == METADATA_GROUP {
                    continue;
                }
                let (Some(group), Some((topic, partition))) = (node.groups().get(g), names.get(&g)) else { continue };
                let (hw, locations) = group.read(|s| match s {
                    GroupState::Partition(p) => (p.high_watermark(), p.locate(0, usize::MAX).unwrap_or_default()),
                    GroupState::Metadata(_) => (0, Vec::new()),
                });
                let mut records = Vec::new();
                for loc in locations {
                    let Ok(Some(bytes)) = group.read_batch(loc.log_index) else { continue };
                    let Ok(batch) = RecordBatch::decode(bytes) else { continue };
                    for (i, r) in batch.records().into_iter().enumerate() {
                        records.push((loc.base_offset + i as u64, String::from_utf8_lossy(&r.value).into_owned()));
                    }
                }
                logs.push(ReplicaLog {
                    node: *id,
                    topic: topic.clone(),
                    partition: *partition,
                    commit_offset: hw,
                    records,
                });
            }
        }
        logs
    }
}
