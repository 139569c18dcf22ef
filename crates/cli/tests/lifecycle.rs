//! The partition log's lifecycle over real node processes on RocksDB (RFC 0003): time
//! retention and the consumer's three reset policies, a follower that was down through a
//! retention cycle, and a node whose filesystem fills up under a running producer.
//! `crates/node/tests/log_lifecycle.rs` tests the same machinery in process.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientConfig, ConsumerConfig, OffsetReset, ProducerConfig, Record, StartAt};
use flotilla_proto::v1;
use flotilla_testkit::{ClusterOptions, ProcessCluster};
use flotilla_types::{ErrorCode, RecordBatch};

fn with_args(args: &[&str]) -> ClusterOptions {
    ClusterOptions { node_args: args.iter().map(|s| s.to_string()).collect(), ..ClusterOptions::default() }
}

/// The offsets a fetch answer holds, in order.
fn offsets_of(r: &v1::FetchResponse) -> Vec<u64> {
    let mut out = vec![];
    for b in &r.batches {
        let batch = RecordBatch::decode(b.batch.clone()).expect("a whole batch");
        out.extend((0..u64::from(batch.len())).map(|i| b.base_offset + i));
    }
    out
}

/// l80: with `retention-ms` of 30 s, records become unreadable once they are older than
/// that, within the documented bound (retention-ms + retention-check-interval-ms + one
/// commit; docs/configuration.md), and not before; a consumer left at a deleted offset
/// follows each reset policy: earliest goes to the log start, latest to the end, none
/// fails with OFFSET_OUT_OF_RANGE naming the log start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l80_retention_ms_of_30s_deletes_on_time_and_consumers_follow_their_reset_policy() {
    let _serial = serial().await;
    let cluster = ProcessCluster::start_with(
        env!("CARGO_BIN_EXE_flotilla"),
        3,
        with_args(&["--retention-check-interval-ms", "500"]),
    );
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    cli_ok(&b, &["topic", "create", "aged", "--partitions", "1", "--retention-ms", "30000"]).await;
    let producer = client.producer("aged", ProducerConfig::default());
    // Every early record is stamped after this (the first send may wait for a leader).
    let early_sent = Instant::now();
    eventually("a leader", Duration::from_secs(30), async || producer.send_to(0, Record::value("early0")).await).await;
    for i in 1..5 {
        producer.send_to(0, Record::value(format!("early{i}"))).await.expect("produce");
    }
    let early_acked = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..5 {
        producer.send_to(0, Record::value(format!("late{i}"))).await.expect("produce");
    }
    // The early records go between 30 s after they were stamped and the bound.
    let bound = Duration::from_millis(30_000 + 500 + 4_500);
    loop {
        let (start, _) = client.list_offsets("aged", 0).await.expect("list offsets");
        let age = early_acked.elapsed();
        if start > 0 {
            let since_sent = early_sent.elapsed();
            assert!(
                since_sent >= Duration::from_secs(29),
                "deleted {since_sent:?} after the first send, before retention-ms"
            );
            // Five records sent one after another may be stamped across two retention
            // checks (under load): they may go in two steps, but no late record goes.
            assert!(start <= 5, "a late record went too: log start {start}");
            if start == 5 {
                println!("retention-ms 30000: the early records became unreadable {age:?} after their acknowledgement");
                break;
            }
        }
        assert!(age < bound, "the early records are still there {age:?} after their acknowledgement");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cli_ok(&b, &["consume", "aged"]).await, (0..5).map(|i| format!("late{i}\n")).collect::<String>());

    let at_zero = async |reset| {
        let config = ConsumerConfig { offset_reset: reset, ..ConsumerConfig::default() };
        client.consumer_with("aged", 0, StartAt::Offset(0), config).await.expect("consumer")
    };
    // earliest: from the log start.
    let mut earliest = at_zero(OffsetReset::Earliest).await;
    let mut got: Vec<u64> = vec![];
    while got.len() < 5 {
        got.extend(earliest.poll(Duration::from_millis(500)).await.expect("poll").iter().map(|r| r.offset));
    }
    assert_eq!(got, (5..10).collect::<Vec<_>>());
    assert_eq!(earliest.resets(), 1);
    // none: an error that names the log start; the position stays for the caller.
    let mut none = at_zero(OffsetReset::None).await;
    let e = none.poll(Duration::from_secs(1)).await.expect_err("no reset");
    assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");
    assert!(e.to_string().contains("log start 5"), "{e}");
    assert_eq!(none.position(), 0);
    // latest: to the end; only records written after the reset.
    let mut latest = at_zero(OffsetReset::Latest).await;
    let got = latest.poll(Duration::from_millis(300)).await.expect("poll");
    assert!(got.is_empty(), "latest skips what is there: {got:?}");
    assert_eq!(latest.position(), 10);
    producer.send_to(0, Record::value("after")).await.expect("produce");
    let got = eventually("the record after the reset", Duration::from_secs(10), async || {
        let got = latest.poll(Duration::from_millis(500)).await?;
        if got.is_empty() { Err(flotilla_client::ClientError::Closed) } else { Ok(got) }
    })
    .await;
    assert_eq!(got.iter().map(|r| (r.offset, r.record.value.as_ref())).collect::<Vec<_>>(), vec![(10, &b"after"[..])]);
}

