//! The fault schedule: drawn from the seed before the run starts, applied between
//! simulation steps, and healed completely before the convergence phase.

use std::time::Duration;

use flotilla_types::NodeId;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::cluster::{Cluster, Control, host};
use crate::profile::{DEAD_AFTER_MS, Profile};
use crate::workload::MAIN_TOPIC;

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
    /// Controller profile. An operator drains a node (the controller moves every replica
    /// off it); at heal it is undrained, and the planner balances replicas back.
    Drain,
    /// Controller profile. An operator reassigns a partition of the main topic to three
    /// nodes (mostly one per zone; sometimes a set the zone rule refuses); at heal the
    /// move is sometimes cancelled, which rolls it back.
    Reassign,
    /// Controller profile. A node loses power and stays down past the grace period: the
    /// controller declares it dead and re-creates its replicas elsewhere; at heal it
    /// starts again, holds no replica, and is balanced back.
    NodeKill,
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

/// The kinds only the controller profile adds.
pub const CONTROLLER_FAULTS: [FaultKind; 3] = [FaultKind::Drain, FaultKind::Reassign, FaultKind::NodeKill];

/// How long a killed node stays down beyond the grace period, so the controller has
/// judged it dead (a new metadata leader first waits one lease) and started the repair.
const KILL_PAST_GRACE: std::ops::Range<u64> = 2_500..5_000;

/// A fault in effect, with what undoing it needs. `Drain` names the drained node and the
/// node the drain was sent through (the undrain goes there too, after it); `CancelMove`
/// is a reassignment to cancel at heal.
#[derive(Debug)]
pub enum Active {
    Cut { a: Vec<String>, b: Vec<String> },
    CutOneWay { from: String, to: String },
    Loss { nodes: Vec<String> },
    Delay,
    Hold { node: String, others: Vec<String> },
    Down { nodes: Vec<NodeId> },
    FsyncFail { node: NodeId },
    Drain { node: NodeId, via: NodeId },
    CancelMove { partition: u32, via: NodeId },
    None,
}

/// The nemesis's plan for one run.
pub struct Schedule {
    pub profile: Profile,
    pub enabled: Vec<FaultKind>,
    /// Faults start in [start, end) of simulated time, one at a time.
    pub start: Duration,
    pub end: Duration,
}

impl Schedule {
    /// The classic draw is exactly the one the regression seeds were found with: each of
    /// the thirteen kinds with probability 0.6 (at least one). The controller profile
    /// draws that, then each of its three kinds with probability 0.75 (at least one).
    pub fn draw(rng: &mut StdRng, profile: Profile, start: Duration, end: Duration) -> Schedule {
        let mut enabled: Vec<FaultKind> = ALL_FAULTS.iter().copied().filter(|_| rng.random_bool(0.6)).collect();
        if enabled.is_empty() {
            enabled.push(*ALL_FAULTS.choose(rng).expect("faults"));
        }
        if profile == Profile::Controller {
            let mut added: Vec<FaultKind> =
                CONTROLLER_FAULTS.iter().copied().filter(|_| rng.random_bool(0.75)).collect();
            if added.is_empty() {
                added.push(*CONTROLLER_FAULTS.choose(rng).expect("faults"));
            }
            enabled.extend(added);
        }
        Schedule { profile, enabled, start, end }
    }

    /// The next fault's kind, `remaining` before the fault phase ends; none when no
    /// enabled kind fits. Classic: any enabled kind. Controller: one of its own kinds
    /// half the time (when one is enabled), and a node kill only while it can last past
    /// the grace period.
    pub fn pick(&self, rng: &mut StdRng, remaining: Duration) -> Option<FaultKind> {
        if self.profile == Profile::Classic {
            return self.enabled.choose(rng).copied();
        }
        let fits = |k: &&FaultKind| **k != FaultKind::NodeKill || remaining >= kill_duration(KILL_PAST_GRACE.start);
        let (own, classic): (Vec<FaultKind>, Vec<FaultKind>) =
            self.enabled.iter().filter(fits).partition(|k| CONTROLLER_FAULTS.contains(k));
        let from = match (own.is_empty(), classic.is_empty()) {
            (true, true) => return None,
            (false, true) => own,
            (true, false) => classic,
            (false, false) => {
                if rng.random_bool(0.5) {
                    own
                } else {
                    classic
                }
            }
        };
        from.choose(rng).copied()
    }

    /// How long a fault of `kind` lasts (before it is cut at the end of the fault phase).
    pub fn duration(&self, kind: FaultKind, rng: &mut StdRng) -> Duration {
        let ms = match (self.profile, kind) {
            (Profile::Classic, _) => rng.random_range(300..5000),
            (_, FaultKind::NodeKill) => return kill_duration(rng.random_range(KILL_PAST_GRACE)),
            // Long enough that some drains finish before the undrain.
            (_, FaultKind::Drain) => rng.random_range(1000..8000),
            // The time until the move is cancelled (when it is); it goes on afterwards.
            (_, FaultKind::Reassign) => rng.random_range(200..3000),
            _ => rng.random_range(300..5000),
        };
        Duration::from_millis(ms)
    }
}

