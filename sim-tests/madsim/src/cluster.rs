//! The supervisor's view of the cluster: the madsim nodes, their disks (which outlive
//! them), and the faults that can be done to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_raft::{Group, GroupStatus};
use flotilla_storage::MemEngine;
use flotilla_types::{GroupId, NodeId};
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};

use crate::node::{self, NodeGroups, Slot};
use crate::spec::{NODES, Spec};

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Up,
    Paused,
    Killed,
}

pub struct SimNode {
    pub id: NodeId,
    handle: NodeHandle,
    pub engine: MemEngine,
    /// The disk's group-commit window in milliseconds (survives restarts, as a slow disk).
    flush_ms: Arc<AtomicU64>,
    slot: Slot,
    pub life: Life,
    /// Incremented at every restart, so the checker knows to re-read the node's log.
    pub incarnation: u64,
}

/// Counts of what was done to the cluster, for the run's summary.
#[derive(Debug, Default, Clone)]
pub struct FaultCounts {
    pub kills: u64,
    /// Kills that lost unsynced writes, and of those, the ones that kept a torn prefix.
    pub lost_unsynced: u64,
    pub torn: u64,
    pub sync_failures: u64,
    pub outages: u64,
    pub pauses: u64,
    pub leader_pauses: u64,
    pub slow_disks: u64,
    pub clogs: u64,
    pub link_clogs: u64,
    pub losses: u64,
    pub transfers: u64,
}

pub struct Cluster {
    pub spec: Spec,
    pub handle: Handle,
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// When each node was paused and resumed, for the checker's pause statistics.
    pub pauses: Vec<(NodeId, Instant, Option<Instant>)>,
    pub counts: FaultCounts,
}

pub type SharedCluster = Arc<Mutex<Cluster>>;

impl Cluster {
    /// Creates the three nodes and starts them.
    pub fn start(spec: Spec) -> Cluster {
        let handle = Handle::current();
        let mut nodes = BTreeMap::new();
        for id in NODES {
            let engine = MemEngine::new();
            let slot: Slot = Arc::new(Mutex::new(None));
            let flush_ms = Arc::new(AtomicU64::new(spec.flush_window.as_millis() as u64));
            let (e, f, s, sp) = (engine.clone(), flush_ms.clone(), slot.clone(), spec.clone());
            let node = handle
                .create_node()
                .name(format!("n{id}"))
                .ip(node::ip_of(id))
                .init(move || node::run(id, e.clone(), f.clone(), sp.clone(), s.clone()))
                .build();
            nodes.insert(id, SimNode { id, handle: node, engine, flush_ms, slot, life: Life::Up, incarnation: 0 });
        }
        NetSim::current().update_config(|c| c.send_latency = spec.latency.0..spec.latency.1);
        Cluster { spec, handle, nodes, pauses: Vec::new(), counts: FaultCounts::default() }
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// The groups of a node that is running (paused included), once it has started them.
    pub fn groups(&self, id: NodeId) -> Option<Arc<NodeGroups>> {
        let n = &self.nodes[&id];
        if n.life == Life::Killed {
            return None;
        }
        n.slot.lock().expect("slot lock poisoned").clone()
    }

    pub fn group(&self, id: NodeId, group: GroupId) -> Option<Arc<Group>> {
        self.groups(id).and_then(|g| g.get(group))
    }

    pub fn status(&self, id: NodeId, group: GroupId) -> Option<GroupStatus> {
        self.group(id, group).map(|g| g.status())
    }

    /// The leader of `group` with the highest term among the running nodes (a paused
    /// node's view is stale).
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        NODES
            .into_iter()
            .filter(|n| self.nodes[n].life == Life::Up)
            .filter_map(|n| self.status(n, group).filter(|s| s.is_leader).map(|s| (s.term, n)))
            .max()
            .map(|(_, n)| n)
    }

