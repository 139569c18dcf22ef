//! The scenarios: which fault each cycle injects, on whom, for how long. Every choice is
//! drawn from the run's seed ([`Rng`]); the targets (a partition's leader, the metadata
//! leader) are looked up from the cluster when the fault lands.

use std::time::{Duration, Instant};

use flotilla_client::{Client, NodeId};
use flotilla_testkit::Recorder;

use crate::cluster::{Cluster, Disk, State};
use crate::proxy::{Proxy, Shape};
use crate::rng::Rng;
use crate::workload::Load;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader of a random partition; restart it at the heal.
    KillLeader,
    /// SIGKILL a follower of a random partition.
    KillFollower,
    /// SIGKILL the metadata group's leader (the controller).
    KillMetadataLeader,
    /// SIGKILL every node at once; restart them all at the heal.
    KillAll,
    /// SIGSTOP the leader of a random partition past the election timeout; SIGCONT.
    PauseLeader,
    /// The leader of a random partition cut from every other node (the client still
    /// reaches it).
    PartitionLeader,
    /// The nodes split into a random majority and minority.
    PartitionMajority,
    /// Two nodes (one a partition leader) cut from each other; a third hears both.
    PartitionBridge,
    /// Packets from a partition leader to the other nodes dropped; the other way works.
    PartitionOneWay,
    /// The client cut from a partition leader; the nodes hear each other.
    ClientCut,
    /// The link between a partition leader and one follower cut and healed every 0.5–1.5 s.
    Flapping,
    /// Every node killed and its disk's unsynced writes dropped ([`Disk::PowerFs`]);
    /// all restarted at the heal.
    PowerLoss,
    /// A partition reassigned to another replica set (one replica swapped for the spare
    /// node), then its leader killed while the move runs.
    KillReassign,
    /// Every node restarted gracefully (SIGTERM, start again), one after the other, as
    /// an operator's rolling restart or upgrade does.
    RollingRestart,
    /// A node drained through the admin API (its replicas move to the others) under
    /// load; undrained at the heal.
    DrainUnderLoad,
    /// A partition leader's disk fails every sync (EIO) ([`Disk::PowerFs`]); at the heal
    /// the disk works again and the node is restarted, as an operator would after
    /// replacing the volume.
    FsyncErrors,
    /// A partition leader's disk is full: no space reported, every write that grows a
    /// file refused (ENOSPC); at the heal space is freed and the node restarted.
    DiskFull,
    /// A partition leader's wall clock skewed by up to five minutes either way, then
    /// jumping about every 1–3 s while the fault holds (libfaketime); set right at the
    /// heal. Monotonic time is untouched, as NTP leaves it.
    ClockSkew,
    /// Every node-to-node link delayed per chunk by a jittered delay (the TCP proxy):
    /// messages on different connections overtake each other.
    NetDelay,
    /// The links to and from a partition leader lossy (the TCP proxy): chunks held for a
    /// retransmission timeout, connections reset now and then.
    NetLoss,
    /// A node stopped (SIGTERM), one of its files damaged (a bit flipped in its WAL, a
    /// table or the MANIFEST, or a table cut short), and started again; at the heal it
    /// is replaced by a new node as docs/operating.md says for a corrupt store.
    CorruptFile,
    /// A partition leader killed and its data directory emptied (a lost disk); its start
    /// on the empty directory must be refused; it is replaced under its old id
    /// (`replace-node`) and, at the heal, started empty and caught up (RFC 0008).
    WipeReplace,
}

impl Fault {
    /// Whether node-to-node traffic must pass through the [`Proxy`] from the start.
    pub fn proxied(self) -> bool {
        matches!(self, Fault::NetDelay | Fault::NetLoss)
    }
}

/// One scenario of the suite.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub fault: Fault,
    pub nodes: u64,
    pub partitions: u32,
    /// Faults injected, one after the other.
    pub cycles: u32,
    /// How long each fault lasts (ms, drawn uniformly).
    pub fault_ms: (u64, u64),
    /// The quiet time after each heal (ms, drawn uniformly).
    pub gap_ms: (u64, u64),
    /// The nodes' data directories.
    pub disk: Disk,
    /// What runs besides the producers and readers.
    pub load: Load,
    /// Flags given to every node besides the runner's own.
    pub node_args: &'static [&'static str],
    /// Nodes that can join later (replacements), beyond `nodes`.
    pub spares: u64,
}

