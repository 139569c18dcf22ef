//! Share groups over real node processes (RFC 0007).
//!
//! - s1: four members of a key-ordered share group over two partitions, 1 % of the
//!   records rejected, one member killed (dropped without acknowledging or leaving) with
//!   records in hand. Every record is accepted exactly once or is in the dead-letter
//!   topic with its headers; the killed member's records are given to others after the
//!   lock timeout; no two records of one key were ever in flight at once (the history
//!   checker's share-group check judges).
//! - s2: the CLI: `consume --share-group` by two processes, `group describe` and `list`,
//!   `group dlq replay` putting dead letters back, `group delete`.
//! - s3: where a group starts a partition it never read is the group's setting (the
//!   README's walk-through: `-o beginning -n 100`, then a member without `-o` reads the
//!   rest), and a group's position is fixed when a member first reaches the partition.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{
    AckMode, Client, ProducerConfig, ShareConfig, ShareConsumer, ShareGroupConfig, ShareRecord, ShareStart, StartAt,
    dlq_headers,
};
use flotilla_testkit::checker::share::{ShareHistory, Span, check_share};

const RECORDS: usize = 2_000;
const KEYS: usize = 40;
const LOCK_MS: u64 = 2_000;

/// A delivery as a member saw it: when it was handed out, and when the member started
/// acknowledging it (`None`: never; the member died holding it).
#[derive(Debug, Clone)]
struct Delivery {
    member: usize,
    partition: u32,
    offset: u64,
    key: String,
    delivered: Instant,
    acked: Option<Instant>,
    deliveries: u32,
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    /// (partition, offset) accepted and not refused by the coordinator.
    accepted: Vec<(u32, u64)>,
    killed_at: Option<Instant>,
    /// Poll errors, for the report of a run that does not finish.
    errors: Vec<String>,
}

fn rejected(value: &str) -> bool {
    value.trim_start_matches('v').parse::<usize>().is_ok_and(|i| i % 100 == 7)
}

fn config() -> ShareGroupConfig {
    ShareGroupConfig {
        group: ShareConfig {
            max_deliveries: 3,
            lock_timeout_ms: LOCK_MS as u32,
            key_ordered: true,
            start: ShareStart::Earliest,
        },
        ack_mode: AckMode::Explicit,
        max_records: 100,
        session_timeout: Duration::from_secs(20),
        fetch_max_wait: Duration::from_millis(200),
        ..ShareGroupConfig::default()
    }
}