fn kill_duration(past_grace_ms: u64) -> Duration {
    Duration::from_millis(DEAD_AFTER_MS + past_grace_ms)
}

/// A running node to send an admin operation through (it forwards it to the metadata
/// leader).
fn via(cluster: &Cluster, rng: &mut StdRng) -> Option<NodeId> {
    cluster.admin_entry_points().choose(rng).copied()
}

/// Three nodes for a partition: one from each of three zones, or (one time in five)
/// any three, which the zone rule may refuse. The first becomes the preferred leader.
fn reassign_target(cluster: &Cluster, rng: &mut StdRng) -> Vec<NodeId> {
    let mut target: Vec<NodeId> = if rng.random_bool(0.8) {
        let mut zones: std::collections::BTreeMap<String, Vec<NodeId>> = std::collections::BTreeMap::new();
        for id in cluster.ids() {
            zones.entry(cluster.profile.zone(id)).or_default().push(id);
        }
        let mut zones: Vec<Vec<NodeId>> = zones.into_values().collect();
        zones.shuffle(rng);
        zones.iter().take(3).map(|nodes| *nodes.choose(rng).expect("a node per zone")).collect()
    } else {
        cluster.ids().collect::<Vec<_>>().choose_multiple(rng, 3).copied().collect()
    };
    target.shuffle(rng);
    target
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
        FaultKind::PowerLoss | FaultKind::PowerLossAll | FaultKind::NodeKill => {
            let victims = if kind == FaultKind::PowerLossAll { ids.clone() } else { vec![any] };
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
            let what = if kind == FaultKind::NodeKill {
                format!("node kill, down past the grace period ({DEAD_AFTER_MS} ms)")
            } else {
                "power loss".to_string()
            };
            (format!("{what}: {}", notes.join(", ")), victims.clone(), Active::Down { nodes: victims })
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
            // Classic: every node holds every partition. Otherwise one of the group's voters.
            let candidates: Vec<NodeId> = match cluster.profile {
                Profile::Classic => ids.iter().copied().filter(|i| *i != leader).collect(),
                Profile::Controller => {
                    cluster.group_voters(leader, group).into_iter().filter(|i| *i != leader).collect()
                }
            };
            let Some(to) = candidates.choose(rng).copied() else {
                return (format!("leader transfer: group {group} has no other voter"), vec![], Active::None);
            };
            let sent = cluster.control(leader, Control::TransferLeader { group, to });
            (
                format!("transfer leadership of group {group} from {} to {} (sent: {sent})", host(leader), host(to)),
                vec![leader, to],
                Active::None,
            )
        }
        FaultKind::Drain => {
            let Some(through) = via(cluster, rng) else {
                return ("drain: no node running".to_string(), vec![], Active::None);
            };
            let sent = cluster.control(through, Control::Drain { node: any });
            (
                format!("drain {} (through {}, sent: {sent})", host(any), host(through)),
                vec![any],
                Active::Drain { node: any, via: through },
            )
        }
        FaultKind::Reassign => {
            let Some(partitions) = cluster.replicas_of(MAIN_TOPIC) else {
                return (format!("reassign: {MAIN_TOPIC} not created yet"), vec![], Active::None);
            };
            let partition = rng.random_range(0..partitions.len() as u32);
            let target = reassign_target(cluster, rng);
            let cancel = rng.random_bool(0.3);
            let Some(through) = via(cluster, rng) else {
                return ("reassign: no node running".to_string(), vec![], Active::None);
            };
            let op = Control::Reassign { topic: MAIN_TOPIC.to_string(), partition, replicas: target.clone() };
            let sent = cluster.control(through, op);
            (
                format!(
                    "reassign {MAIN_TOPIC}/{partition} from {:?} to {target:?} (through {}, sent: {sent}){}",
                    partitions[partition as usize],
                    host(through),
                    if cancel { ", to be cancelled" } else { "" }
                ),
                target,
                if cancel { Active::CancelMove { partition, via: through } } else { Active::None },
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
        Active::Drain { node, via } => {
            let (through, sent) = send_admin(cluster, via, Control::Undrain { node });
            format!("undrain {} (through {through}, sent: {sent})", host(node))
        }
        Active::CancelMove { partition, via } => {
            let op = Control::CancelMove { topic: MAIN_TOPIC.to_string(), partition };
            let (through, sent) = send_admin(cluster, via, op);
            format!("cancel the move of {MAIN_TOPIC}/{partition} (through {through}, sent: {sent})")
        }
        Active::None => String::new(),
    }
}

/// Sends an admin operation through `via` if it runs (after the operation it follows
/// there), else through the running node with the lowest id.
pub fn send_admin(cluster: &Cluster, via: NodeId, op: Control) -> (String, bool) {
    let running = cluster.running_ids();
    let Some(through) = running.iter().copied().find(|n| *n == via).or_else(|| running.first().copied()) else {
        return ("no node".to_string(), false);
    };
    (host(through), cluster.control(through, op))
}
