//! The workload, drawn from the seed: producers (plain and retrying), consumers that
//! read to the end and sometimes start over, an admin process that creates and deletes
//! topics, in a third of the seeds a trimmer that deletes a prefix of the main topic's
//! records (delete-records; RFC 0003), in a third of the seeds (others than the trimmer's)
//! a consumer group whose members join, leave, die and come back as zombies that commit
//! from a stale generation (RFC 0005), and finally a full drain of every partition from
//! its log start. Every operation goes through the smart client and is recorded by
//! `testkit`'s recorder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{Client, ClientConfig, ErrorCode, ProducerConfig};
use flotilla_testkit::group::{self, Ending, GroupPlan, MemberDice};
use flotilla_testkit::history::History;
use flotilla_testkit::recorder::{Actor, Recorder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cluster::address;
use crate::net;

/// How long the final drain may take once the convergence phase is over.
pub const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long producers keep going after the last fault healed: the convergence phase.
pub const CONVERGE: Duration = Duration::from_secs(10);
/// The topic every producer and consumer works on.
pub const MAIN_TOPIC: &str = "t-0";

#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub producers: u64,
    pub retrying_producers: u64,
    pub consumers: u64,
    pub partitions: u32,
    pub admin: bool,
    pub faults_until: Duration,
    /// When set, the final drain waits until the run sets this flag: every move has
    /// finished and the cluster is at rest (controller profile). Not drawn from the seed.
    pub settled: Option<Arc<AtomicBool>>,
}

impl Plan {
    pub fn draw(rng: &mut StdRng, faults_until: Duration) -> Plan {
        let producers = rng.random_range(2..=4);
        Plan {
            seed: rng.random(),
            producers,
            retrying_producers: rng.random_range(0..=producers),
            consumers: rng.random_range(1..=2),
            partitions: rng.random_range(1..=4),
            admin: rng.random_bool(0.5),
            faults_until,
            settled: None,
        }
    }
}

/// Process ids in the history: producers 1.., consumers 100.., admin 200, drain 300,
/// trimmer 400, group members 500...
const CONSUMER_BASE: u64 = 100;
const ADMIN: u64 = 200;
const DRAIN: u64 = 300;
const TRIMMER: u64 = 400;
const MEMBER_BASE: u64 = 500;
/// Group members at once.
const MEMBER_SLOTS: u64 = 2;
/// The consumer group of the group workload.
const GROUP: &str = "g";

/// Whether a run deletes records: a third of the seeds, decided from the seed already
/// drawn, so that adding the trimmer changed no other draw of the plan.
fn trims(plan: &Plan) -> bool {
    plan.seed.is_multiple_of(3)
}

/// Whether a run has a consumer group: half of the seeds that do not trim (the group's
/// checks count on the log start staying put).
fn groups(plan: &Plan) -> bool {
    !trims(plan) && (plan.seed / 3).is_multiple_of(2)
}