/// Polls until `stop`; rejects 1 % of the records, accepts the rest, and acknowledges
/// each batch at once. With `die_after`, returns without acknowledging the batch that
/// brings it past that many deliveries (the member "dies" holding them).
fn run_member(
    id: usize,
    mut member: ShareConsumer,
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    die_after: Option<usize>,
) -> tokio::task::JoinHandle<Option<ShareConsumer>> {
    tokio::spawn(async move {
        let mut seen = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let records: Vec<ShareRecord> = match member.poll(Duration::from_millis(300)).await {
                Ok(r) => r,
                Err(e) => {
                    log.lock().unwrap().errors.push(format!("member {id}: {e}"));
                    continue;
                }
            };
            let now = Instant::now();
            seen += records.len();
            let dies = die_after.is_some_and(|n| seen >= n) && !records.is_empty();
            {
                let mut l = log.lock().unwrap();
                let first = l.deliveries.len();
                for r in &records {
                    let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).to_string();
                    l.deliveries.push(Delivery {
                        member: id,
                        partition: r.partition,
                        offset: r.offset,
                        key,
                        delivered: now,
                        acked: None,
                        deliveries: r.deliveries,
                    });
                }
                if dies {
                    l.killed_at = Some(Instant::now());
                } else {
                    let acking = Instant::now();
                    for d in &mut l.deliveries[first..] {
                        d.acked = Some(acking);
                    }
                }
            }
            if dies {
                // Dropped without acknowledging or leaving: a crashed process.
                drop(member);
                return None;
            }
            for r in &records {
                let value = String::from_utf8_lossy(&r.record.value).to_string();
                match rejected(&value) {
                    true => member.reject(r, &format!("cannot process {value}")),
                    false => member.accept(r),
                }
            }
            match member.commit().await {
                Ok(outcome) => {
                    let refused: BTreeSet<(u32, u64)> = outcome.refused.iter().map(|((_, p), o, _)| (*p, *o)).collect();
                    let mut l = log.lock().unwrap();
                    for r in &records {
                        let value = String::from_utf8_lossy(&r.record.value).to_string();
                        if !rejected(&value) && !refused.contains(&(r.partition, r.offset)) {
                            l.accepted.push((r.partition, r.offset));
                        }
                    }
                }
                Err(e) => panic!("member {id}: acknowledging failed: {e}"),
            }
        }
        Some(member)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_a_share_group_with_rejects_a_killed_member_and_key_order() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "jobs", 2).await;
    // Every record's partition and offset, by its value.
    let p = client.producer("jobs", ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..RECORDS {
        acks.push(p.enqueue(keyed(&format!("k{}", i % KEYS), &format!("v{i}"))).await.expect("enqueue"));
    }
    let mut produced: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for (i, a) in acks.into_iter().enumerate() {
        let at = a.await.expect("produce");
        produced.insert(at, format!("v{i}"));
    }
    let to_reject = produced.values().filter(|v| rejected(v)).count();

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut members = Vec::new();
    for id in 0..4 {
        let m = client.share_consumer("workers", &["jobs"], config()).await.expect("join");
        members.push(run_member(id, m, log.clone(), stop.clone(), (id == 0).then_some(50)));
    }
    // Until every record is accepted or dead-lettered.
    let started = Instant::now();
    let info = loop {
        let info = client.describe_group("workers").await.expect("describe");
        let share = info.share.clone().expect("a share group");
        if share.accepted + share.dead_lettered >= RECORDS as u64 {
            break info;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let l = log.lock().unwrap();
            panic!(
                "not done in 120 s: {share:?}; {} poll errors, last: {:?}",
                l.errors.len(),
                l.errors.iter().rev().take(3).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for m in members {
        if let Some(m) = m.await.expect("member task") {
            m.close().await.expect("close");
        }
    }
    let share = info.share.expect("share info");
    assert_eq!(info.kind, "share");
    assert_eq!(share.dead_lettered, to_reject as u64, "{share:?}");
    assert_eq!(share.accepted, (RECORDS - to_reject) as u64, "{share:?}");
    assert!(share.partitions.iter().all(|p| p.held + p.free + p.dead == 0), "{share:?}");

    // The dead-letter topic's records carry where they came from and why.
    let dlq = drain_records(&client, "jobs.workers.dlq").await;
    let log = log.lock().unwrap();
    let mut dead_lettered = Vec::new();
    for r in &dlq {
        let h =
            |name: &str| r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).to_string());
        let at =
            (h(dlq_headers::PARTITION).unwrap().parse().unwrap(), h(dlq_headers::OFFSET).unwrap().parse().unwrap());
        assert_eq!(h(dlq_headers::TOPIC).as_deref(), Some("jobs"));
        assert_eq!(h(dlq_headers::GROUP).as_deref(), Some("workers"));
        let value = String::from_utf8_lossy(&r.value).to_string();
        assert_eq!(produced.get(&at), Some(&value), "the dead letter's value is the record's");
        assert!(rejected(&value), "{value} was dead-lettered but never rejected");
        assert_eq!(h(dlq_headers::ERROR), Some(format!("cannot process {value}")));
        assert!(h(dlq_headers::DELIVERIES).unwrap().parse::<u32>().unwrap() >= 1);
        dead_lettered.push(at);
    }
    // The checker: each record accepted exactly once or dead-lettered; key order held. A
    // record is in flight from its delivery until its member starts acknowledging it, or
    // until the member died holding it.
    let killed_at = log.killed_at.expect("member 0 died");
    let epoch = log.deliveries.iter().map(|d| d.delivered).min().unwrap();
    let us = |t: Instant| t.duration_since(epoch).as_micros() as u64;
    let history = ShareHistory {
        produced: produced.keys().copied().collect(),
        accepted: log.accepted.clone(),
        dead_lettered,
        spans: log
            .deliveries
            .iter()
            .map(|d| Span {
                key: Some(d.key.clone()),
                at: (d.partition, d.offset),
                member: d.member,
                start_us: us(d.delivered),
                end_us: us(d.acked.unwrap_or(killed_at.max(d.delivered))),
            })
            .collect(),
        key_ordered: true,
    };
    let anomalies = check_share(&history);
    assert!(
        anomalies.is_empty(),
        "{} anomalies, first: {:?}",
        anomalies.len(),
        anomalies.iter().take(5).map(|a| a.to_string()).collect::<Vec<_>>()
    );

    // The killed member's records went to others, after the lock timeout.
    let held: Vec<&Delivery> = log.deliveries.iter().filter(|d| d.member == 0 && d.acked.is_none()).collect();
    assert!(!held.is_empty());
    for d in &held {
        let again = log
            .deliveries
            .iter()
            .find(|x| x.member != 0 && (x.partition, x.offset) == (d.partition, d.offset) && x.delivered > d.delivered)
            .unwrap_or_else(|| panic!("{d:?} was never given again"));
        assert!(again.deliveries >= 2, "{again:?}");
        let after = again.delivered.duration_since(killed_at);
        assert!(
            after >= Duration::from_millis(LOCK_MS - 300),
            "given again {after:?} after the kill, before the lock timed out"
        );
    }
}

/// Every record of every partition of `topic`, from the beginning to the high watermark.
async fn drain_records(client: &Client, topic: &str) -> Vec<flotilla_client::Record> {
    let mut out = Vec::new();
    let n = client.partition_count(topic).await.expect("dead-letter topic");
    for p in 0..n {
        let (_, end) = client.list_offsets(topic, p).await.unwrap();
        let mut c = client.consumer(topic, p, StartAt::Beginning).await.unwrap();
        while c.position() < end {
            out.extend(c.poll(Duration::from_millis(500)).await.unwrap().into_iter().map(|r| r.record));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_the_cli_consumes_as_a_share_group_and_replays_dead_letters() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "tasks", 2).await;
    let p = client.producer("tasks", ProducerConfig::default());
    for i in 0..300 {
        p.send(keyed(&format!("k{i}"), &format!("t{i}"))).await.expect("produce");
    }
    // Two CLI members at once split the records between them; together they print each once.
    let args = ["consume", "tasks", "--share-group", "cli-q", "-o", "beginning"];
    let (one, two) = tokio::join!(cli_ok(&b, &args), cli_ok(&b, &args));
    let mut all: Vec<&str> = one.lines().chain(two.lines()).collect();
    all.sort();
    let expected: BTreeSet<String> = (0..300).map(|i| format!("t{i}")).collect();
    assert_eq!(all.len(), 300, "each record printed once: {} + {}", one.lines().count(), two.lines().count());
    assert_eq!(all.into_iter().map(String::from).collect::<BTreeSet<_>>(), expected);

    let text = cli_ok(&b, &["group", "describe", "cli-q"]).await;
    assert!(text.contains("share group cli-q") && text.contains("300 accepted"), "{text}");
    let list = cli_ok(&b, &["group", "list"]).await;
    assert!(list.lines().any(|l| l.starts_with("cli-q") && l.contains("share")), "{list}");

    // Dead letters by reject, then replayed into the topic.
    let mut member = client
        .share_consumer(
            "rejecter",
            &["tasks"],
            ShareGroupConfig {
                group: ShareConfig { start: ShareStart::Earliest, ..ShareConfig::default() },
                ack_mode: AckMode::Explicit,
                max_records: 10,
                ..ShareGroupConfig::default()
            },
        )
        .await
        .expect("join");
    let mut rejected_values = BTreeSet::new();
    while rejected_values.len() < 10 {
        for r in member.poll(Duration::from_millis(500)).await.expect("poll") {
            rejected_values.insert(String::from_utf8_lossy(&r.record.value).to_string());
            member.reject(&r, "bad input");
        }
    }
    // Dead-letter tasks come back to a member at its next polls.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.describe_group("rejecter").await.unwrap().share.unwrap().dead_lettered < 10 {
        assert!(Instant::now() < deadline, "dead letters not written");
        let _ = member.poll(Duration::from_millis(200)).await.expect("poll");
    }
    member.close().await.expect("close");
    let dry = cli_ok(&b, &["group", "dlq", "replay", "rejecter", "--topic", "tasks", "--dry-run"]).await;
    assert!(dry.contains("10 records") && dry.contains("dry run"), "{dry}");
    let mut before = 0;
    for p in 0..2 {
        before += client.list_offsets("tasks", p).await.unwrap().1;
    }
    let done = cli_ok(&b, &["group", "dlq", "replay", "rejecter", "--topic", "tasks"]).await;
    assert!(done.contains("replayed 10 records"), "{done}");
    let again = cli_ok(&b, &["group", "dlq", "replay", "rejecter", "--topic", "tasks"]).await;
    assert!(again.contains("replayed 0 records"), "a second replay starts where the first stopped: {again}");
    let mut after = 0;
    for p in 0..2 {
        after += client.list_offsets("tasks", p).await.unwrap().1;
    }
    assert_eq!(after, before + 10);
    // The replayed records are back, without the dead-letter headers.
    let replayed = drain_records(&client, "tasks").await;
    let back: Vec<_> =
        replayed.iter().filter(|r| rejected_values.contains(&*String::from_utf8_lossy(&r.value))).collect();
    assert_eq!(back.len(), 20, "each rejected record is there twice now: the original and the replay");
    assert!(back.iter().all(|r| r.headers.iter().all(|(k, _)| !k.starts_with(dlq_headers::PREFIX))));

    let refused = cli(&b, &["group", "delete", "cli-q"]).await;
    assert!(refused.status.success(), "{refused:?}");
    assert!(!cli_ok(&b, &["group", "list"]).await.contains("cli-q"));
}

/// The README's queue walk-through: a group created with `-o beginning` keeps reading
/// from the beginning for a later member that gives no `-o`, also in partitions the
/// first member took nothing from; and a group's position in a partition is fixed the
/// first time a member reaches it, even when it takes nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_where_a_share_group_starts_is_the_groups_and_fixed_when_first_reached() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "jobs", 3).await;
    let p = client.producer("jobs", ProducerConfig::default());
    for i in 0..600 {
        p.send(keyed(&format!("k{i}"), &format!("j{i}"))).await.expect("produce");
    }
    let first = cli_ok(&b, &["consume", "jobs", "--share-group", "workers", "-o", "beginning", "-n", "100"]).await;
    let rest = cli_ok(&b, &["consume", "jobs", "--share-group", "workers"]).await;
    let (first, rest): (Vec<&str>, Vec<&str>) = (first.lines().collect(), rest.lines().collect());
    assert_eq!(first.len(), 100, "{first:?}");
    let mut all: BTreeSet<&str> = first.iter().copied().collect();
    all.extend(rest.iter().copied());
    assert_eq!((rest.len(), all.len()), (500, 600), "the second member reads every record the first left");
    let described = cli_ok(&b, &["group", "describe", "workers"]).await;
    assert!(described.contains("new partitions from the beginning"), "{described}");
    // Asking for the end of a group that starts at the beginning says so.
    let asked_end = cli(&b, &["consume", "jobs", "--share-group", "workers", "-o", "end"]).await;
    assert!(String::from_utf8_lossy(&asked_end.stderr).contains("as set when it was created"), "{asked_end:?}");

    // A group that starts at the end: its first member's first poll fixes the position
    // in every partition, so records written after it are the group's even when that
    // member leaves before taking them.
    let late = ShareGroupConfig { max_records: 50, fetch_max_wait: Duration::from_millis(200), ..config() };
    let late = ShareGroupConfig { group: ShareConfig { start: ShareStart::Latest, ..late.group }, ..late };
    let mut one = client.share_consumer("late", &["jobs"], late.clone()).await.expect("join");
    assert!(one.poll(Duration::from_millis(300)).await.expect("poll").is_empty(), "nothing after the end");
    one.close().await.expect("leave");
    for i in 0..30 {
        p.send(keyed(&format!("k{i}"), &format!("late{i}"))).await.expect("produce");
    }
    let mut two = client.share_consumer("late", &["jobs"], late).await.expect("join");
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 30 {
        assert!(Instant::now() < deadline, "only {} of the 30 later records came", got.len());
        for r in two.poll(Duration::from_millis(300)).await.expect("poll") {
            got.insert(String::from_utf8_lossy(&r.record.value).to_string());
            two.accept(&r);
        }
    }
    assert!(got.iter().all(|v| v.starts_with("late")), "{got:?}");
    two.close().await.expect("leave");
}
