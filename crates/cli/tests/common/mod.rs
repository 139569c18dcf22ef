//! Helpers shared by the end-to-end tests: a cluster of real `flotilla node` processes on
//! RocksDB, talking gRPC, and a client that waits for it to be ready.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientError, PartitionId, Record, StartAt};
use flotilla_testkit::ProcessCluster;

/// The end-to-end tests run one at a time: each starts three node processes, and
/// several clusters at once on two cores would starve their elections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn cluster(nodes: u64) -> ProcessCluster {
    ProcessCluster::start(env!("CARGO_BIN_EXE_flotilla"), nodes)
}

/// Retries `f` until it succeeds or `within` passes.
pub async fn eventually<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        // An attempt that never returns fails the test at the deadline, never hangs it.
        let attempt = tokio::time::timeout_at(deadline.into(), f()).await;
        let Ok(attempt) = attempt else { panic!("{what}: an attempt still running after {within:?}") };
        match attempt {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A client connected once every node has registered and the metadata group has a leader.
pub async fn ready_client(c: &ProcessCluster, nodes: usize) -> Client {
    eventually("cluster ready", Duration::from_secs(60), async || {
        let client = Client::connect(&c.bootstrap()).await?;
        let info = client.describe_cluster().await?;
        if info.brokers.len() >= nodes && info.metadata_leader.is_some() {
            Ok(client)
        } else {
            Err(ClientError::Closed)
        }
    })
    .await
}

/// Creates a topic and waits until every partition has a leader.
pub async fn create_topic(client: &Client, name: &str, partitions: u32) {
    eventually("create topic", Duration::from_secs(30), async || {
        match client.create_topic(name, partitions, 3).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(flotilla_client::ErrorCode::TopicExists) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    eventually("partition leaders", Duration::from_secs(30), async || {
        let t = client.describe_topic(name).await?;
        if t.partitions.len() == partitions as usize && t.partitions.iter().all(|p| p.leader.is_some()) {
            Ok(())
        } else {
            Err(ClientError::Closed)
        }
    })
    .await;
}

/// Reads every partition of `topic` from the beginning to its current high watermark:
/// partition → [(offset, value)].
pub async fn drain(client: &Client, topic: &str, partitions: u32) -> BTreeMap<PartitionId, Vec<(u64, String)>> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let (_, end) =
            eventually("list offsets", Duration::from_secs(30), async || client.list_offsets(topic, p).await).await;
        let mut consumer = eventually("consumer", Duration::from_secs(30), async || {
            client.consumer(topic, p, StartAt::Beginning).await
        })
        .await;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.position() < end {
            assert!(Instant::now() < deadline, "partition {p}: stuck at {} of {end}", consumer.position());
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(records) => {
                    for r in records {
                        got.push((r.offset, String::from_utf8(r.record.value.to_vec()).expect("utf-8 values")));
                    }
                }
                Err(e) => {
                    assert!(e.code() != Some(flotilla_client::ErrorCode::CorruptBatch), "corrupt batch: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out.insert(p, got);
    }
    out
}

pub fn keyed(key: &str, value: &str) -> Record {
    Record { key: Some(key.to_string().into()), value: value.to_string().into(), ..Record::default() }
}

/// The node leading the most partitions of `topic`.
pub async fn busiest_leader(client: &Client, topic: &str) -> u64 {
    let t = client.describe_topic(topic).await.expect("describe topic");
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for p in &t.partitions {
        if let Some(l) = p.leader {
            *count.entry(l).or_default() += 1;
        }
    }
    count.into_iter().max_by_key(|(id, n)| (*n, u64::MAX - id)).expect("some leader").0
}
