//! The workload a scenario's faults land on, every operation recorded by testkit's
//! [`Recorder`]:
//!
//! - producers (processes from 1), `PRODUCERS_PER_PARTITION` per partition, each sending
//!   small batches of unique values (`p<process>-<seq>`) to its partition, one batch
//!   outstanding at a time: a partition that stalls holds up only its own producers, so
//!   unavailability is measured per partition;
//! - one consumer per partition (process `CONSUMER_BASE + p`), one session that reads on
//!   from where its last poll ended, the same position again after an error;
//! - a high-watermark reader (process `LIST_OFFSETS_PROCESS`) for stale high watermarks;
//! - with [`Load::Group`], a consumer group of `MEMBER_SLOTS` members (processes
//!   `MEMBER_BASE + slot`) that join, read, commit and leave, die (dropped without a
//!   word) or come back as zombies committing at a stale epoch (testkit's `group`);
//! - with [`Load::Retention`], a topic whose records the cluster deletes on its own: a
//!   reader that finds its position deleted records the log start it sees (a
//!   delete-records in the history, so the checker counts what is below deleted, not
//!   lost) and reads on from there;
//! - after the faults heal and the load stops, the final drain (process
//!   `DRAIN_BASE + p`): every partition read from offset 0 to its high watermark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use flotilla_client::ErrorCode;
use flotilla_testkit::group::{self, Ending, GroupPlan, MemberDice};
use flotilla_testkit::{Actor, Recorder};
use tokio::task::JoinSet;

pub const PRODUCERS_PER_PARTITION: u64 = 2;
pub const CONSUMER_BASE: u64 = 100;
pub const LIST_OFFSETS_PROCESS: u64 = 200;
pub const DRAIN_BASE: u64 = 300;
pub const MEMBER_BASE: u64 = 500;
/// The group's committed offsets at the end.
pub const GROUP_OFFSETS_PROCESS: u64 = 400;
/// Group members at once.
const MEMBER_SLOTS: u64 = 3;
/// The consumer group of [`Load::Group`].
pub const GROUP: &str = "chaos-group";
/// Values per batch: 1 to this many.
const BATCH_VALUES_MAX: u64 = 4;
/// A producer's pause between two sends: bounds the history (under 40 sends/s per
/// producer).
const SEND_PAUSE: Duration = Duration::from_millis(25);
const POLL_WAIT: Duration = Duration::from_millis(500);
/// A poll or list-offsets that failed is tried again after this.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The final drain gives up after this.
const DRAIN_WITHIN: Duration = Duration::from_secs(90);

/// What runs besides the producers and readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    Plain,
    /// A consumer group whose members come and go.
    Group,
    /// The topic has retention: its log start moves while the load runs.
    Retention,
}

/// A group member's choices, from the run's seed: sessions of 2-6 s, of which 40 % end
/// by leaving, 30 % by dying and 30 % as zombies that commit 4-5 s later (past the 3 s
/// session timeout).
struct Dice(crate::rng::Rng);

impl MemberDice for Dice {
    fn lifetime(&mut self) -> Duration {
        self.0.millis(2_000, 6_000)
    }

    fn ending(&mut self) -> Ending {
        match self.0.range(0, 9) {
            0..4 => Ending::Leave,
            4..7 => Ending::Die,
            _ => Ending::Zombie { pause: self.0.millis(4_000, 5_000) },
        }
    }
}

fn group_plan(topic: &str) -> GroupPlan {
    GroupPlan {
        group: GROUP.to_string(),
        topic: topic.to_string(),
        session_timeout: Duration::from_secs(3),
        poll_wait: POLL_WAIT,
        commit_every: Duration::from_millis(500),
    }
}