const fn scenario(name: &'static str, about: &'static str, fault: Fault, nodes: u64, fault_ms: (u64, u64)) -> Scenario {
    Scenario {
        name,
        about,
        fault,
        nodes,
        partitions: 3,
        cycles: 4,
        fault_ms,
        gap_ms: (2_000, 4_000),
        disk: Disk::Host,
        load: Load::Plain,
        node_args: &[],
        spares: 0,
    }
}

/// Every scenario, in the order `all` runs them.
pub const ALL: &[Scenario] = &[
    scenario("kill-leader", "kill -9 of a partition leader, restarted", Fault::KillLeader, 3, (3_000, 8_000)),
    scenario("kill-follower", "kill -9 of a partition follower, restarted", Fault::KillFollower, 3, (3_000, 8_000)),
    scenario(
        "kill-metadata-leader",
        "kill -9 of the metadata leader (the controller), restarted",
        Fault::KillMetadataLeader,
        3,
        (3_000, 8_000),
    ),
    scenario("kill-all", "kill -9 of every node at once, all restarted", Fault::KillAll, 3, (1_000, 3_000)),
    Scenario {
        disk: Disk::PowerFs,
        ..scenario(
            "power-loss",
            "every node loses power (kill -9, then its disk drops what it had not synced), all restarted",
            Fault::PowerLoss,
            3,
            (1_000, 3_000),
        )
    },
    scenario(
        "pause-leader",
        "SIGSTOP of a partition leader past the election timeout, then SIGCONT",
        Fault::PauseLeader,
        3,
        (3_000, 8_000),
    ),
    scenario(
        "partition-leader",
        "a partition leader cut from the other nodes (leader in the minority)",
        Fault::PartitionLeader,
        3,
        (5_000, 10_000),
    ),
    scenario(
        "partition-majority",
        "five nodes split into a random majority and minority",
        Fault::PartitionMajority,
        5,
        (5_000, 10_000),
    ),
    scenario(
        "partition-bridge",
        "a leader and one other node cut from each other, a third node hearing both",
        Fault::PartitionBridge,
        3,
        (5_000, 10_000),
    ),
    scenario(
        "partition-one-way",
        "packets from a partition leader to its peers dropped, the other way delivered",
        Fault::PartitionOneWay,
        3,
        (5_000, 10_000),
    ),
    scenario("client-cut", "the client cut from a partition leader", Fault::ClientCut, 3, (5_000, 10_000)),
    scenario(
        "flapping",
        "the link between a leader and a follower cut and healed every 0.5-1.5 s",
        Fault::Flapping,
        3,
        (6_000, 10_000),
    ),
    scenario(
        "kill-reassign",
        "four nodes; a partition reassigned, its leader killed while the move runs",
        Fault::KillReassign,
        4,
        (3_000, 8_000),
    ),
    scenario(
        "rolling-restart",
        "every node restarted gracefully (SIGTERM), one after the other",
        Fault::RollingRestart,
        3,
        (500, 1_000),
    ),
    scenario(
        "drain-under-load",
        "four nodes; one drained through the admin API while the load runs, then undrained",
        Fault::DrainUnderLoad,
        4,
        (8_000, 15_000),
    ),
    Scenario {
        disk: Disk::PowerFs,
        ..scenario(
            "fsync-errors",
            "a partition leader's disk fails every fsync (EIO), then works again; the node restarted",
            Fault::FsyncErrors,
            3,
            (3_000, 6_000),
        )
    },
    Scenario {
        disk: Disk::PowerFs,
        ..scenario(
            "disk-full",
            "a partition leader's disk is full (no space, writes refused with ENOSPC), then freed; the node restarted",
            Fault::DiskFull,
            3,
            (3_000, 6_000),
        )
    },
    scenario(
        "clock-skew",
        "a partition leader's wall clock skewed up to 5 minutes either way and jumping, then set right",
        Fault::ClockSkew,
        3,
        (6_000, 10_000),
    ),
    Scenario {
        load: Load::Group,
        ..scenario(
            "group-member-kills",
            "a consumer group whose members die, leave and come back as zombies; kill -9 of the metadata leader (the group coordinator)",
            Fault::KillMetadataLeader,
            3,
            (3_000, 8_000),
        )
    },
    Scenario {
        load: Load::Retention,
        // About 4 s of the workload's batches per partition: a follower killed for
        // longer comes back behind the log start and catches up from a snapshot.
        node_args: &["--retention-bytes", "16384", "--retention-check-interval-ms", "1000"],
        ..scenario(
            "retention-under-load",
            "retention deleting the log as it is written (16 KiB per partition); kill -9 of a follower, restarted behind the log start",
            Fault::KillFollower,
            3,
            (3_000, 8_000),
        )
    },
    Scenario {
        spares: 4,
        ..scenario(
            "corrupt-file",
            "a node stopped, a bit flipped in its WAL, a table or the MANIFEST (or a table cut short), started; replaced by a new node",
            Fault::CorruptFile,
            3,
            (2_000, 4_000),
        )
    },
    scenario(
        "wipe-replace",
        "a partition leader's disk lost (kill -9, directory emptied), refused under its id, replaced with replace-node, started empty",
        Fault::WipeReplace,
        3,
        (2_000, 4_000),
    ),
    scenario(
        "net-delay",
        "every node-to-node link delayed by up to 200 ms per chunk, jittered (a TCP proxy); streams overtake each other",
        Fault::NetDelay,
        3,
        (6_000, 10_000),
    ),
    scenario(
        "net-loss",
        "the links of a partition leader lossy (a TCP proxy): stalls of 0.2-1 s as retransmissions, connections reset",
        Fault::NetLoss,
        3,
        (6_000, 10_000),
    ),
];

