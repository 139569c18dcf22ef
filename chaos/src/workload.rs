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
//! - after the faults heal and the load stops, the final drain (process
//!   `DRAIN_BASE + p`): every partition read from offset 0 to its high watermark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use flotilla_testkit::{Actor, Recorder};
use tokio::task::JoinSet;

pub const PRODUCERS_PER_PARTITION: u64 = 2;
pub const CONSUMER_BASE: u64 = 100;
pub const LIST_OFFSETS_PROCESS: u64 = 200;
pub const DRAIN_BASE: u64 = 300;
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

/// The load running against one topic.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Workload {
    pub fn start(recorder: &Recorder, topic: &str, partitions: u32, seed: u64) -> Workload {
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
                        Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                }
            });
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

/// Reads every partition from offset 0 up to its high watermark, as the final drain; the
/// records read per partition.
pub async fn drain(recorder: &Recorder, topic: &str, partitions: u32) -> anyhow::Result<Vec<u64>> {
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
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        read.push(count);
    }
    Ok(read)
}