/// The load running against one topic.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Workload {
    pub fn start(recorder: &Recorder, topic: &str, partitions: u32, seed: u64, load: Load) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for process in 1..=PRODUCERS_PER_PARTITION * u64::from(partitions) {
            let (r, t, stop) = (recorder.clone(), topic.to_string(), stop.clone());
            let partition = ((process - 1) % u64::from(partitions)) as u32;
            tasks.spawn(async move {
                let actor = Actor::new(process, 1);
                let mut rng = crate::rng::Rng::new(seed ^ process.wrapping_mul(0x51_7CC1_B727_220A));
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.range(1, BATCH_VALUES_MAX);
                    let values: Vec<String> = (0..n).map(|i| format!("p{process}-{}", seq + i)).collect();
                    seq += n;
                    if r.send(actor, &t, partition, values).await.is_err() {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    tokio::time::sleep(SEND_PAUSE).await;
                }
            });
        }
        for p in 0..partitions {
            let (r, t, stop) = (recorder.clone(), topic.to_string(), stop.clone());
            tasks.spawn(async move {
                let actor = Actor::new(CONSUMER_BASE + u64::from(p), 1);
                let mut position = 0;
                while !stop.load(Ordering::Relaxed) {
                    match r.poll(actor, &t, p, position, POLL_WAIT).await {
                        Ok(records) => {
                            if let Some(last) = records.last() {
                                position = last.offset.expect("a polled record has its offset") + 1;
                            }
                        }
                        Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) && load == Load::Retention => {
                            if let Ok(start) = r.retention_seen(actor, &t, p).await {
                                position = position.max(start);
                            }
                        }
                        Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                }
            });
        }
        if load == Load::Group {
            for slot in 0..MEMBER_SLOTS {
                let (r, t, stop) = (recorder.clone(), topic.to_string(), stop.clone());
                let dice = Dice(crate::rng::Rng::new(seed ^ (MEMBER_BASE + slot).wrapping_mul(0x2545_F491_4F6C_DD1D)));
                let running = move || !stop.load(Ordering::Relaxed);
                tasks.spawn(group::member(r, MEMBER_BASE + slot, group_plan(&t), dice, running));
            }
        }
        let (r, t, stop2) = (recorder.clone(), topic.to_string(), stop.clone());
        tasks.spawn(async move {
            let actor = Actor::new(LIST_OFFSETS_PROCESS, 1);
            let mut p = 0;
            while !stop2.load(Ordering::Relaxed) {
                let _ = r.list_offsets(actor, &t, p).await;
                p = (p + 1) % partitions;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        });
        Workload { stop, tasks }
    }

    /// Stops the load and waits for every outstanding operation to return (each is
    /// bounded by the client's retry deadline).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Reads every partition from offset 0 (with [`Load::Retention`], from its log start) up
/// to its high watermark, as the final drain; the records read per partition. With
/// [`Load::Group`], then records the group's committed offsets.
pub async fn drain(recorder: &Recorder, topic: &str, partitions: u32, load: Load) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + DRAIN_WITHIN;
    let mut read = vec![];
    for p in 0..partitions {
        let actor = Actor::new(DRAIN_BASE + u64::from(p), 1);
        let high = loop {
            match recorder.list_offsets(actor, topic, p).await {
                Ok(h) => break h,
                Err(e) if Instant::now() > deadline => bail!("drain: no high watermark for {topic}/{p}: {e}"),
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        };
        let mut position = 0;
        let mut count = 0;
        if load == Load::Retention {
            position = recorder.retention_seen(actor, topic, p).await.unwrap_or(0);
        }
        while position < high {
            match recorder.drain(actor, topic, p, position, POLL_WAIT).await {
                Ok(records) => {
                    count += records.len() as u64;
                    if let Some(last) = records.last() {
                        position = last.offset.expect("a drained record has its offset") + 1;
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("drain: {topic}/{p} stuck at offset {position} of {high}: {e}")
                }
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) && load == Load::Retention => {
                    if let Ok(start) = recorder.retention_seen(actor, topic, p).await {
                        position = position.max(start);
                    }
                }
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        read.push(count);
    }
    if load == Load::Group {
        group::group_offsets(recorder, GROUP_OFFSETS_PROCESS, GROUP, topic, partitions).await;
    }
    Ok(read)
}
