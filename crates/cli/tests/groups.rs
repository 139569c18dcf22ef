//! Consumer groups over real node processes (RFC 0005).
//!
//! - g1: three members over 12 partitions while a producer runs; one member is killed
//!   (dropped without leaving: evicted when its session times out), one joins, one
//!   leaves. Every record below the final committed offsets was delivered to some member,
//!   committed offsets never went down, the coordinator never had a partition assigned
//!   to two members, and the member that no change involved kept receiving throughout.
//! - g2: `consume --group` resumes from the committed offsets; `group describe` shows lag
//!   as high watermark minus committed offset; `group reset-offsets --dry-run` changes
//!   nothing; `group delete` refuses a group with members.
//! - g3: an online reset to a timestamp under a running member: it reads again from the
//!   new offsets within a bound, skipping nothing after them.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, GroupConfig, GroupConsumer, ProducerConfig, Record, TopicPartition};
use flotilla_testkit::{ClusterOptions, ProcessCluster};

/// What one member received: (partition, offset) with the time it came.
type Deliveries = Arc<Mutex<Vec<(u32, u64, Instant)>>>;

fn quick() -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(3),
        auto_commit_interval: Some(Duration::from_millis(500)),
        ..GroupConfig::default()
    }
}

/// Polls `member` until `stop`, recording deliveries. Returns the member to close or drop.
fn run_member(
    mut member: GroupConsumer,
    log: Deliveries,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<GroupConsumer> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = member.poll(Duration::from_millis(200)) => {
                    if let Ok(records) = r {
                        let now = Instant::now();
                        let mut l = log.lock().unwrap();
                        for r in records {
                            l.push((r.partition, r.offset, now));
                        }
                    }
                }
                _ = stop.notified() => return member,
            }
        }
    })
}