/// What `make chaos-ci` runs: a few minutes.
pub const CI: &[&str] = &["kill-leader", "pause-leader", "partition-leader"];

pub fn find(name: &str) -> Option<Scenario> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// What a fault did, so that it can be undone, and what it touched.
#[derive(Debug, Default)]
pub struct Injected {
    /// When the fault was in force (run time, ms): sends invoked after it met it.
    pub at_ms: u64,
    pub note: String,
    pub nodes: Vec<NodeId>,
    /// Partitions whose leader the fault touched: their failover is measured.
    pub affected: Vec<u32>,
    restart: Vec<NodeId>,
    resume: Vec<NodeId>,
    net: bool,
    /// For flapping: the link toggled while the fault holds.
    flap: Option<(NodeId, NodeId)>,
    /// A node whose disk faults are cleared at the heal, and which is then restarted.
    disk: Option<NodeId>,
    /// A node drained by the fault, undrained at the heal.
    undrain: Option<NodeId>,
    /// A node whose wall clock jumps while the fault holds and is set right at the heal.
    clock: Option<NodeId>,
    /// The proxy shaped links: cleared at the heal.
    proxy: bool,
    /// A node whose store was damaged: replaced by a new node at the heal.
    replace: Option<NodeId>,
    /// A node replaced under its own id: at the heal it starts empty, and the heal waits
    /// for its replacement to finish.
    rejoin: Option<NodeId>,
}

/// What a scenario's faults act on.
pub struct Ctx<'a> {
    pub cluster: &'a mut Cluster,
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    pub topic: &'a str,
    pub partitions: u32,
    /// Node-to-node traffic's proxy, for the scenarios that shape it.
    pub proxy: Option<&'a Proxy>,
}

/// Runs blocking cluster work (a restart waits for the node to listen) off the runtime's
/// async path.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Ctx<'_> {
    /// (leader, replicas) of `partition` as the cluster reports it, within a few seconds;
    /// a replica drawn from `rng` stands in for an unknown leader.
    async fn leader(&self, partition: u32, rng: &mut Rng) -> (NodeId, Vec<NodeId>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut replicas = vec![];
        while Instant::now() < deadline {
            if let Ok(Ok(t)) =
                tokio::time::timeout(Duration::from_secs(2), self.client.describe_topic(self.topic)).await
                && let Some(p) = t.partitions.get(partition as usize)
            {
                replicas = p.replicas.clone();
                if let Some(l) = p.leader
                    && self.cluster.state(l) == State::Running
                {
                    return (l, replicas);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if replicas.is_empty() {
            replicas = self.cluster.ids();
        }
        (rng.pick(&replicas), replicas)
    }

    /// The partitions `nodes` lead now.
    async fn led_by(&self, nodes: &[NodeId]) -> Vec<u32> {
        match tokio::time::timeout(Duration::from_secs(3), self.client.describe_topic(self.topic)).await {
            Ok(Ok(t)) => t
                .partitions
                .iter()
                .filter(|p| p.leader.is_some_and(|l| nodes.contains(&l)))
                .map(|p| p.partition)
                .collect(),
            _ => vec![],
        }
    }

    async fn metadata_leader(&self, rng: &mut Rng) -> NodeId {
        for _ in 0..10 {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), self.client.describe_cluster()).await
                && let Some(l) = c.metadata_leader
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        rng.pick(&self.cluster.ids())
    }

    /// `", also the metadata leader"` when `node` leads the metadata group now: failover
    /// then waits for a new controller too.
    async fn controller_note(&self, node: NodeId) -> &'static str {
        match tokio::time::timeout(Duration::from_secs(2), self.client.describe_cluster()).await {
            Ok(Ok(c)) if c.metadata_leader == Some(node) => ", also the metadata leader",
            _ => "",
        }
    }

    fn others(&self, of: &[NodeId]) -> Vec<NodeId> {
        self.cluster.ids().into_iter().filter(|i| !of.contains(i)).collect()
    }
}

