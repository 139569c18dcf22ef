//! Quotas over real node processes (docs/security.md, "Quotas"): a principal's produce
//! bytes held to its quota by holding its answers back, visible in the answer and in the
//! metrics, while another principal goes on as before.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientConfig, ProducerConfig, Record};
use flotilla_proto::v1;
use flotilla_testkit::process::{ClusterOptions, ProcessCluster};
use flotilla_types::RecordBatch;

/// The quota of principal `slow`: 256 KiB of batches a second.
const SLOW_BYTES_PER_SEC: u64 = 256 * 1024;
/// Sends in flight per principal (each a closed loop of one record of 1 KiB).
const SENDERS: usize = 16;

/// Runs `SENDERS` closed loops of 1 KiB records to `topic` as `client` until `stop`;
/// returns the records acknowledged, counted live.
fn load(client: &Client, topic: &str, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let acked = Arc::new(AtomicU64::new(0));
    let producer = client.producer(topic, ProducerConfig::default());
    for _ in 0..SENDERS {
        let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let value = "q".repeat(1024);
            while !stop.load(Ordering::Relaxed) {
                if producer.send_to(0, Record::value(value.clone())).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    acked
}

/// The sum over every node of a counter (its lines that start with `prefix`).
fn metric_sum(cluster: &ProcessCluster, prefix: &str) -> f64 {
    let mut sum = 0.0;
    for id in cluster.ids() {
        let addr = cluster.metrics_addr(id).expect("metrics");
        for line in http_get(&addr, "/metrics").lines().filter(|l| l.starts_with(prefix)) {
            sum += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        }
    }
    sum
}

/// q10: principal `slow` has a produce quota of 256 KiB/s (a node's `[quotas."slow"]`);
/// over 30 s of closed-loop load the batch bytes appended for it stay within 10 % of
/// that, its answers carry the time they were held and the nodes count the holds, while
/// principal `fast`, with no quota, keeps the rate it had alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q10_a_produce_quota_holds_one_principal_to_its_rate() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quotas.toml");
    std::fs::write(&config, format!("[quotas.slow]\nproduce-bytes-per-sec = {SLOW_BYTES_PER_SEC}\n")).unwrap();
    let options = ClusterOptions {
        node_args: vec!["--config".into(), config.display().to_string()],
        metrics: true,
        ..ClusterOptions::default()
    };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let admin = ready_client(&cluster, 3).await;
    create_topic(&admin, "slow-t", 1).await;
    create_topic(&admin, "fast-t", 1).await;
    let as_principal = |id: &str| ClientConfig { client_id: id.to_string(), ..ClientConfig::default() };
    let slow = Client::connect_with(&cluster.bootstrap(), as_principal("slow")).await.unwrap();
    let fast = Client::connect_with(&cluster.bootstrap(), as_principal("fast")).await.unwrap();

    // `fast` alone, for its rate without the other.
    let stop = Arc::new(AtomicBool::new(false));
    let fast_acked = load(&fast, "fast-t", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, n0) = (Instant::now(), fast_acked.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let fast_alone = (fast_acked.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();

    // Both, `slow` past its first second of burst.
    let slow_acked = load(&slow, "slow-t", stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bytes_in = r#"flotilla_topic_bytes_in_total{topic="slow-t"}"#;
    let (t1, b1, n1) = (Instant::now(), metric_sum(&cluster, bytes_in), fast_acked.load(Ordering::Relaxed));
    let s1 = slow_acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let secs = t1.elapsed().as_secs_f64();
    let slow_rate = (metric_sum(&cluster, bytes_in) - b1) / secs;
    let slow_records = (slow_acked.load(Ordering::Relaxed) - s1) as f64 / secs;
    let fast_beside = (fast_acked.load(Ordering::Relaxed) - n1) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "slow: {slow_rate:.0} batch bytes/s ({slow_records:.0} records/s) against a quota of {SLOW_BYTES_PER_SEC}; \
         fast: {fast_alone:.0} records/s alone, {fast_beside:.0} beside slow"
    );
    let quota = SLOW_BYTES_PER_SEC as f64;
    assert!(
        (0.9 * quota..=1.1 * quota).contains(&slow_rate),
        "slow produced {slow_rate:.0} bytes/s, not within 10 % of {quota}"
    );
    // Without a quota it would go as fast as `fast` (far over 256 records/s here).
    assert!(fast_alone > 2.0 * slow_records, "fast alone {fast_alone:.0} records/s: the quota was not what held slow");
    // Two cores run the three nodes and both clients: allow for the noise of one run.
    assert!(fast_beside >= 0.7 * fast_alone, "fast fell from {fast_alone:.0} to {fast_beside:.0} records/s");
    let held = metric_sum(&cluster, r#"flotilla_quota_throttled_requests_total{kind="produce_bytes"}"#);
    assert!(held > 0.0, "no held answer counted");

    // One answer of a batch far over the quota says how long it was held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = admin.describe_topic("slow-t").await.unwrap().partitions[0].leader.expect("a leader");
    let value = "x".repeat(64 * 1024);
    let records: Vec<Record> = (0..8).map(|_| Record::value(value.clone())).collect();
    let batch = RecordBatch::encode(&records).unwrap();
    let mut raw = raw(&cluster, leader).await;
    let request = |id: &str| v1::ProduceRequest {
        client_id: id.into(),
        ..v1::ProduceRequest::new("slow-t", 0, &batch, flotilla_types::Acks::All)
    };
    let _burst = raw.produce(request("slow")).await.unwrap().into_inner();
    let started = Instant::now();
    let answer = raw.produce(request("slow")).await.unwrap().into_inner();
    assert!(answer.error.is_none(), "{:?}", answer.error);
    assert!(answer.throttle_time_ms >= 1_000, "held {} ms", answer.throttle_time_ms);
    assert!(started.elapsed() >= Duration::from_millis(u64::from(answer.throttle_time_ms)));
    let other = raw.produce(request("someone-else")).await.unwrap().into_inner();
    assert_eq!(other.throttle_time_ms, 0, "another principal is not held");
    // A client id over the limit is refused, and nothing is appended.
    let long = raw.produce(request(&"c".repeat(256))).await.unwrap().into_inner();
    assert_eq!(long.error.map(|e| e.code), Some(flotilla_types::ErrorCode::InvalidRequest as u32));
}

/// q11: quotas set through the cluster (`flotilla quota set`) reach every node without a
/// restart, come before the node's own, can be a default for every principal, and go
/// away with `flotilla quota delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q11_quotas_set_through_the_cluster_apply_on_every_node_at_once() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let admin = ready_client(&cluster, 3).await;
    create_topic(&admin, "q", 3).await;
    let bootstrap = cluster.bootstrap();
    cli_ok(&bootstrap, &["quota", "set", "--principal", "slow", "--requests-per-sec", "1"]).await;
    let listed = cli_ok(&bootstrap, &["quota", "list"]).await;
    assert!(listed.lines().any(|l| l.starts_with("slow") && l.trim_end().ends_with('1')), "{listed}");

    let batch = RecordBatch::encode(&[Record::value("v")]).unwrap();
    let request = |id: &str, partition| v1::ProduceRequest {
        client_id: id.into(),
        ..v1::ProduceRequest::new("q", partition, &batch, flotilla_types::Acks::All)
    };
    // Two requests in a row at each partition's leader: with one a second allowed, the
    // second is held, on every node.
    // (A leader may move meanwhile: then the partition is tried again at its leader.)
    let held_at_each_leader = async |id: &str| {
        let mut held = Vec::new();
        for p in 0..3 {
            let mut last = None;
            for _attempt in 0..5 {
                let Some(leader) = admin.describe_topic("q").await.unwrap().partitions[p as usize].leader else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let mut raw = raw(&cluster, leader).await;
                let first = raw.produce(request(id, p)).await.unwrap().into_inner();
                let second = raw.produce(request(id, p)).await.unwrap().into_inner();
                if first.error.is_none() && second.error.is_none() {
                    last = Some(second.throttle_time_ms);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            held.push(last.expect("two requests answered by the leader"));
        }
        held
    };
    // Every node's metadata replica has the quota a moment after the command returns.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow = held_at_each_leader("slow").await;
    assert!(slow.iter().all(|&ms| ms >= 500), "slow's second request was not held everywhere: {slow:?} ms");
    assert!(held_at_each_leader("other").await.iter().all(|&ms| ms == 0), "another principal was held");

    // A default for everyone without their own; then both removed.
    cli_ok(&bootstrap, &["quota", "set", "--default", "--requests-per-sec", "1"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let others = held_at_each_leader("other").await;
    assert!(others.iter().all(|&ms| ms >= 500), "the default did not hold another principal: {others:?}");
    cli_ok(&bootstrap, &["quota", "delete", "--default"]).await;
    cli_ok(&bootstrap, &["quota", "delete", "--principal", "slow"]).await;
    assert_eq!(cli_ok(&bootstrap, &["quota", "list"]).await.lines().count(), 1, "only the header is left");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(held_at_each_leader("slow").await.iter().all(|&ms| ms == 0), "slow is still held");
}