/// l81: a follower killed before retention moved the log start past everything it has
/// comes back, installs the leader's snapshot, takes the retained log, and serves
/// follower fetches of it: contiguous offsets from the log start to the high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l81_a_follower_down_through_a_retention_cycle_catches_up_by_snapshot_and_serves_follower_fetches() {
    let _serial = serial().await;
    // The dead node stays a replica (no re-replication while it is down).
    let mut cluster = ProcessCluster::start_with(
        env!("CARGO_BIN_EXE_flotilla"),
        3,
        with_args(&["--retention-check-interval-ms", "300", "--dead-after-ms", "600000"]),
    );
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    cli_ok(&b, &["topic", "create", "kept", "--partitions", "1", "--retention-bytes", "200000"]).await;
    let producer = client.producer("kept", ProducerConfig::default());
    eventually("a leader", Duration::from_secs(30), async || producer.send_to(0, Record::value("first")).await).await;
    let info = client.describe_topic("kept").await.expect("describe");
    let leader = info.partitions[0].leader.expect("a leader");
    let meta = client.describe_cluster().await.expect("describe").metadata_leader;
    let follower =
        cluster.ids().into_iter().find(|id| *id != leader && Some(*id) != meta).expect("a follower that leads nothing");
    cluster.kill(follower);

    // About 2 MB of records: retention keeps the last 200 kB and the leader purges the rest.
    let value = vec![b'x'; 1000];
    let batch = ProducerConfig { linger: Duration::from_millis(5), ..ProducerConfig::default() };
    let producer = client.producer("kept", batch);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let (producer, value) = (producer.clone(), value.clone());
        sends.spawn(async move { producer.send_to(0, Record::value(value)).await });
    }
    while let Some(s) = sends.join_next().await {
        s.expect("task").expect("produce with one node down");
    }
    let (start, end) = eventually("the log start past what the follower has", Duration::from_secs(30), async || {
        let (start, end) = client.list_offsets("kept", 0).await?;
        if start > 1000 { Ok((start, end)) } else { Err(flotilla_client::ClientError::Closed) }
    })
    .await;
    assert_eq!(end, 2001);
    // The leader snapshots at the new log start and purges its log on its next
    // retention pass (every 300 ms here).
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.restart(follower);
    let mut to_follower = raw(&cluster, follower).await;
    let served = eventually("a follower fetch up to the high watermark", Duration::from_secs(60), async || {
        let mut got = vec![];
        let mut at = start;
        while at < end {
            let req = v1::FetchRequest {
                topic: "kept".into(),
                partition: 0,
                offset: at,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                from_follower: true,
                ..Default::default()
            };
            // One fetch (max_wait 0) that does not answer in 10 s is reported and tried
            // again on a new connection, so that a stuck call shows in the output.
            let r = match tokio::time::timeout(Duration::from_secs(10), to_follower.fetch(req)).await {
                Ok(r) => r.map_err(|e| e.to_string())?.into_inner(),
                Err(_) => {
                    eprintln!("l81: a follower fetch at {at} did not answer within 10 s; reconnecting");
                    to_follower = raw(&cluster, follower).await;
                    return Err(format!("a follower fetch at {at} did not answer within 10 s"));
                }
            };
            if let Some(e) = r.error {
                return Err(format!("{e:?}"));
            }
            let offsets = offsets_of(&r);
            let Some(last) = offsets.last() else { return Err(format!("nothing at {at} yet")) };
            at = last + 1;
            got.extend(offsets);
        }
        Ok::<_, String>(got)
    })
    .await;
    // Contiguous from where the follower was asked to start.
    assert_eq!(served, (start..end).collect::<Vec<_>>());
    // The node's log is written by a background thread: give it a moment.
    let log_file = cluster.dir().join(format!("node-{follower}.log"));
    eventually("the follower's log names the snapshot it installed", Duration::from_secs(5), async || {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("installed a snapshot from the leader") { Ok(()) } else { Err(format!("not in:\n{log}")) }
    })
    .await;
    // Below the log start it answers as the leader would. (A follower that does not know
    // a live leader at that moment sends the consumer to the leader instead, NOT_LEADER:
    // under load that happens, and is asked again.)
    let code = eventually("an answer below the log start", Duration::from_secs(30), async || {
        let req = v1::FetchRequest {
            topic: "kept".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            from_follower: true,
            ..Default::default()
        };
        let below = to_follower.fetch(req).await.map_err(|e| e.to_string())?.into_inner();
        match below.error.map(|e| e.code) {
            Some(c) if c == ErrorCode::NotLeader.as_u32() || c == ErrorCode::Unavailable.as_u32() => {
                Err(format!("code {c}"))
            }
            other => Ok(other),
        }
    })
    .await;
    assert_eq!(code, Some(ErrorCode::OffsetOutOfRange.as_u32()), "below the log start");
}

