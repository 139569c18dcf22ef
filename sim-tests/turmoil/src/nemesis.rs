//! The fault schedule: drawn from the seed before the run starts, applied between
//! simulation steps, and healed completely before the convergence phase.

use std::time::Duration;

use flotilla_types::NodeId;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::cluster::{Cluster, Control, host};

/// The client host's name; it runs every workload process.
pub const CLIENT: &str = "client";

/// One kind of fault. Each seed enables a random subset of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// One node cut off from the other two, both ways.
    Partition,
    /// The node that leads the most groups cut off from the others.
    LeaderMinority,
    /// Traffic from one node to another dropped, the reverse direction kept.
    OneWay,
    /// The client cut off from the node that leads the most groups.
    ClientCut,
    /// Links between nodes fail and repair at random (turmoil's fail rate).
    Loss,
    /// Messages between nodes take up to hundreds of milliseconds.
    Delay,
    /// Every message to and from one node held in flight, then released at once.
    Hold,
    /// A node killed; its unsynced writes lost except a seeded prefix (a torn tail);
    /// it starts again when the fault heals.
    PowerLoss,
    /// Every node loses power at once (a data-centre outage), each keeping a seeded
    /// prefix of its unsynced writes; they start again when the fault heals.
    PowerLossAll,
    /// A node's process restarted; its disk (page cache included) intact.
    Restart,
    /// A node's fsyncs fail; at heal it restarts from what was durable.
    FsyncFail,
    /// A node's wall clock jumps forward or back.
    ClockJump,
    /// An admin operation: a partition's leader hands its leadership to another replica.
    LeaderTransfer,
}

pub const ALL_FAULTS: [FaultKind; 13] = [
    FaultKind::Partition,
    FaultKind::LeaderMinority,
    FaultKind::OneWay,
    FaultKind::ClientCut,
    FaultKind::Loss,
    FaultKind::Delay,
    FaultKind::Hold,
    FaultKind::PowerLoss,
    FaultKind::PowerLossAll,
    FaultKind::Restart,
    FaultKind::FsyncFail,
    FaultKind::ClockJump,
    FaultKind::LeaderTransfer,
];

/// A fault in effect, with what undoing it needs.
#[derive(Debug)]
pub enum Active {
    Cut { a: Vec<String>, b: Vec<String> },
    CutOneWay { from: String, to: String },
    Loss { nodes: Vec<String> },
    Delay,
    Hold { node: String, others: Vec<String> },
    Down { nodes: Vec<NodeId> },
    FsyncFail { node: NodeId },
    None,
}

/// The nemesis's plan for one run.
pub struct Schedule {
    pub enabled: Vec<FaultKind>,
    /// Faults start in [start, end) of simulated time, one at a time.
    pub start: Duration,
    pub end: Duration,
}

impl Schedule {
    pub fn draw(rng: &mut StdRng, start: Duration, end: Duration) -> Schedule {
        let mut enabled: Vec<FaultKind> = ALL_FAULTS.iter().copied().filter(|_| rng.random_bool(0.6)).collect();
        if enabled.is_empty() {
            enabled.push(*ALL_FAULTS.choose(rng).expect("faults"));
        }
        Schedule { enabled, start, end }
    }
}

fn others(cluster: &Cluster, node: NodeId) -> Vec<String> {
    cluster.ids().filter(|i| *i != node).map(host).collect()
}

