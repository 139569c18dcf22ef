//! The faults: for `spec.faults_for`, at random intervals, one of
//! - kill a node (power loss: unsynced writes lost or torn) and restart it later,
//! - a power outage: every node at once, each keeping its own random unsynced prefix,
//! - make a node's disk syncs fail, then kill and restart it,
//! - make a node's disk slow (a long group-commit window), so its appends stay unsynced
//!   while the others commit them,
//! - pause a node (most often the busiest leader) past the election timeout, then resume it,
//! - clog a node's traffic (in, out or both), or one direction of one link,
//! - lose a fraction of all packets for a while,
//! - and, not a fault, move a group's leadership as the balancer does.
//!
//! Each fault is undone after a random time; at most `spec.faults_at_once` are active.
//! [`heal_all`] ends every fault, after which the cluster must converge.

use std::time::{Duration, Instant};

use flotilla_types::NodeId;
use madsim::net::NetSim;
use madsim::rand::Rng;

use crate::cluster::{Life, SharedCluster};
use crate::spec::{ELECTION_TIMEOUT_MAX, NODES};

/// How a fault is undone.
#[derive(Debug, Clone, Copy)]
enum Heal {
    Restart(NodeId),
    RestartAll,
    FastDisk(NodeId),
    Resume(NodeId),
    Unclog(NodeId),
    UnclogLink(NodeId, NodeId),
    NoLoss,
}

impl Heal {
    /// The nodes this fault holds (a node takes one fault at a time).
    fn nodes(&self) -> Vec<NodeId> {
        match self {
            Heal::Restart(n) | Heal::FastDisk(n) | Heal::Resume(n) | Heal::Unclog(n) => vec![*n],
            Heal::RestartAll => NODES.to_vec(),
            Heal::UnclogLink(..) | Heal::NoLoss => Vec::new(),
        }
    }
}

fn between(lo: Duration, hi: Duration) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(lo.as_millis() as u64..=hi.as_millis() as u64))
}

/// Injects faults until `until`, then undoes the ones still active.
pub async fn run(cluster: SharedCluster, until: Instant) {
    let (every, at_once, loss_max) = {
        let c = cluster.lock().expect("cluster poisoned");
        (c.spec.fault_every, c.spec.faults_at_once, c.spec.loss_max)
    };
    let mut active: Vec<(Instant, Heal)> = Vec::new();
    let mut next_fault = Instant::now() + between(every / 2, every * 3 / 2);
    loop {
        let next_heal = active.iter().map(|(t, _)| *t).min();
        let next = next_heal.map_or(next_fault, |h| h.min(next_fault));
        if next >= until {
            break;
        }
        madsim::time::sleep_until(next).await;
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = active.into_iter().partition(|(t, _)| *t <= now);
        active = keep;
        for (_, heal) in due {
            undo(&cluster, heal);
        }
        if now >= next_fault {
            next_fault = now + between(every / 2, every * 3 / 2);
            if active.len() < at_once {
                let heals: Vec<Heal> = active.iter().map(|(_, h)| *h).collect();
                if let Some((after, heal)) = inject(&cluster, &heals, loss_max) {
                    active.push((now + after, heal));
                }
            }
        }
    }
    for (_, heal) in active {
        undo(&cluster, heal);
    }
}