pub async fn run(plan: Plan, cluster_size: u64, history: Arc<Mutex<History>>) -> Result<(), String> {
    // The client host starts with the simulation: its clock reads simulated time.
    let start = Instant::now();
    let bootstrap: Vec<String> = (1..=cluster_size).map(address).collect();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(3),
        retry_deadline: Duration::from_secs(8),
        connect_timeout: Duration::from_secs(1),
        create_topic_wait: Duration::from_secs(10),
        seed: Some(plan.seed),
        dialer: Some(net::dialer()),
        ..ClientConfig::default()
    };
    let client = loop {
        match Client::connect_with(&bootstrap.join(","), config.clone()).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "cluster not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("could not connect: {e}")),
        }
    };
    // Five batches in flight per partition (not the default one), so that the sweep
    // drives the producer's window: crossing batches, resends in order, renewals.
    let pipelined = ProducerConfig { max_in_flight: 5, ..ProducerConfig::default() };
    let plain = ProducerConfig { retry_indeterminate: false, ..pipelined.clone() };
    let rec = Recorder::with_history(client.clone(), plain, history, start);
    let retrying = rec.with_producer_settings(ProducerConfig { retry_indeterminate: true, ..pipelined });
    loop {
        match rec.create_topic(Actor::new(ADMIN, 0), MAIN_TOPIC, plan.partitions, 3).await {
            Ok(_) => break,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "create topic");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("could not create {MAIN_TOPIC}: {e}")),
        }
    }
    let stop_at = start + plan.faults_until + CONVERGE;
    let topics = Arc::new(Mutex::new(BTreeMap::from([(MAIN_TOPIC.to_string(), plan.partitions)])));
    let mut tasks = Vec::new();
    for p in 1..=plan.producers {
        let rec = if p <= plan.retrying_producers { retrying.clone() } else { rec.clone() };
        let rng = StdRng::seed_from_u64(plan.seed ^ p);
        tasks.push(tokio::spawn(produce(rec, p, plan.partitions, rng, stop_at)));
    }
    for c in 0..plan.consumers {
        let rng = StdRng::seed_from_u64(plan.seed ^ (CONSUMER_BASE + c));
        tasks.push(tokio::spawn(consume(rec.clone(), CONSUMER_BASE + c, plan.partitions, rng, stop_at)));
    }
    if plan.admin {
        let (rec, topics) = (retrying.clone(), topics.clone());
        let rng = StdRng::seed_from_u64(plan.seed ^ ADMIN);
        tasks.push(tokio::spawn(admin(rec, topics, rng, start + plan.faults_until)));
    }
    if trims(&plan) {
        let rng = StdRng::seed_from_u64(plan.seed ^ TRIMMER);
        tasks.push(tokio::spawn(trim(rec.clone(), plan.partitions, rng, start + plan.faults_until)));
    }
    if groups(&plan) {
        for slot in 0..MEMBER_SLOTS {
            let rng = StdRng::seed_from_u64(plan.seed ^ (MEMBER_BASE + slot));
            let slot = group::member(rec.clone(), MEMBER_BASE + slot, group_plan(), Dice(rng), move || {
                Instant::now() < stop_at
            });
            tasks.push(tokio::spawn(slot));
        }
    }
    for t in tasks {
        t.await.map_err(|e| format!("workload task failed: {e}"))?;
    }
    if let Some(settled) = &plan.settled {
        // The run bounds this wait (and reports what never finished).
        while !settled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let topics = topics.lock().expect("topics poisoned").clone();
    drain(&rec, &topics, Instant::now() + DRAIN_BOUND).await?;
    if groups(&plan) {
        group::group_offsets(&rec, DRAIN + 1, GROUP, MAIN_TOPIC, plan.partitions).await;
    }
    Ok(())
}

/// One member slot's choices, from its own seed (the draws of the simulation's seeds).
struct Dice(StdRng);

impl MemberDice for Dice {
    fn lifetime(&mut self) -> Duration {
        Duration::from_millis(self.0.random_range(2000..6000))
    }

    fn ending(&mut self) -> Ending {
        match self.0.random_range(0..10) {
            0..4 => Ending::Leave,
            4..7 => Ending::Die,
            _ => Ending::Zombie { pause: Duration::from_millis(self.0.random_range(3000..4000)) },
        }
    }
}

fn group_plan() -> GroupPlan {
    GroupPlan {
        group: GROUP.to_string(),
        topic: MAIN_TOPIC.to_string(),
        session_timeout: Duration::from_secs(2),
        poll_wait: POLL_WAIT,
        commit_every: Duration::from_millis(500),
    }
}

async fn produce(rec: Recorder, process: u64, partitions: u32, mut rng: StdRng, stop_at: Instant) {
    let mut seq = 0u64;
    while Instant::now() < stop_at {
        let partition = rng.random_range(0..partitions);
        let n = rng.random_range(1..=3);
        let values: Vec<String> = (0..n)
            .map(|_| {
                seq += 1;
                format!("p{process}-{seq}")
            })
            .collect();
        let _ = rec.send(Actor::new(process, 0), MAIN_TOPIC, partition, values).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..100))).await;
    }
}

