//! The simulated cluster: each node is a turmoil host running the production `Node`
//! (metadata group, partition groups, reconciler) behind the production gRPC server,
//! on a `MemEngine` that outlives the host so a crash can decide what survives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_metadata::placement::Action;
use flotilla_metadata::{AdminState, Liveness};
use flotilla_node::admin::PlanScenario;
use flotilla_node::{AddressBook, Node, NodeConfig};
use flotilla_rpc::GrpcTransport;
use flotilla_storage::MemEngine;
use flotilla_testkit::checker::ReplicaLog;
use flotilla_types::batch::RecordBatch;
use flotilla_types::{Clock, ErrorCode, GroupId, METADATA_GROUP, NodeId};
use tokio::sync::mpsc;

use crate::net;
use crate::profile::Profile;

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
    pub profile: Profile,
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
    /// What the admin operations answered, stamped with simulated time, in the order they
    /// answered; the run moves them into the trace.
    pub notes: Arc<Mutex<Vec<String>>>,
}

/// An admin operation the nemesis asks a node to perform.
#[derive(Debug)]
pub enum Control {
    /// Hand the leadership of `group` (led by this node) to node `to`.
    TransferLeader { group: GroupId, to: NodeId },
    /// Drain a node: the controller moves every replica off it.
    Drain { node: NodeId },
    /// Make a draining node active again.
    Undrain { node: NodeId },
    /// An operator's reassignment of a partition (the first replica becomes its
    /// preferred leader).
    Reassign { topic: String, partition: u32, replicas: Vec<NodeId> },
    /// Cancel a partition's move: it goes back to its replicas.
    CancelMove { topic: String, partition: u32 },
}

impl std::fmt::Display for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::TransferLeader { group, to } => write!(f, "transfer leadership of group {group} to {}", host(*to)),
            Control::Drain { node } => write!(f, "drain {}", host(*node)),
            Control::Undrain { node } => write!(f, "undrain {}", host(*node)),
            Control::Reassign { topic, partition, replicas } => {
                write!(f, "reassign {topic}/{partition} to {replicas:?}")
            }
            Control::CancelMove { topic, partition } => write!(f, "cancel the move of {topic}/{partition}"),
        }
    }
}

/// An operator's tool retries an admin request this often while the metadata group has
/// no leader to take it, this far apart.
const ADMIN_TRIES: u32 = 10;
const ADMIN_RETRY: Duration = Duration::from_millis(300);

/// Carries out one admin operation on the node `admin`; what it answered, for the trace
/// (none for a leader transfer, which the classic trace never showed).
async fn carry_out(admin: &SimNode, op: &Control) -> Option<String> {
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = match op {
            Control::TransferLeader { group, to } => {
                if let Some(g) = admin.groups().get(*group) {
                    let _ = g.transfer_leader(*to).await;
                }
                return None;
            }
            Control::Drain { node } => admin.drain_node(*node).await.map(|()| "ok".to_string()),
            Control::Undrain { node } => admin.undrain_node(*node).await.map(|()| "ok".to_string()),
            Control::Reassign { topic, partition, replicas } => {
                admin.reassign(topic, *partition, replicas.clone()).await.map(|id| format!("move {id} started"))
            }
            Control::CancelMove { topic, partition } => {
                admin.cancel_move(topic, *partition).await.map(|()| "ok".to_string())
            }
        };
        let after = if tries > 1 { format!(" (try {tries})") } else { String::new() };
        match answer {
            Ok(what) => return Some(format!("{what}{after}")),
            Err(e)
                if tries < ADMIN_TRIES
                    && matches!(e.code, ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::LeaderChanged) =>
            {
                tokio::time::sleep(ADMIN_RETRY).await;
            }
            Err(e) => return Some(format!("refused: {e}{after}")),
        }
    }
}