/// Starts one random fault; returns when and how to undo it.
fn inject(cluster: &SharedCluster, active: &[Heal], loss_max: f64) -> Option<(Duration, Heal)> {
    let mut c = cluster.lock().expect("cluster poisoned");
    let busy: Vec<NodeId> = active.iter().flat_map(|h| h.nodes()).collect();
    let loss_on = active.iter().any(|h| matches!(h, Heal::NoLoss));
    let mut rng = madsim::rand::thread_rng();
    let free: Vec<NodeId> = NODES.into_iter().filter(|n| !busy.contains(n)).collect();
    if free.is_empty() {
        return None;
    }
    let pick = free[rng.gen_range(0..free.len())];
    let net = NetSim::current();
    match rng.gen_range(0..100) {
        0..=21 => {
            c.kill(pick);
            Some((between(Duration::from_millis(100), Duration::from_secs(4)), Heal::Restart(pick)))
        }
        22..=24 => {
            // Only when every node runs and no other fault holds one, but a slow disk may
            // be on: then more is unsynced when the power goes.
            let held = active.iter().filter(|h| !matches!(h, Heal::FastDisk(_))).flat_map(|h| h.nodes());
            if held.count() > 0 || NODES.iter().any(|n| c.nodes[n].life != Life::Up) {
                return None;
            }
            for n in NODES {
                c.kill(n);
            }
            c.counts.outages += 1;
            Some((between(Duration::from_millis(100), Duration::from_secs(3)), Heal::RestartAll))
        }
        25..=29 => {
            // The disk starts failing; the node dies a little later.
            c.fail_syncs(pick);
            let incarnation = c.nodes[&pick].incarnation;
            drop(c);
            let cluster = cluster.clone();
            let after = between(Duration::from_millis(10), Duration::from_millis(500));
            madsim::task::spawn(async move {
                madsim::time::sleep(after).await;
                let mut c = cluster.lock().expect("cluster poisoned");
                // Unless the fault was already undone (the node restarted).
                if c.nodes[&pick].life == Life::Up && c.nodes[&pick].incarnation == incarnation {
                    c.kill(pick);
                }
            });
            Some((after + between(Duration::from_millis(100), Duration::from_secs(3)), Heal::Restart(pick)))
        }
        30..=36 => {
            c.set_flush_window(pick, between(Duration::from_millis(50), Duration::from_millis(800)));
            c.counts.slow_disks += 1;
            Some((between(Duration::from_millis(500), Duration::from_secs(5)), Heal::FastDisk(pick)))
        }
        37..=61 => {
            // A stall (GC, VM freeze) longer than the election timeout, most often of a
            // leader: the others elect a new one while it sleeps.
            let leader = c.busiest_leader().filter(|l| free.contains(l));
            let (node, is_leader) = match leader {
                Some(l) if rng.gen_bool(0.8) => (l, true),
                _ => (pick, false),
            };
            if c.nodes[&node].life != Life::Up {
                return None;
            }
            c.pause(node, is_leader);
            Some((between(ELECTION_TIMEOUT_MAX, Duration::from_secs(6)), Heal::Resume(node)))
        }
        62..=75 => {
            let id = c.madsim_id(pick);
            match rng.gen_range(0..3) {
                0 => net.clog_node_in(id),
                1 => net.clog_node_out(id),
                _ => net.clog_node(id),
            }
            c.counts.clogs += 1;
            tracing::info!(node = pick, "clogged");
            Some((between(Duration::from_millis(200), Duration::from_secs(5)), Heal::Unclog(pick)))
        }
        76..=89 => {
            let others: Vec<NodeId> = NODES.into_iter().filter(|n| *n != pick).collect();
            let to = others[rng.gen_range(0..others.len())];
            net.clog_link(c.madsim_id(pick), c.madsim_id(to));
            c.counts.link_clogs += 1;
            tracing::info!(from = pick, to, "link clogged");
            Some((between(Duration::from_millis(200), Duration::from_secs(5)), Heal::UnclogLink(pick, to)))
        }
        90..=94 => {
            // Not a fault but an operation the balancer performs: move a group's leader.
            let groups: Vec<u64> = c.spec.groups().collect();
            let group = groups[rng.gen_range(0..groups.len())];
            let to = NODES[rng.gen_range(0..NODES.len())];
            if let Some(g) = c.leader_of(group).and_then(|l| c.group(l, group)) {
                c.counts.transfers += 1;
                tracing::info!(group, to, "leader transfer");
                madsim::task::spawn(async move {
                    let _ = g.transfer_leader(to).await;
                });
            }
            None
        }
        _ => {
            if loss_on {
                return None;
            }
            let rate = rng.gen_range(0.0..loss_max);
            net.update_config(|cfg| cfg.packet_loss_rate = rate);
            c.counts.losses += 1;
            tracing::info!(rate, "packet loss");
            Some((between(Duration::from_millis(500), Duration::from_secs(5)), Heal::NoLoss))
        }
    }
}

fn undo(cluster: &SharedCluster, heal: Heal) {
    let mut c = cluster.lock().expect("cluster poisoned");
    let net = NetSim::current();
    match heal {
        Heal::Restart(n) => {
            if c.nodes[&n].life == Life::Up {
                // A failing disk whose node was not killed yet: kill it now.
                c.kill(n);
            }
            c.restart(n);
        }
        Heal::RestartAll => {
            for n in NODES {
                c.restart(n);
            }
        }
        Heal::FastDisk(n) => {
            let normal = c.spec.flush_window;
            c.set_flush_window(n, normal);
        }
        Heal::Resume(n) => c.resume(n),
        Heal::Unclog(n) => {
            net.unclog_node(c.madsim_id(n));
            tracing::info!(node = n, "unclogged");
        }
        Heal::UnclogLink(a, b) => {
            net.unclog_link(c.madsim_id(a), c.madsim_id(b));
            tracing::info!(from = a, to = b, "link unclogged");
        }
        Heal::NoLoss => {
            net.update_config(|cfg| cfg.packet_loss_rate = 0.0);
            tracing::info!("packet loss over");
        }
    }
}

/// Ends every fault that could still be active.
pub fn heal_all(cluster: &SharedCluster) {
    let mut c = cluster.lock().expect("cluster poisoned");
    let net = NetSim::current();
    net.update_config(|cfg| cfg.packet_loss_rate = 0.0);
    for id in NODES {
        let madsim_id = c.madsim_id(id);
        net.unclog_node(madsim_id);
        for other in NODES {
            net.unclog_link(madsim_id, c.madsim_id(other));
        }
        let normal = c.spec.flush_window;
        c.set_flush_window(id, normal);
        match c.nodes[&id].life {
            Life::Killed => c.restart(id),
            Life::Paused => c.resume(id),
            Life::Up => {}
        }
    }
}