    /// The node that leads the most groups, as the running nodes see it.
    pub fn busiest_leader(&self) -> Option<NodeId> {
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        for id in NODES {
            if self.nodes[&id].life != Life::Up {
                continue;
            }
            for group in self.spec.groups() {
                if self.status(id, group).is_some_and(|s| s.is_leader) {
                    *led.entry(id).or_default() += 1;
                }
            }
        }
        led.into_iter().max_by_key(|(id, n)| (*n, *id)).map(|(id, _)| id)
    }

    /// Power loss: the node dies at once, and its disk keeps a random prefix of what it
    /// had not synced (`MemEngine`'s crash model).
    pub fn kill(&mut self, id: NodeId) {
        let unsynced = self.nodes[&id].engine.unsynced_batches();
        let keep = madsim::rand::thread_rng().gen_range(0..=unsynced);
        self.kill_keeping(id, keep);
    }

    /// Power loss that keeps the first `keep` unsynced batches of the node's disk.
    pub fn kill_keeping(&mut self, id: NodeId, keep: usize) {
        let handle = self.handle.clone();
        let n = self.node(id);
        assert_ne!(n.life, Life::Killed, "node {id} killed twice");
        handle.kill(n.handle.id());
        *n.slot.lock().expect("slot lock poisoned") = None;
        let unsynced = n.engine.unsynced_batches();
        n.engine.power_loss(keep);
        n.life = Life::Killed;
        tracing::info!(node = id, unsynced, keep, "killed: power loss");
        self.counts.kills += 1;
        if keep < unsynced {
            self.counts.lost_unsynced += 1;
            if keep > 0 {
                self.counts.torn += 1;
            }
        }
    }

    /// Boots a killed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let handle = self.handle.clone();
        let n = self.node(id);
        assert_eq!(n.life, Life::Killed, "node {id} restarted while running");
        n.engine.fail_syncs(false);
        handle.restart(n.handle.id());
        n.life = Life::Up;
        n.incarnation += 1;
        tracing::info!(node = id, "restarted");
    }

    /// Sets the node's disk group-commit window (a slow disk when large).
    pub fn set_flush_window(&mut self, id: NodeId, window: std::time::Duration) {
        self.node(id).flush_ms.store(window.as_millis() as u64, Ordering::Relaxed);
        tracing::info!(node = id, ?window, "disk flush window");
    }

    /// Makes every sync of the node's disk fail: its groups stop on the storage error and
    /// the node must be restarted (which [`Cluster::restart`] does, disarming the fault).
    pub fn fail_syncs(&mut self, id: NodeId) {
        self.node(id).engine.fail_syncs(true);
        self.counts.sync_failures += 1;
        tracing::info!(node = id, "disk syncs fail from now on");
    }

    /// Freezes every task of the node; time goes on for the others.
    pub fn pause(&mut self, id: NodeId, is_leader: bool) {
        let handle = self.handle.clone();
        let n = self.node(id);
        assert_eq!(n.life, Life::Up);
        handle.pause(n.handle.id());
        n.life = Life::Paused;
        self.pauses.push((id, Instant::now(), None));
        self.counts.pauses += 1;
        if is_leader {
            self.counts.leader_pauses += 1;
        }
        tracing::info!(node = id, is_leader, "paused");
    }

    pub fn resume(&mut self, id: NodeId) {
        let handle = self.handle.clone();
        let n = self.node(id);
        assert_eq!(n.life, Life::Paused);
        handle.resume(n.handle.id());
        n.life = Life::Up;
        let open = self.pauses.iter_mut().rev().find(|p| p.0 == id && p.2.is_none()).expect("an open pause");
        open.2 = Some(Instant::now());
        tracing::info!(node = id, "resumed");
    }

    pub fn madsim_id(&self, id: NodeId) -> madsim::task::NodeId {
        self.nodes[&id].handle.id()
    }

    /// Whether node `id` was paused at some time in `[from, to]`.
    pub fn paused_during(&self, id: NodeId, from: Instant, to: Instant) -> bool {
        self.pauses.iter().any(|(n, start, end)| *n == id && *start <= to && end.is_none_or(|e| e >= from))
    }
}