impl Scenario {
    /// Injects one fault and records it in the history.
    pub async fn inject(&self, ctx: &mut Ctx<'_>, rng: &mut Rng) -> anyhow::Result<Injected> {
        let partition = rng.range(0, u64::from(ctx.partitions) - 1) as u32;
        let mut i = Injected::default();
        match self.fault {
            Fault::KillLeader => {
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                i.note = format!("kill -9 n{leader} (leader of partition {partition}{also})");
                i.nodes = vec![leader];
                i.restart = vec![leader];
                ctx.recorder.fault(&i.note, i.nodes.clone());
                blocking(|| ctx.cluster.kill(leader));
            }
            Fault::KillFollower => {
                let (leader, replicas) = ctx.leader(partition, rng).await;
                let followers: Vec<NodeId> = replicas.into_iter().filter(|r| *r != leader).collect();
                let victim = if followers.is_empty() { rng.pick(&ctx.others(&[leader])) } else { rng.pick(&followers) };
                i.affected = ctx.led_by(&[victim]).await;
                let also = ctx.controller_note(victim).await;
                i.note = format!("kill -9 n{victim} (follower of partition {partition}{also})");
                i.nodes = vec![victim];
                i.restart = vec![victim];
                ctx.recorder.fault(&i.note, i.nodes.clone());
                blocking(|| ctx.cluster.kill(victim));
            }
            Fault::KillMetadataLeader => {
                let leader = ctx.metadata_leader(rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("kill -9 n{leader} (metadata leader)");
                i.nodes = vec![leader];
                i.restart = vec![leader];
                ctx.recorder.fault(&i.note, i.nodes.clone());
                blocking(|| ctx.cluster.kill(leader));
            }
            Fault::KillAll => {
                let all = ctx.cluster.ids();
                i.affected = (0..ctx.partitions).collect();
                i.note = "kill -9 of every node".to_string();
                i.nodes = all.clone();
                i.restart = all.clone();
                ctx.recorder.fault(&i.note, i.nodes.clone());
                blocking(|| all.iter().for_each(|n| ctx.cluster.kill(*n)));
            }
            Fault::PowerLoss => {
                let all = ctx.cluster.ids();
                i.affected = (0..ctx.partitions).collect();
                i.nodes = all.clone();
                i.restart = all.clone();
                let at = ctx.recorder.fault("power loss of every node", all.clone());
                let lost: Vec<u64> = blocking(|| {
                    all.iter().for_each(|n| ctx.cluster.kill(*n));
                    all.iter().map(|n| ctx.cluster.power_loss(*n)).collect()
                });
                i.note = format!("power loss of every node (history #{at}); unsynced bytes dropped per node: {lost:?}");
            }
            Fault::PauseLeader => {
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                i.note = format!("SIGSTOP n{leader} (leader of partition {partition}{also})");
                i.nodes = vec![leader];
                i.resume = vec![leader];
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.pause(leader);
            }
            Fault::PartitionLeader => {
                let (leader, _) = ctx.leader(partition, rng).await;
                let others = ctx.others(&[leader]);
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                i.note = format!("isolate n{leader} (leader of partition {partition}{also}) from {others:?}");
                i.nodes = vec![leader];
                i.net = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.net().split(&[leader], &others)?;
            }
            Fault::PartitionMajority => {
                let mut ids = ctx.cluster.ids();
                rng.shuffle(&mut ids);
                let minority: Vec<NodeId> = ids[..ids.len() / 2].to_vec();
                let majority: Vec<NodeId> = ids[ids.len() / 2..].to_vec();
                i.affected = ctx.led_by(&minority).await;
                i.note = format!("split minority {minority:?} from majority {majority:?}");
                i.nodes = minority.clone();
                i.net = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.net().split(&minority, &majority)?;
            }
            Fault::PartitionBridge => {
                let (leader, _) = ctx.leader(partition, rng).await;
                let other = rng.pick(&ctx.others(&[leader]));
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("cut n{leader} (leader of partition {partition}) from n{other}; the rest hear both");
                i.nodes = vec![leader, other];
                i.net = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.net().cut(leader, other)?;
            }
            Fault::PartitionOneWay => {
                let (leader, _) = ctx.leader(partition, rng).await;
                let others = ctx.others(&[leader]);
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("drop packets from n{leader} (leader of partition {partition}) to {others:?}");
                i.nodes = vec![leader];
                i.net = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                for o in others {
                    ctx.cluster.net().drop_from(leader, o)?;
                }
            }
            Fault::ClientCut => {
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("cut the client from n{leader} (leader of partition {partition})");
                i.nodes = vec![leader];
                i.net = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.net().cut_client(leader)?;
            }
            Fault::Flapping => {
                let (leader, replicas) = ctx.leader(partition, rng).await;
                let followers: Vec<NodeId> = replicas.into_iter().filter(|r| *r != leader).collect();
                let other = if followers.is_empty() { rng.pick(&ctx.others(&[leader])) } else { rng.pick(&followers) };
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("flap the link n{leader} (leader of partition {partition}) - n{other}");
                i.nodes = vec![leader, other];
                i.net = true;
                i.flap = Some((leader, other));
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.net().cut(leader, other)?;
            }
            Fault::KillReassign => {
                let (_, replicas) = ctx.leader(partition, rng).await;
                let spare = ctx.others(&replicas);
                let mut target = replicas.clone();
                if !spare.is_empty() && !target.is_empty() {
                    let out = rng.range(0, target.len() as u64 - 1) as usize;
                    target[out] = rng.pick(&spare);
                    rng.shuffle(&mut target);
                }
                let answer = match tokio::time::timeout(
                    Duration::from_secs(10),
                    ctx.client.reassign(ctx.topic, partition, &target),
                )
                .await
                {
                    Ok(Ok(id)) => format!("move {id}"),
                    Ok(Err(e)) => format!("refused: {e}"),
                    Err(_) => "no answer in 10 s".to_string(),
                };
                ctx.recorder
                    .fault(format!("reassign partition {partition} {replicas:?} -> {target:?} ({answer})"), vec![]);
                tokio::time::sleep(rng.millis(300, 2_000)).await;
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                i.note = format!("kill -9 n{leader} (leader of partition {partition}, moving to {target:?})");
                i.nodes = vec![leader];
                i.restart = vec![leader];
                ctx.recorder.fault(&i.note, i.nodes.clone());
                blocking(|| ctx.cluster.kill(leader));
            }
            Fault::RollingRestart => {
                let mut order = ctx.cluster.ids();
                rng.shuffle(&mut order);
                i.affected = (0..ctx.partitions).collect();
                i.nodes = order.clone();
                i.note = format!("rolling restart (SIGTERM, start) in the order {order:?}");
                ctx.recorder.fault(&i.note, order.clone());
                for n in order {
                    blocking(|| ctx.cluster.stop(n, Duration::from_secs(15)));
                    tokio::time::sleep(rng.millis(500, 1_500)).await;
                    blocking(|| ctx.cluster.restart(n))?;
                    // As an operator waits for a node to be back before the next one.
                    tokio::time::sleep(rng.millis(2_000, 4_000)).await;
                }
            }
            Fault::DrainUnderLoad => {
                let victim = rng.pick(&ctx.cluster.ids());
                i.affected = ctx.led_by(&[victim]).await;
                let answer = match tokio::time::timeout(Duration::from_secs(10), ctx.client.drain_node(victim)).await {
                    Ok(Ok(())) => "draining".to_string(),
                    Ok(Err(e)) => format!("refused: {e}"),
                    Err(_) => "no answer in 10 s".to_string(),
                };
                i.note = format!("drain n{victim} ({answer})");
                i.nodes = vec![victim];
                i.undrain = Some(victim);
                ctx.recorder.fault(&i.note, i.nodes.clone());
            }
            Fault::FsyncErrors | Fault::DiskFull => {
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                let what = if self.fault == Fault::FsyncErrors { "fails every fsync" } else { "is full" };
                i.note = format!("the disk of n{leader} (leader of partition {partition}{also}) {what}");
                i.nodes = vec![leader];
                i.disk = Some(leader);
                ctx.recorder.fault(&i.note, i.nodes.clone());
                let faults = ctx.cluster.disk_faults(leader).ok_or_else(|| anyhow::anyhow!("no faulty disk here"))?;
                let switch = if self.fault == Fault::FsyncErrors { &faults.failing_syncs } else { &faults.full };
                switch.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Fault::ClockSkew => {
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                let offset = skew(rng);
                i.note = format!(
                    "skew the wall clock of n{leader} (leader of partition {partition}{also}) by {offset:+} s, then jump it"
                );
                i.nodes = vec![leader];
                i.clock = Some(leader);
                ctx.recorder.fault(&i.note, i.nodes.clone());
                ctx.cluster.set_clock(leader, offset)?;
            }
            Fault::CorruptFile => {
                let victim = rng.pick(&ctx.cluster.ids());
                i.affected = ctx.led_by(&[victim]).await;
                let also = ctx.controller_note(victim).await;
                i.nodes = vec![victim];
                i.replace = Some(victim);
                let at = ctx.recorder.fault(format!("stop n{victim}{also} to damage its files"), vec![victim]);
                blocking(|| ctx.cluster.stop(victim, Duration::from_secs(15)));
                let damage = ctx.cluster.corrupt(victim, rng)?;
                let started = match blocking(|| ctx.cluster.restart(victim)) {
                    Ok(()) => "it started again".to_string(),
                    Err(_) => format!("it refused to start: {}", refusal(&ctx.cluster.log_tail(victim, 5))),
                };
                i.note = format!("n{victim}{also} stopped (history #{at}), {damage}; {started}");
                ctx.recorder.fault(&i.note, vec![victim]);
            }
            Fault::WipeReplace => {
                let (victim, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[victim]).await;
                let also = ctx.controller_note(victim).await;
                i.nodes = vec![victim];
                let at = ctx
                    .recorder
                    .fault(format!("kill -9 n{victim} (leader of partition {partition}{also}), disk lost"), vec![victim]);
                blocking(|| ctx.cluster.kill(victim));
                ctx.cluster.wipe(victim)?;
                if blocking(|| ctx.cluster.restart(victim)).is_ok() {
                    anyhow::bail!("n{victim} started on an empty data directory under its id, not replaced");
                }
                let started = Instant::now();
                let ready = replace_in_place(ctx, victim).await?;
                i.rejoin = Some(victim);
                i.restart = vec![victim];
                i.note = format!(
                    "n{victim}{also} killed (history #{at}), its data directory emptied; its start refused; \
                     replace-node ready in {:.1} s ({ready})",
                    started.elapsed().as_secs_f64()
                );
                ctx.recorder.fault(&i.note, vec![victim]);
            }
            Fault::NetDelay => {
                let proxy = ctx.proxy.ok_or_else(|| anyhow::anyhow!("no proxy in this cluster"))?;
                let low = rng.range(1, 20);
                let high = rng.range(60, 200);
                let ids = ctx.cluster.ids();
                i.affected = (0..ctx.partitions).collect();
                i.note = format!("delay every node-to-node link {low}-{high} ms per chunk");
                i.nodes = ids.clone();
                i.proxy = true;
                ctx.recorder.fault(&i.note, ids.clone());
                for a in &ids {
                    for b in ids.iter().filter(|b| *b != a) {
                        proxy.shape(*a, *b, Shape { delay_ms: (low, high), ..Shape::default() });
                    }
                }
            }
            Fault::NetLoss => {
                let proxy = ctx.proxy.ok_or_else(|| anyhow::anyhow!("no proxy in this cluster"))?;
                let (leader, _) = ctx.leader(partition, rng).await;
                i.affected = ctx.led_by(&[leader]).await;
                let also = ctx.controller_note(leader).await;
                let stall = rng.range(50, 250);
                let reset = rng.range(5, 20);
                let shape =
                    Shape { delay_ms: (0, 5), stall_per_mille: stall, stall_ms: (200, 1_000), reset_per_mille: reset };
                i.note = format!(
                    "lossy links to and from n{leader} (leader of partition {partition}{also}): {:.1} % of chunks held 200-1000 ms, {:.1} % reset",
                    stall as f64 / 10.0,
                    reset as f64 / 10.0
                );
                i.nodes = vec![leader];
                i.proxy = true;
                ctx.recorder.fault(&i.note, i.nodes.clone());
                for o in ctx.others(&[leader]) {
                    proxy.shape(leader, o, shape);
                    proxy.shape(o, leader, shape);
                }
            }
        }
        i.at_ms = ctx.recorder.time_ms();
        Ok(i)
    }

    /// Lets the fault hold for `d` (flapping toggles its link meanwhile).
    pub async fn hold(&self, ctx: &mut Ctx<'_>, i: &Injected, d: Duration, rng: &mut Rng) -> anyhow::Result<()> {
        if let Some(n) = i.clock {
            let end = Instant::now() + d;
            while Instant::now() < end {
                tokio::time::sleep(rng.millis(1_000, 3_000).min(end.saturating_duration_since(Instant::now()))).await;
                let offset = skew(rng);
                ctx.cluster.set_clock(n, offset)?;
                ctx.recorder.fault(format!("n{n}'s wall clock jumps to {offset:+} s"), vec![n]);
            }
            return Ok(());
        }
        let Some((a, b)) = i.flap else {
            tokio::time::sleep(d).await;
            return Ok(());
        };
        let end = Instant::now() + d;
        let mut cut = true;
        while Instant::now() < end {
            tokio::time::sleep(rng.millis(500, 1_500).min(end.saturating_duration_since(Instant::now()))).await;
            if cut {
                ctx.cluster.net().heal()?;
            } else {
                ctx.cluster.net().cut(a, b)?;
            }
            cut = !cut;
        }
        Ok(())
    }

    /// Undoes a fault and records the heal; what the heal did besides undoing it (a
    /// replacement), for the report.
    pub async fn heal(&self, ctx: &mut Ctx<'_>, i: &Injected) -> anyhow::Result<Option<String>> {
        if i.net {
            ctx.cluster.net().heal()?;
        }
        if i.proxy
            && let Some(p) = ctx.proxy
        {
            p.clear();
        }
        for n in &i.resume {
            ctx.cluster.resume(*n);
        }
        if let Some(n) = i.disk {
            if let Some(f) = ctx.cluster.disk_faults(n) {
                f.clear();
            }
            // Whatever the fault did to the node (a stopped replica, an exit), the
            // operator restarts it on its data once the disk works.
            blocking(|| ctx.cluster.kill(n));
        }
        if let Some(n) = i.clock {
            ctx.cluster.set_clock(n, 0)?;
        }
        if let Some(n) = i.undrain {
            let undrained = tokio::time::timeout(Duration::from_secs(10), ctx.client.undrain_node(n)).await;
            if !matches!(undrained, Ok(Ok(()))) {
                anyhow::bail!("undrain n{n}: {undrained:?}");
            }
        }
        let mut did = None;
        if let Some(victim) = i.replace {
            let how = replace(ctx, victim).await?;
            ctx.recorder.fault(&how, vec![victim]);
            did = Some(how);
        }
        ctx.recorder.heal(format!("heal: {}", i.note));
        for n in i.restart.iter().chain(&i.disk) {
            blocking(|| ctx.cluster.restart(*n))?;
        }
        if let Some(n) = i.rejoin {
            did = Some(rejoined(ctx, n).await?);
        }
        Ok(did)
    }
}

/// Starts replacing `victim` under its id and waits until its old replica has left every
/// group; what the replacement waited for.
async fn replace_in_place(ctx: &mut Ctx<'_>, victim: NodeId) -> anyhow::Result<String> {
    const WITHIN: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + WITHIN;
    let mut first = None;
    loop {
        // Refused while the cluster still hears from the node (for a moment after the kill).
        let started = first.is_some();
        match tokio::time::timeout(Duration::from_secs(10), ctx.client.replace_node(victim, started)).await {
            Ok(Ok(r)) if r.state == "ready" => {
                let groups = first.unwrap_or(r.groups_left.len());
                return Ok(format!("{groups} groups to leave"));
            }
            Ok(Ok(r)) if r.state == "removing" => {
                first.get_or_insert(r.groups_left.len());
            }
            Ok(Ok(r)) if started => anyhow::bail!("replacing n{victim}: the replacement vanished: {r:?}"),
            _ => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!("replacing n{victim}: not ready within {WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `n`, started empty after its replacement was ready, is back: the
/// replacement finished (it is in the metadata group again, a voter if it was one).
async fn rejoined(ctx: &mut Ctx<'_>, n: NodeId) -> anyhow::Result<String> {
    const WITHIN: Duration = Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), ctx.client.replace_node(n, true)).await;
        if let Ok(Ok(r)) = &r
            && r.state == "none"
        {
            return Ok(format!("n{n} back under its id, replacement finished {:.1} s after its start", started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > WITHIN {
            anyhow::bail!("n{n} started empty but its replacement did not finish within {WITHIN:?}: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The line of a node's log that says why it would not start (the corruption it found),
/// else its last line.
fn refusal(log: &str) -> String {
    let line = log.lines().rev().find(|l| l.contains("corrupt") || l.contains("Corruption")).or(log.lines().last());
    line.unwrap_or("(no log)").chars().take(400).collect()
}

/// Gives a damaged node's place to a new node, as docs/operating.md ("A node whose
/// storage is corrupt") tells an operator: the damaged node stays down, a spare joins on
/// an empty directory, takes its metadata vote if it had one, the damaged node is
/// drained (its replicas rebuilt from their peers) and removed. What happened.
async fn replace(ctx: &mut Ctx<'_>, victim: NodeId) -> anyhow::Result<String> {
    const WITHIN: Duration = Duration::from_secs(90);
    blocking(|| ctx.cluster.kill(victim));
    let new = ctx.cluster.spare().ok_or_else(|| anyhow::anyhow!("no spare node left to replace n{victim}"))?;
    let via = ctx.others(&[victim]).first().copied().ok_or_else(|| anyhow::anyhow!("no other node"))?;
    blocking(|| ctx.cluster.join(new, via))?;
    let started = Instant::now();
    let deadline = started + WITHIN;
    let mut voter = false;
    // Its metadata vote first: the new node must be a caught-up learner (retry until).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ctx.client.controllers()).await {
            Ok(Ok(c)) if !c.voters.contains(&victim) => break,
            Ok(Ok(c)) => {
                voter = true;
                let set: Vec<NodeId> = c.voters.iter().copied().filter(|v| *v != victim).chain([new]).collect();
                let _ = tokio::time::timeout(Duration::from_secs(10), ctx.client.set_controllers(&set)).await;
            }
            _ => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!("replacing n{victim}: n{new} did not take its metadata vote within {WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then its replicas, and the node itself.
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(5), ctx.client.drain_node(victim)).await;
        let removed = tokio::time::timeout(Duration::from_secs(5), ctx.client.remove_node(victim)).await;
        if matches!(removed, Ok(Ok(()))) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("replacing n{victim}: not removable within {WITHIN:?}: {removed:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ctx.cluster.retire(victim);
    let vote = if voter { ", took its metadata vote" } else { "" };
    Ok(format!(
        "n{victim} replaced: n{new} joined{vote}, n{victim} drained and removed in {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}

/// A wall-clock offset within five minutes either way, at least ten seconds off.
fn skew(rng: &mut Rng) -> i64 {
    let magnitude = rng.range(10, 300) as i64;
    if rng.range(0, 1) == 0 { -magnitude } else { magnitude }
}

/// Undoes whatever may still be in force: every rule removed, every node running.
pub async fn heal_all(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ctx.cluster.net().heal()?;
    if let Some(p) = ctx.proxy {
        p.clear();
    }
    for n in ctx.cluster.ids() {
        if let Some(f) = ctx.cluster.disk_faults(n) {
            f.clear();
        }
        ctx.cluster.set_clock(n, 0)?;
        match ctx.cluster.state(n) {
            State::Paused => ctx.cluster.resume(n),
            State::Down => blocking(|| ctx.cluster.restart(n))?,
            State::Running => {}
        }
    }
    ctx.recorder.heal("heal all");
    Ok(())
}