/// Starts one fault of `kind`; returns what it did (for the trace and the history), the
/// nodes it touched and how to undo it.
pub fn inject(
    kind: FaultKind,
    sim: &mut turmoil::Sim<'_>,
    cluster: &Cluster,
    rng: &mut StdRng,
) -> (String, Vec<NodeId>, Active) {
    let ids: Vec<NodeId> = cluster.ids().collect();
    let any = *ids.choose(rng).expect("nodes");
    let leader = cluster.busiest_leader().map(|(id, _)| id).unwrap_or(any);
    match kind {
        FaultKind::Partition | FaultKind::LeaderMinority => {
            let minority = if kind == FaultKind::Partition { any } else { leader };
            let rest = others(cluster, minority);
            for o in &rest {
                sim.partition(host(minority), o.as_str());
            }
            (
                format!("partition {} | {}", host(minority), rest.join(",")),
                vec![minority],
                Active::Cut { a: vec![host(minority)], b: rest },
            )
        }
        FaultKind::OneWay => {
            let to = *ids.iter().filter(|i| **i != any).collect::<Vec<_>>().choose(rng).expect("two nodes");
            sim.partition_oneway(host(any), host(*to));
            (
                format!("one-way partition {} -> {}", host(any), host(*to)),
                vec![any, *to],
                Active::CutOneWay { from: host(any), to: host(*to) },
            )
        }
        FaultKind::ClientCut => {
            sim.partition(CLIENT, host(leader));
            (
                format!("client cut from {}", host(leader)),
                vec![leader],
                Active::Cut { a: vec![CLIENT.to_string()], b: vec![host(leader)] },
            )
        }
        FaultKind::Loss => {
            let rate = rng.random_range(0.001..0.02);
            let nodes: Vec<String> = ids.iter().map(|i| host(*i)).collect();
            for a in &nodes {
                for b in &nodes {
                    if a < b {
                        sim.set_link_fail_rate(a.as_str(), b.as_str(), rate);
                    }
                }
            }
            (format!("link failures at {rate:.4} per step between nodes"), ids.clone(), Active::Loss { nodes })
        }
        FaultKind::Delay => {
            let max = Duration::from_millis(rng.random_range(50..600));
            sim.set_max_message_latency(max);
            (format!("message latency up to {} ms", max.as_millis()), ids.clone(), Active::Delay)
        }
        FaultKind::Hold => {
            let mut rest = others(cluster, any);
            rest.push(CLIENT.to_string());
            for o in &rest {
                sim.hold(host(any), o.as_str());
            }
            (format!("hold every message of {}", host(any)), vec![any], Active::Hold { node: host(any), others: rest })
        }
        FaultKind::PowerLoss | FaultKind::PowerLossAll => {
            let victims = if kind == FaultKind::PowerLoss { vec![any] } else { ids.clone() };
            let mut notes = Vec::new();
            for v in &victims {
                sim.crash(host(*v));
                cluster.running.lock().expect("running poisoned").remove(v);
                let engine = &cluster.engines[v];
                let unsynced = engine.unsynced_batches();
                let keep = rng.random_range(0..=unsynced);
                engine.power_loss(keep);
                notes.push(format!("{} kept {keep} of {unsynced} unsynced batches", host(*v)));
            }
            (format!("power loss: {}", notes.join(", ")), victims.clone(), Active::Down { nodes: victims })
        }
        FaultKind::Restart => {
            cluster.running.lock().expect("running poisoned").remove(&any);
            sim.bounce(host(any));
            (format!("restart {} (disk intact)", host(any)), vec![any], Active::None)
        }
        FaultKind::FsyncFail => {
            cluster.engines[&any].fail_syncs(true);
            (format!("fsync fails on {}", host(any)), vec![any], Active::FsyncFail { node: any })
        }
        FaultKind::LeaderTransfer => {
            let groups = cluster.led_partitions(leader);
            let Some(group) = groups.choose(rng).copied() else {
                return (format!("leader transfer: {} leads no partition", host(leader)), vec![], Active::None);
            };
            let to = *ids.iter().filter(|i| **i != leader).collect::<Vec<_>>().choose(rng).expect("two nodes");
            let sent = cluster.control(leader, Control::TransferLeader { group, to: *to });
            (
                format!("transfer leadership of group {group} from {} to {} (sent: {sent})", host(leader), host(*to)),
                vec![leader, *to],
                Active::None,
            )
        }
        FaultKind::ClockJump => {
            let by = rng.random_range(-86_400_000i64..86_400_000);
            cluster.clocks[&any].jump(by);
            (format!("clock of {} jumps by {by} ms", host(any)), vec![any], Active::None)
        }
    }
}

/// Undoes one fault; returns what it did.
pub fn heal(active: Active, sim: &mut turmoil::Sim<'_>, cluster: &Cluster, default_latency: Duration) -> String {
    match active {
        Active::Cut { a, b } => {
            for x in &a {
                for y in &b {
                    sim.repair(x.as_str(), y.as_str());
                }
            }
            format!("repair {} | {}", a.join(","), b.join(","))
        }
        Active::CutOneWay { from, to } => {
            sim.repair_oneway(from.as_str(), to.as_str());
            format!("repair one-way {from} -> {to}")
        }
        Active::Loss { nodes } => {
            for a in &nodes {
                for b in &nodes {
                    if a < b {
                        sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                        sim.repair(a.as_str(), b.as_str());
                    }
                }
            }
            "link failures off".to_string()
        }
        Active::Delay => {
            sim.set_max_message_latency(default_latency);
            format!("message latency back to {} ms", default_latency.as_millis())
        }
        Active::Hold { node, others } => {
            for o in &others {
                sim.release(node.as_str(), o.as_str());
            }
            format!("release {node}")
        }
        Active::Down { nodes } => {
            for n in &nodes {
                sim.bounce(host(*n));
            }
            format!("start {}", nodes.iter().map(|n| host(*n)).collect::<Vec<_>>().join(","))
        }
        Active::FsyncFail { node } => {
            // A node whose fsync failed cannot trust its page cache (PostgreSQL's
            // fsyncgate): it crashes and recovers from what was durable.
            cluster.engines[&node].fail_syncs(false);
            sim.crash(host(node));
            cluster.running.lock().expect("running poisoned").remove(&node);
            cluster.engines[&node].power_loss(0);
            sim.bounce(host(node));
            format!("fsync works again on {}; it restarted from its durable state", host(node))
        }
        Active::None => String::new(),
    }
}