async fn consume(rec: Recorder, process: u64, partitions: u32, mut rng: StdRng, stop_at: Instant) {
    let mut session = 0;
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut partition = 0;
    while Instant::now() < stop_at {
        partition = (partition + 1) % partitions;
        let at = positions.get(&partition).copied().unwrap_or(0);
        let actor = Actor::new(process, session);
        match rec.poll(actor, MAIN_TOPIC, partition, at, POLL_WAIT).await {
            Ok(read) => {
                positions.insert(partition, at + read.len() as u64);
            }
            // Deleted below the position: go on from the log start.
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                if let Ok((earliest, latest)) = rec.log_range(actor, MAIN_TOPIC, partition).await
                    && !(earliest..=latest).contains(&at)
                {
                    positions.insert(partition, earliest);
                }
            }
            Err(_) => {}
        }
        if rng.random_bool(0.05) {
            let _ = rec.list_offsets(actor, MAIN_TOPIC, partition).await;
        }
        if rng.random_bool(0.01) {
            // Start over from the beginning: a new session.
            session += 1;
            positions.clear();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
    }
}

/// How long one poll waits for records.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// Creates short-lived topics, writes to them and deletes some of them.
async fn admin(rec: Recorder, topics: Arc<Mutex<BTreeMap<String, u32>>>, mut rng: StdRng, stop_at: Instant) {
    let me = Actor::new(ADMIN, 0);
    let mut k = 0;
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
        k += 1;
        let name = format!("t-{k}");
        if rec.create_topic(me, &name, 1, 3).await.is_ok() {
            topics.lock().expect("topics poisoned").insert(name.clone(), 1);
            let values = (0..3).map(|i| format!("a{k}-{i}")).collect();
            let _ = rec.send(Actor::new(ADMIN + 1, 0), &name, 0, values).await;
        }
        if k > 1 && rng.random_bool(0.5) {
            let victim = format!("t-{}", rng.random_range(1..k));
            let present = topics.lock().expect("topics poisoned").contains_key(&victim);
            // A delete whose answer was lost may still have happened: forget the topic
            // either way, so the drain does not wait for it.
            if present {
                let _ = rec.delete_topic(me, &victim).await;
                topics.lock().expect("topics poisoned").remove(&victim);
            }
        }
    }
}

/// Deletes the records of a main-topic partition below a quarter of the way from its log
/// start to its end, at most twice, while faults run.
async fn trim(rec: Recorder, partitions: u32, mut rng: StdRng, stop_at: Instant) {
    let me = Actor::new(TRIMMER, 0);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(3000..8000))).await;
        if Instant::now() >= stop_at {
            return;
        }
        let partition = rng.random_range(0..partitions);
        if let Ok((earliest, latest)) = rec.log_range(me, MAIN_TOPIC, partition).await {
            let before = earliest + (latest - earliest) / 4;
            if before > earliest {
                let _ = rec.delete_records(me, MAIN_TOPIC, partition, before).await;
            }
        }
    }
}

/// Reads every partition of every live topic from its log start to its end.
async fn drain(rec: &Recorder, topics: &BTreeMap<String, u32>, deadline: Instant) -> Result<(), String> {
    let me = Actor::new(DRAIN, 0);
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            let (mut at, end) = loop {
                match rec.log_range(me, topic, partition).await {
                    Ok(range) => break range,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("drain: no high watermark for {topic}/{partition}: {e}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            while at < end {
                match rec.drain(me, topic, partition, at, POLL_WAIT).await {
                    Ok(read) => at += read.len() as u64,
                    // A delete-records whose answer was lost took effect meanwhile.
                    Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                        if let Ok((earliest, _)) = rec.log_range(me, topic, partition).await {
                            at = at.max(earliest);
                        }
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("drain: {topic}/{partition} stuck at offset {at} of {end}: {e}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
    Ok(())
}