impl Cluster {
    pub fn new(profile: Profile, flush_every: Duration) -> Cluster {
        let size = profile.nodes();
        Cluster {
            profile,
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
            notes: Arc::new(Mutex::new(Vec::new())),
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
            controllers: self.profile.controllers(),
            zone: self.profile.zone(id),
            dead_after_ms: self.profile.dead_after_ms().unwrap_or(NodeConfig::default().dead_after_ms),
            quiesce_after_ms: quiesce_after_ms(),
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
            let notes = self.notes.clone();
            let config = self.config(id);
            let flush_every = self.flush_every;
            sim.host(host(id), move || {
                let engine = engine.clone();
                let clock = clock.clone();
                let running = running.clone();
                let control = control.clone();
                let notes = notes.clone();
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
                        // One at a time, in the order sent: an undrain sent to the node
                        // that carries out the drain comes after it.
                        while let Some(op) = rx.recv().await {
                            if let Some(answer) = carry_out(&admin, &op).await {
                                let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                                notes.lock().expect("notes poisoned").push(format!("{at:>8} n{id}: {op}: {answer}"));
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

    /// The voters of `group` as node `at` sees them.
    pub fn group_voters(&self, at: NodeId, group: GroupId) -> Vec<NodeId> {
        let running = self.running.lock().expect("running poisoned");
        running
            .get(&at)
            .and_then(|n| n.groups().get(group))
            .map(|g| g.membership().voters().into_iter().collect())
            .unwrap_or_default()
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

    /// The nodes running now, in id order.
    pub fn running_ids(&self) -> Vec<NodeId> {
        self.running.lock().expect("running poisoned").keys().copied().collect()
    }

    /// The running nodes that know a metadata leader (an operator's request sent to one
    /// reaches the leader), else every running node.
    pub fn admin_entry_points(&self) -> Vec<NodeId> {
        let running = self.running.lock().expect("running poisoned");
        let knowing: Vec<NodeId> =
            running.iter().filter(|(_, n)| n.controllers().leader.is_some()).map(|(id, _)| *id).collect();
        if knowing.is_empty() { running.keys().copied().collect() } else { knowing }
    }

    /// What the controller has recorded, one line: each node's state and replica count,
    /// and the moves in progress (with their reasons).
    pub fn controller_view(&self) -> Option<String> {
        let n = self.metadata_reader()?;
        let (brokers, moves) = n.with_metadata(|m| {
            let brokers: Vec<String> = m
                .brokers()
                .values()
                .map(|b| format!("{} {} ({})", host(b.id), b.state_name(), m.groups_on(b.id).len()))
                .collect();
            let moves: Vec<String> = m
                .moves()
                .iter()
                .filter_map(|(t, p)| {
                    let mv = p.moving.as_ref()?;
                    Some(format!("{}/{} {:?} -> {:?} ({})", t.name, p.partition, p.replicas, mv.target, mv.reason))
                })
                .collect();
            (brokers, moves)
        });
        let moves = if moves.is_empty() { "none".to_string() } else { moves.join("; ") };
        Some(format!("nodes {}; moves {moves}", brokers.join(", ")))
    }

    /// The running node that leads the metadata group (as it sees itself), else the
    /// running node with the lowest id: whose metadata the nemesis reads.
    fn metadata_reader(&self) -> Option<SimNode> {
        let running = self.running.lock().expect("running poisoned");
        running.values().find(|n| n.controllers().leader == Some(n.id())).or_else(|| running.values().next()).cloned()
    }

    /// Each partition's replicas of `topic`, as the metadata leader has applied them.
    pub fn replicas_of(&self, topic: &str) -> Option<Vec<Vec<NodeId>>> {
        self.metadata_reader()?
            .with_metadata(|m| m.topic(topic).map(|t| t.partitions.iter().map(|p| p.replicas.clone()).collect()))
    }

    /// The nodes the metadata group records as draining.
    pub fn draining(&self) -> Vec<NodeId> {
        let Some(n) = self.metadata_reader() else { return Vec::new() };
        n.with_metadata(|m| m.brokers().values().filter(|b| b.admin == AdminState::Draining).map(|b| b.id).collect())
    }

    /// What the admin operations answered since the last call.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("notes poisoned"))
    }

    /// Whether the cluster is at rest: every node running, registered, alive and active;
    /// no move in progress and none the planner would start; every partition led by a
    /// node whose group's voters are exactly the partition's replicas. Ok: the layout,
    /// one line; Err: what is not at rest yet.
    pub fn settled(&self) -> Result<String, String> {
        let nodes = self.running.lock().expect("running poisoned").clone();
        if let Some(down) = self.ids().find(|i| !nodes.contains_key(i)) {
            return Err(format!("{} is not running", host(down)));
        }
        let leader = nodes
            .values()
            .find(|n| n.controllers().leader == Some(n.id()))
            .ok_or_else(|| "no metadata leader".to_string())?;
        let (brokers, topics) = leader.with_metadata(|m| (m.brokers().clone(), m.topics().clone()));
        if brokers.len() as u64 != self.size {
            return Err(format!("{} of {} nodes registered", brokers.len(), self.size));
        }
        if let Some(b) = brokers.values().find(|b| b.liveness != Liveness::Alive || b.admin != AdminState::Active) {
            return Err(format!("{} is {}", host(b.id), b.state_name()));
        }
        let moves = leader.moves();
        if !moves.is_empty() {
            let list: Vec<String> = moves
                .iter()
                .map(|m| format!("{}/{} {:?} -> {:?} ({})", m.topic, m.partition, m.from, m.to, m.reason))
                .collect();
            return Err(format!("moves in progress: {}", list.join("; ")));
        }
        let plan = leader.plan(&PlanScenario::Now).map_err(|e| format!("cannot plan: {e}"))?;
        let planned: Vec<String> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Move { topic, partition, from, to, reason, .. } => {
                    Some(format!("{topic}/{partition} {from:?} -> {to:?} ({reason})"))
                }
                Action::PreferLeader { .. } => None,
            })
            .collect();
        if !planned.is_empty() {
            return Err(format!("the planner would move {}", planned.join("; ")));
        }
        let mut layout = Vec::new();
        for t in topics.values() {
            for p in &t.partitions {
                let replicas: std::collections::BTreeSet<NodeId> = p.replicas.iter().copied().collect();
                let led = nodes
                    .iter()
                    .find_map(|(id, n)| n.groups().get(p.group).filter(|g| g.is_leader()).map(|g| (*id, g)));
                let Some((at, group)) = led else {
                    return Err(format!("{}/{} (group {}) has no leader", t.name, p.partition, p.group));
                };
                let members = group.membership();
                if members.uniform_voters() != Some(&replicas) || !members.learners.is_empty() {
                    return Err(format!(
                        "{}/{}: replicas {:?}, but its leader {} has voters {:?} and learners {:?}",
                        t.name,
                        p.partition,
                        p.replicas,
                        host(at),
                        members.voters(),
                        members.learners
                    ));
                }
                layout.push(format!("{}/{} {:?} led by {}", t.name, p.partition, p.replicas, host(at)));
            }
        }
        Ok(layout.join(", "))
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
                let (Some(group), Some((topic, partition))) = (node.groups().partition(g), names.get(&g)) else {
                    continue;
                };
                let (hw, start) = group.read(|p| (p.high_watermark(), p.log_start_offset()));
                let locations = group.batches_from(start, hw, usize::MAX).unwrap_or_default();
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

/// `FLOTILLA_SIM_QUIESCE_MS` overrides the product's `quiesce-after-ms` (0: idle groups
/// keep ticking; docs/simulation.md). A sweep's children inherit it.
fn quiesce_after_ms() -> u64 {
    std::env::var("FLOTILLA_SIM_QUIESCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NodeConfig::default().quiesce_after_ms)
}