async fn committed(client: &Client, group: &str) -> BTreeMap<TopicPartition, u64> {
    let info = client.describe_group(group).await.expect("describe group");
    info.partitions.iter().filter_map(|p| Some(((p.topic.clone(), p.partition), p.committed?))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_members_come_and_go_while_a_producer_runs_and_no_record_is_lost() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "orders", 12).await;

    // A producer at a steady rate for the whole test.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (client, producing) = (client.clone(), producing.clone());
        tokio::spawn(async move {
            let p = client.producer("orders", ProducerConfig::default());
            let mut sent = 0u64;
            while producing.load(std::sync::atomic::Ordering::Relaxed) {
                let mut acks = Vec::new();
                for i in 0..12 {
                    acks.push(p.enqueue(keyed(&format!("k{i}"), &format!("v{sent}-{i}"))).await.expect("queued"));
                }
                for a in acks {
                    a.await.expect("acknowledged");
                }
                sent += 12;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };

    // The coordinator's view, sampled: committed offsets never go down, no partition is
    // assigned to two members.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (client, watching) = (client.clone(), watching.clone());
        tokio::spawn(async move {
            let mut high: BTreeMap<TopicPartition, u64> = BTreeMap::new();
            let mut samples = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(info) = client.describe_group("readers").await {
                    samples += 1;
                    let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
                    for m in &info.members {
                        for tp in &m.assigned {
                            if let Some(other) = owners.insert(tp.clone(), m.member_id.clone()) {
                                panic!("{tp:?} assigned to {other} and {} at epoch {}", m.member_id, info.epoch);
                            }
                        }
                    }
                    for p in &info.partitions {
                        if let Some(c) = p.committed {
                            let tp = (p.topic.clone(), p.partition);
                            let before = high.insert(tp.clone(), c).unwrap_or(0);
                            assert!(c >= before, "{tp:?}: committed offset went down from {before} to {c}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    let logs: Vec<Deliveries> = (0..4).map(|_| Deliveries::default()).collect();
    let stops: Vec<Arc<tokio::sync::Notify>> = (0..4).map(|_| Arc::new(tokio::sync::Notify::new())).collect();
    // The member's task: awaited later, when the member is stopped.
    #[allow(clippy::async_yields_async)]
    let join = async |i: usize| {
        let member = client.group_consumer("readers", &["orders"], quick()).await.expect("join");
        run_member(member, logs[i].clone(), stops[i].clone())
    };
    let steady = join(0).await;
    let killed = join(1).await;
    let leaving = join(2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Kill member 1: dropped without leaving, so its session must time out.
    stops[1].notify_one();
    let m1 = killed.await.unwrap();
    drop(m1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Member 3 joins.
    let joined = join(3).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Member 2 leaves properly (commits, then leaves).
    stops[2].notify_one();
    leaving.await.unwrap().close().await.expect("leave");
    tokio::time::sleep(Duration::from_secs(4)).await;

    producing.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = producer.await.unwrap();
    // Let the two members read everything and commit it.
    let highs: BTreeMap<u32, u64> = {
        let mut h = BTreeMap::new();
        for p in 0..12 {
            h.insert(p, client.list_offsets("orders", p).await.unwrap().1);
        }
        h
    };
    eventually("members caught up and committed", Duration::from_secs(30), async || {
        let c = committed(&client, "readers").await;
        let behind: Vec<_> =
            highs.iter().filter(|(p, h)| c.get(&("orders".to_string(), **p)).copied().unwrap_or(0) < **h).collect();
        if behind.is_empty() { Ok(()) } else { Err(format!("behind: {behind:?}")) }
    })
    .await;
    for i in [0, 3] {
        stops[i].notify_one();
    }
    let (m0, m3) = (steady.await.unwrap(), joined.await.unwrap());
    m0.close().await.expect("close");
    m3.close().await.expect("close");
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.await.unwrap();
    assert!(samples > 50, "the coordinator was sampled {samples} times");

    // Every record below the final committed offsets reached some member.
    let final_committed = committed(&client, "readers").await;
    let mut delivered: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for log in &logs {
        for (p, o, _) in log.lock().unwrap().iter() {
            delivered.entry(*p).or_default().insert(*o);
        }
    }
    let total: u64 = highs.values().sum();
    assert_eq!(total, sent, "the producer's records are all in the topic");
    for p in 0..12u32 {
        let c = final_committed[&("orders".to_string(), p)];
        assert_eq!(c, highs[&p], "partition {p} committed to its end");
        let got = delivered.get(&p).cloned().unwrap_or_default();
        let missing: Vec<u64> = (0..c).filter(|o| !got.contains(o)).collect();
        assert!(missing.is_empty(), "partition {p}: offsets {missing:?} below the commit {c} never delivered");
    }
    // The member no change involved kept receiving throughout: no gap of more than 2 s
    // between its deliveries while the producer ran.
    let l0 = logs[0].lock().unwrap();
    let times: Vec<Instant> = l0.iter().map(|(_, _, t)| *t).collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(gap < Duration::from_secs(2), "the steady member stopped receiving for {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_consume_with_a_group_resumes_from_its_commits_and_describe_shows_lag() {
    let _serial = serial().await;
    let options = ClusterOptions { metrics: true, ..ClusterOptions::default() };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "events", 4).await;
    let p = client.producer("events", ProducerConfig::default());
    for i in 0..400 {
        p.send(keyed(&format!("k{i}"), &format!("e{i}"))).await.expect("produce");
    }
    // First run: reads some, commits what it read, leaves.
    let first = cli_ok(&b, &["consume", "events", "--group", "cli", "-n", "150"]).await;
    assert_eq!(first.lines().count(), 150);
    let info = cli_ok(&b, &["group", "describe", "cli", "--output", "json"]).await;
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    let mut committed_total = 0;
    for part in info["partitions"].as_array().unwrap() {
        let (c, hw, lag) = (
            part["committed"].as_u64().unwrap_or(0),
            part["high_watermark"].as_u64().unwrap(),
            part["lag"].as_u64().unwrap(),
        );
        let p = part["partition"].as_u64().unwrap() as u32;
        assert_eq!(hw, client.list_offsets("events", p).await.unwrap().1);
        assert_eq!(lag, hw - c, "lag is the high watermark minus the committed offset");
        committed_total += c;
    }
    assert_eq!(committed_total, 150, "-n 150 commits what it printed, no more");
    assert!(info["members"].as_array().unwrap().is_empty(), "the CLI member left");
    // The same lag in /metrics, each partition exported once (by its leader).
    let mut exported: BTreeMap<String, u64> = BTreeMap::new();
    for id in cluster.ids() {
        let text = http_get(&cluster.metrics_addr(id).expect("metrics endpoint"), "/metrics");
        for line in text.lines().filter(|l| l.starts_with("flotilla_group_lag_records{group=\"cli\"")) {
            let (labels, value) = line.rsplit_once(' ').unwrap();
            let before = exported.insert(labels.to_string(), value.parse().unwrap());
            assert!(before.is_none(), "{labels} exported twice");
        }
    }
    assert_eq!(exported.len(), 4, "{exported:?}");
    assert_eq!(exported.values().sum::<u64>(), 400 - committed_total, "{exported:?}");
    // Second run: exactly what was not committed.
    let second = cli_ok(&b, &["consume", "events", "--group", "cli"]).await;
    assert_eq!(second.lines().count() as u64, 400 - committed_total);
    let mut all: BTreeSet<String> = first.lines().map(String::from).collect();
    all.extend(second.lines().map(String::from));
    assert!(all.len() as u64 >= 400 - (committed_total - 150), "nothing skipped");
    let text = cli_ok(&b, &["group", "describe", "cli"]).await;
    assert!(text.contains("LAG"), "{text}");
    assert!(cli_ok(&b, &["group", "list"]).await.contains("cli"));

    // A dry run changes nothing.
    let dry =
        cli_ok(&b, &["group", "reset-offsets", "cli", "--topic", "events", "--to", "earliest", "--dry-run"]).await;
    assert!(dry.contains("dry run"), "{dry}");
    let after: u64 = committed(&client, "cli").await.values().sum();
    assert_eq!(after, 400);
    // A group with a member is not deleted; without, it is.
    let member = client.group_consumer("cli", &["events"], quick()).await.unwrap();
    let refused = cli(&b, &["group", "delete", "cli"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("GROUP_NOT_EMPTY"), "{refused:?}");
    member.close().await.unwrap();
    cli_ok(&b, &["group", "delete", "cli"]).await;
    assert!(!cli_ok(&b, &["group", "list"]).await.contains("cli"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_an_online_reset_to_a_timestamp_moves_a_running_member_back() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "clicks", 2).await;
    let p = client.producer("clicks", ProducerConfig::default());
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for i in 0..100 {
        p.send(Record { timestamp_ms: now(), ..keyed(&format!("k{i}"), "old") }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..100 {
        p.send(Record { timestamp_ms: now(), ..keyed(&format!("k{i}"), "new") }).await.unwrap();
    }
    let log = Deliveries::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let member = client.group_consumer("resetters", &["clicks"], quick()).await.unwrap();
    let running = run_member(member, log.clone(), stop.clone());
    eventually("read to the end", Duration::from_secs(30), async || {
        let n = log.lock().unwrap().len();
        if n >= 200 { Ok(()) } else { Err(format!("{n} of 200")) }
    })
    .await;
    // Wait for the commit, then reset to the middle while the member runs.
    eventually("committed to the end", Duration::from_secs(10), async || {
        let total: u64 = committed(&client, "resetters").await.values().sum();
        if total == 200 { Ok(()) } else { Err(format!("{total}")) }
    })
    .await;
    let targets: BTreeMap<u32, u64> = {
        let mut t = BTreeMap::new();
        for part in 0..2 {
            t.insert(part, client.offset_for_time("clicks", part, middle).await.unwrap());
        }
        t
    };
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for part in 0..2 {
        ends.insert(part, client.list_offsets("clicks", part).await.unwrap().1);
    }
    let before = log.lock().unwrap().len();
    let reset_at = Instant::now();
    cli_ok(&b, &["group", "reset-offsets", "resetters", "--topic", "clicks", "--to", "timestamp", &middle.to_string()])
        .await;
    // Every record from the new offsets on comes again, within the bound.
    let bound = Duration::from_secs(5);
    eventually("read again from the reset offsets", bound, async || {
        let l = log.lock().unwrap();
        let again: BTreeSet<(u32, u64)> = l[before..].iter().map(|(p, o, _)| (*p, *o)).collect();
        let want: usize = targets.iter().map(|(p, t)| (*t..ends[p]).count()).sum();
        match again.len() >= want {
            true => Ok(()),
            false => Err(format!("{} of {want} again", again.len())),
        }
    })
    .await;
    let took = reset_at.elapsed();
    let l = log.lock().unwrap().clone();
    for (part, target) in &targets {
        let again: Vec<u64> = l[before..].iter().filter(|(p, _, _)| p == part).map(|(_, o, _)| *o).collect();
        assert_eq!(again.first(), Some(target), "partition {part} restarts at the reset offset");
        let expected: Vec<u64> = (*target..*target + again.len() as u64).collect();
        assert_eq!(again, expected, "partition {part}: nothing skipped after the reset");
    }
    eprintln!("the member read from the reset offsets {took:?} after the reset");
    stop.notify_one();
    running.await.unwrap().close().await.unwrap();
}