/// Mounts a tmpfs of `bytes` at a new directory; `None` when this process may not mount
/// (not root, or no CAP_SYS_ADMIN in a container).
fn small_filesystem(bytes: u64) -> Option<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("flotilla-small-fs-").tempdir().expect("temp dir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(dir)
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

/// l82: one node's data directory is on a small filesystem that fills up under a running
/// producer. Its partition leader answers DISK_FULL (retriable) while the partitions it
/// follows keep taking writes; once space is freed it serves again by itself, and every
/// acknowledged record is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l82_a_full_disk_refuses_writes_on_that_node_only_and_loses_nothing() {
    let _serial = serial().await;
    let Some(small) = small_filesystem(256 << 20) else {
        eprintln!("l82 skipped: mounting a small filesystem needs root (CAP_SYS_ADMIN)");
        return;
    };
    let _unmount = Unmount(small.path().to_path_buf());
    let full = 3u64;
    let data = small.path().join("node-3");
    let options = ClusterOptions {
        node_args: ["--disk-free-min-bytes", "67108864", "--dead-after-ms", "600000"].map(String::from).to_vec(),
        data_dirs: vec![(full, data.clone())],
        ..ClusterOptions::default()
    };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "d", 6).await;
    let led = eventually("partitions led by the node on the small filesystem", Duration::from_secs(30), async || {
        let info = client.describe_topic("d").await?;
        // Led by it and preferring it: the controller hands a partition's leadership to
        // its preferred replica (the first), so only these stay led by it.
        let led: Vec<u32> = info
            .partitions
            .iter()
            .filter(|p| p.leader == Some(full) && p.replicas.first() == Some(&full))
            .map(|p| p.partition)
            .collect();
        if led.is_empty() { Err(flotilla_client::ClientError::Closed) } else { Ok(led) }
    })
    .await;
    let on_full = led[0];
    let producer = client.producer("d", ProducerConfig::default());
    let mut acked: BTreeSet<(u32, u64, String)> = BTreeSet::new();
    let mut n = 0;
    let mut send_all = async |acked: &mut BTreeSet<(u32, u64, String)>, skip: &[u32]| {
        for p in 0..6 {
            if skip.contains(&p) {
                continue;
            }
            n += 1;
            let v = format!("r{n}");
            match producer.send_to(p, Record::value(v.clone())).await {
                Ok(o) => {
                    acked.insert((p, o, v));
                }
                // While the disk is full, a partition whose leadership moved to the full
                // node since `led` was read is refused too: that is the point, not a loss.
                Err(e) if !skip.is_empty() && e.code() == Some(ErrorCode::DiskFull) => {}
                Err(e) => panic!("produce to d/{p}: {e}"),
            }
        }
    };
    send_all(&mut acked, &[]).await;

    // Fill the filesystem to 48 MiB free, short of the 64 MiB the nodes keep free (and
    // above the WAL file RocksDB preallocates when its memtable switches).
    let ballast = small.path().join("ballast");
    let fill = free_bytes(small.path()).saturating_sub(48 << 20);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
    let mut to_full = raw(&cluster, full).await;
    let batch = RecordBatch::encode(&[Record::value("refused?")]).unwrap().bytes().clone();
    let refused = eventually("DISK_FULL from the node short of space", Duration::from_secs(10), async || {
        let r = to_full
            .produce(v1::ProduceRequest {
                topic: "d".into(),
                partition: on_full,
                batch: batch.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        match r.error {
            Some(e) if e.code == ErrorCode::DiskFull.as_u32() => Ok(e),
            other => Err(format!("not refused yet: {other:?}")),
        }
    })
    .await;
    assert!(refused.message.contains("disk-free-min-bytes"), "{refused:?}");
    // The client sees the same retriable code once its retries run out.
    let impatient = ClientConfig { retry_deadline: Duration::from_secs(2), ..ClientConfig::default() };
    let impatient = Client::connect_with(&cluster.bootstrap(), impatient).await.expect("connect");
    let e = impatient
        .producer("d", ProducerConfig::default())
        .send_to(on_full, Record::value("refused"))
        .await
        .expect_err("refused while the disk is full");
    assert_eq!(e.code(), Some(ErrorCode::DiskFull), "{e}");
    // The partitions it only follows keep taking writes: it still appends as a follower.
    for _ in 0..5 {
        send_all(&mut acked, &led).await;
    }

    // Space comes back: the node serves again by itself.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    eventually("writes on the node again", Duration::from_secs(15), async || {
        let o = producer.send_to(on_full, Record::value("back")).await?;
        acked.insert((on_full, o, "back".to_string()));
        Ok::<_, flotilla_client::ClientError>(())
    })
    .await;
    send_all(&mut acked, &[]).await;

    let consumed = drain(&client, "d", 6).await;
    let got: BTreeSet<(u32, u64, String)> =
        consumed.iter().flat_map(|(p, rs)| rs.iter().map(move |(o, v)| (*p, *o, v.clone()))).collect();
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    drop(cluster);
}
