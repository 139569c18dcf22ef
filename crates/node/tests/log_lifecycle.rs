//! The partition log's lifecycle on three in-process nodes (`MemEngine`s): delete-records
//! and retention move the log start through Raft on every replica, each replica
//! snapshots at its retention point and purges its log, a follower behind the leader's
//! first entry catches up by snapshot, the producer table survives a snapshot install
//! and a leader change, seeks by time use the time index, a node short of disk refuses
//! writes and recovers by itself, and a restart reloads the applied state instead of
//! replaying the log (l10–l60); and a regression: records stamped like the last deleted
//! one are neither skipped by a seek by time nor deleted by time retention (l70).
//! (docs/rfcs/0003-log-lifecycle.md)

mod common;

use std::time::Duration;

use common::*;
use flotilla_metadata::TopicPolicy;
use flotilla_node::Node;
use flotilla_raft::keys;
use flotilla_raft::state_machine::GroupState;
use flotilla_storage::{Engine, MemEngine};
use flotilla_types::{Clock, ErrorCode, GroupId, ProducerStamp, Record, RecordBatch};

fn fast_retention(id: u64) -> flotilla_node::NodeConfig {
    flotilla_node::NodeConfig { retention_check_interval_ms: 100, ..config(id) }
}

async fn cluster(net: &LocalNet, engines: &[MemEngine]) -> Vec<Node<LocalTransport>> {
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(net, fast_retention(id), &engines[id as usize - 1]).await);
    }
    nodes
}

/// (log start, high watermark) of the partition's replica on `node`.
fn range(node: &Node<LocalTransport>, group: GroupId) -> Option<(u64, u64)> {
    Some(node.groups().partition(group)?.read(|p| (p.log_start_offset(), p.high_watermark())))
}

/// The lowest log index `group` still stores on `engine`.
fn first_log_index(engine: &MemEngine, group: GroupId) -> Option<u64> {
    engine.scan(&keys::log(group, 0), &keys::log_end(group), 1).unwrap().first().and_then(|(k, _)| keys::index_of(k))
}

/// Deletes records below `offset` through whichever node leads `group`, asking again
/// should leadership move while an ask is in flight (deleting twice is deleting once);
/// the new log start.
async fn delete_records(nodes: &[Node<LocalTransport>], group: GroupId, offset: u64) -> u64 {
    eventually("delete records", async || leader_of(nodes, group)?.delete_records("t", 0, offset).await.ok()).await
}

/// Waits until every other replica purged its log past everything `behind` (cut off
/// from all of them) holds, puts `behind` back on the network, and waits until it caught
/// up by snapshot to (log start, high watermark) `want`. Whichever of the others leads
/// then has only a snapshot to offer it, so a leadership move meanwhile changes nothing.
async fn catch_up_by_snapshot(
    net: &LocalNet,
    engines: &[MemEngine],
    nodes: &[Node<LocalTransport>],
    behind: &Node<LocalTransport>,
    group: GroupId,
    want: (u64, u64),
) {
    let explain = || {
        let mut s = String::new();
        for n in nodes {
            let first = first_log_index(&engines[n.id() as usize - 1], group);
            let metrics = n.groups().get(group).map(|g| g.raft_metrics());
            s += &format!("\nnode {}: first log index {first:?}, {metrics:?}", n.id());
        }
        s
    };
    eventually_explained(
        "the other replicas purged their logs",
        async || {
            // Cut off before the leader's first append reached it, its replica holds no
            // entry at all (`None`): it is behind the leader's first entry all the same.
            let behind_last = behind.groups().get(group)?.status().last_log_index.unwrap_or(0);
            for n in nodes.iter().filter(|n| n.id() != behind.id()) {
                let first = first_log_index(&engines[n.id() as usize - 1], group)?;
                if first <= behind_last + 1 {
                    return None;
                }
            }
            Some(())
        },
        explain,
    )
    .await;
    net.cut.write().unwrap().remove(&behind.id());
    eventually("the follower caught up by snapshot", async || (range(behind, group)? == want).then_some(())).await;
}

fn stamped(values: &[(&str, u64)]) -> RecordBatch {
    let records: Vec<Record> =
        values.iter().map(|(v, ts)| Record { timestamp_ms: *ts, ..Record::value(v.to_string()) }).collect();
    RecordBatch::encode(&records).unwrap()
}

/// l10: delete-records moves the log start on every replica; a fetch below it is
/// OFFSET_OUT_OF_RANGE naming the log start; each replica purges its log below the
/// first batch kept; the records kept read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l10_delete_records_moves_the_log_start_on_every_replica_and_purges_the_log() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    for i in 0..10 {
        produce(&nodes, "t", 0, &[&format!("a{i}"), &format!("b{i}")]).await;
    }
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    let before_purge = first_log_index(&engines[leader.id() as usize - 1], group).unwrap();

    // Offset 7 is inside the batch [6, 8): the log start is 7, and the batch stays.
    assert_eq!(leader.delete_records("t", 0, 7).await.unwrap(), 7);
    let err = leader.delete_records("t", 0, 21).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OffsetOutOfRange, "{err}");
    for n in &nodes {
        eventually("every replica applied the new log start", async || (range(n, group)? == (7, 20)).then_some(()))
            .await;
    }
    let err = leader.fetch("t", 0, 3, 1 << 20, Duration::ZERO, false).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OffsetOutOfRange);
    assert!(err.message.contains("log start 7"), "{err}");
    let f = leader.fetch("t", 0, 7, 1 << 20, Duration::ZERO, false).await.unwrap();
    assert_eq!((f.log_start_offset, f.batches[0].base_offset), (7, 6), "the batch holding 7 comes whole");
    let values: Vec<String> = f
        .batches
        .iter()
        .flat_map(|b| RecordBatch::decode(b.batch.clone()).unwrap().records())
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values.len(), 14);
    assert_eq!(values[0], "a3");

    // Each replica snapshots at the batch holding the log start and purges below it.
    for (n, e) in nodes.iter().zip(&engines) {
        eventually("the replica purged its log", async || {
            (first_log_index(e, group)? > before_purge + 2).then_some(())
        })
        .await;
        let g = n.groups().get(group).unwrap();
        assert_eq!(g.state().snapshot_start(), 6, "node {}: the snapshot starts at the batch holding 7", n.id());
    }
    // Writes go on after the purge, at the next offsets.
    assert_eq!(produce(&nodes, "t", 0, &["c"]).await, 20);
    assert_eq!(leader.list_offsets("t", 0).await.unwrap(), (7, 21));
}

/// l20: retention by bytes: the leader deletes whole batches from the front until at most
/// `retention-bytes` remain, and a consumer from the log start reads contiguous offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l20_retention_bytes_keeps_at_most_that_many_bytes() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    eventually("three brokers", async || (nodes[0].describe_cluster().brokers.len() == 3).then_some(())).await;
    let value = "x".repeat(1000);
    let one = batch(&[&value]).bytes().len() as u64;
    let policy = TopicPolicy { retention_bytes: Some(5 * one), ..TopicPolicy::default() };
    let topic = eventually("create topic", async || nodes[0].create_topic("t", 1, 3, policy.clone()).await.ok()).await;
    let group = topic.partitions[0].group_id;
    for _ in 0..20 {
        produce(&nodes, "t", 0, &[&value]).await;
    }
    for n in &nodes {
        eventually("retention deleted all but five batches", async || (range(n, group)? == (15, 20)).then_some(()))
            .await;
    }
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    let f = leader.fetch("t", 0, 15, 1 << 20, Duration::ZERO, false).await.unwrap();
    let offsets: Vec<u64> = f.batches.iter().map(|b| b.base_offset).collect();
    assert_eq!(offsets, vec![15, 16, 17, 18, 19]);
}

/// l30: retention by time: batches whose records are all older than `retention-ms` are
/// deleted, batches with a record in retention are kept; a seek by time answers the
/// first offset at or after the time, between batches and past the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l30_retention_ms_deletes_old_batches_and_seek_by_time_uses_the_time_index() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    let now = flotilla_types::SystemClock.now_ms();
    let hour = 3_600_000;
    // Three batches: two hours old, one hour old (with one record at 30 min), and now.
    let batches = [
        stamped(&[("old-0", now - 2 * hour), ("old-1", now - 2 * hour + 1)]),
        stamped(&[("mid-0", now - hour), ("mid-1", now - hour / 2)]),
        stamped(&[("new-0", now - 1000), ("new-1", now)]),
    ];
    for b in &batches {
        produce_batch(&nodes, "t", 0, b).await;
    }
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    // Seek by time: before everything, at a batch's first record, between batches,
    // inside a batch, past the end.
    assert_eq!(leader.offset_for_time("t", 0, 0).await.unwrap(), 0);
    assert_eq!(leader.offset_for_time("t", 0, now - 2 * hour + 1).await.unwrap(), 1);
    assert_eq!(leader.offset_for_time("t", 0, now - 90 * 60_000).await.unwrap(), 2, "between batches");
    assert_eq!(leader.offset_for_time("t", 0, now - hour + 1).await.unwrap(), 3, "inside a batch");
    assert_eq!(leader.offset_for_time("t", 0, now + hour).await.unwrap(), 6, "past the end: the high watermark");

    // Retention of 45 minutes: the first batch goes; the second has a record at 30 min.
    let policy = TopicPolicy { retention_ms: Some(45 * 60_000), ..TopicPolicy::default() };
    leader.set_topic_config("t", 3, policy).await.unwrap();
    for n in &nodes {
        eventually("retention deleted the old batch", async || (range(n, group)? == (2, 6)).then_some(())).await;
    }
    assert_eq!(leader.offset_for_time("t", 0, 0).await.unwrap(), 2, "before the log start: the log start");
}

/// l40: a follower cut off while the leader deleted records and purged its log catches
/// up by installing the leader's snapshot and then the retained log, and serves
/// follower fetches from the new log start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l40_a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    produce(&nodes, "t", 0, &["a"]).await;
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    let behind = nodes.iter().find(|n| n.id() != leader.id()).unwrap().clone();
    net.cut.write().unwrap().insert(behind.id());
    for i in 0..20 {
        produce(&nodes, "t", 0, &[&format!("v{i}")]).await;
    }
    assert_eq!(delete_records(&nodes, group, 15).await, 15);
    catch_up_by_snapshot(&net, &engines, &nodes, &behind, group, (15, 21)).await;
    let f = eventually("a follower fetch", async || {
        behind.fetch("t", 0, 15, 1 << 20, Duration::ZERO, true).await.ok().filter(|f| !f.batches.is_empty())
    })
    .await;
    assert_eq!(f.batches.first().map(|b| b.base_offset), Some(15));
    assert_eq!(f.batches.len(), 6);
    assert_eq!(produce(&nodes, "t", 0, &["after"]).await, 21);
}

/// l45: the producer table travels in the snapshot at the retention point: a follower
/// cut off while an idempotent producer wrote and the leader deleted records installs the
/// snapshot, ends with the same producer table as the other replicas, and, leading after
/// the old leader stops, answers the producer's retry of its last batch with the offsets
/// of the first append and appends the next batch in sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l45_the_producer_table_survives_a_snapshot_install_and_a_leader_change() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    let stamped = |seq: u32, values: &[&str]| {
        let records: Vec<Record> = values.iter().map(|v| Record::value(v.to_string())).collect();
        RecordBatch::encode_as(&records, Some(ProducerStamp { id: 77, epoch: 0, base_sequence: seq })).unwrap()
    };
    produce(&nodes, "t", 0, &["plain"]).await;
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    let behind = nodes.iter().find(|n| n.id() != leader.id()).unwrap().clone();
    net.cut.write().unwrap().insert(behind.id());
    let mut seq = 0;
    let mut last = None;
    for i in 0..10 {
        let b = stamped(seq, &[&format!("a{i}"), &format!("b{i}")]);
        let p = produce_answer(&nodes, "t", 0, &b).await;
        assert!(!p.duplicate);
        seq += 2;
        last = Some((b, p.base_offset));
    }
    let (last_batch, last_offset) = last.unwrap();
    assert_eq!(delete_records(&nodes, group, 15).await, 15);
    catch_up_by_snapshot(&net, &engines, &nodes, &behind, group, (15, 21)).await;
    let table = |n: &Node<LocalTransport>| n.groups().partition(group).unwrap().read(|p| p.producers().clone());
    assert_eq!(table(&behind).len(), 1);
    for n in &nodes {
        assert_eq!(table(n), table(&leader), "node {}: the producer table", n.id());
    }

    // The follower that installed the snapshot leads once the old leader is gone.
    leader.shutdown().await;
    net.nodes.write().unwrap().remove(&leader.id());
    let rest: Vec<_> = nodes.iter().filter(|n| n.id() != leader.id()).cloned().collect();
    let other = rest.iter().find(|n| n.id() != behind.id()).unwrap().clone();
    eventually("the follower leads", async || {
        if leader_of(&rest, group).is_some_and(|l| l.id() == behind.id()) {
            return Some(());
        }
        if leader_of(&rest, group).is_some() {
            let _ = other.transfer_leader("t", 0, behind.id()).await;
        }
        None
    })
    .await;
    let retry = produce_answer(&rest, "t", 0, &last_batch).await;
    assert!(retry.duplicate, "the retry is recognised");
    assert_eq!(retry.base_offset, last_offset, "and answered with the first append's offsets");
    let next = produce_answer(&rest, "t", 0, &stamped(seq, &["next"])).await;
    assert_eq!((next.base_offset, next.duplicate), (21, false));
    let gap = behind.produce("t", 0, stamped(seq + 5, &["gap"])).await.unwrap_err();
    assert_eq!(gap.code, ErrorCode::OutOfOrderSequence, "{gap}");
    // A new epoch of the producer starts at 0 and fences the old one.
    let new_epoch =
        RecordBatch::encode_as(&[Record::value("e1")], Some(ProducerStamp { id: 77, epoch: 1, base_sequence: 0 }))
            .unwrap();
    assert_eq!(produce_answer(&rest, "t", 0, &new_epoch).await.base_offset, 22);
    let zombie = behind.produce("t", 0, stamped(seq + 1, &["zombie"])).await.unwrap_err();
    assert_eq!(zombie.code, ErrorCode::ProducerFenced, "{zombie}");
    let f = behind.fetch("t", 0, 15, 1 << 20, Duration::ZERO, false).await.unwrap();
    let records: u32 = f.batches.iter().map(|b| RecordBatch::decode(b.batch.clone()).unwrap().len()).sum();
    assert_eq!((f.high_watermark, records), (23, 8), "offsets 15..23, nothing twice");
}

/// l50: a node short of disk refuses produce with DISK_FULL (retriable, definite) while
/// it leads, keeps serving fetches, and accepts writes again once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l50_a_node_short_of_disk_refuses_writes_and_recovers() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    produce(&nodes, "t", 0, &["a"]).await;
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    leader.set_disk_full(Some("test: 1 byte free".into()));
    let err = leader.produce("t", 0, batch(&["b"])).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::DiskFull, "{err}");
    assert!(err.code.is_retriable() && err.code.is_definite());
    let f = leader.fetch("t", 0, 0, 1 << 20, Duration::ZERO, false).await.unwrap();
    assert_eq!(f.high_watermark, 1, "nothing was written");
    leader.set_disk_full(None);
    assert_eq!(leader.produce("t", 0, batch(&["b"])).await.unwrap().base_offset, 1);
}

/// l60: a restarted node loads its partition's applied state from storage: its state is
/// the one it had, before openraft re-applies anything, and its high watermark and log
/// start are right after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l60_a_restart_reloads_the_applied_state() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    for i in 0..30 {
        produce(&nodes, "t", 0, &[&format!("v{i}")]).await;
    }
    // Deleting below an offset twice is deleting it once: asked again of whichever node
    // leads, should leadership move while the first ask is in flight (LEADER_CHANGED).
    let leader = eventually("delete records", async || {
        let leader = leader_of(&nodes, group)?.clone();
        leader.delete_records("t", 0, 10).await.ok().map(|_| leader)
    })
    .await;
    let victim = nodes.iter().find(|n| n.id() != leader.id()).unwrap().clone();
    eventually("the victim applied everything", async || (range(&victim, group)? == (10, 30)).then_some(())).await;
    // Read once it is stopped: until then it may apply one more entry (a blank entry of
    // a leadership handover), and its saved state with it.
    let replica = victim.groups().get(group).unwrap();
    victim.shutdown().await;
    net.nodes.write().unwrap().remove(&victim.id());
    let applied = replica.status().applied;

    // The state machine reads back what was applied, with no log replay.
    let engine: std::sync::Arc<dyn Engine> = std::sync::Arc::new(engines[victim.id() as usize - 1].clone());
    let sm = flotilla_raft::state_machine::StateMachineStore::open(
        group,
        engine,
        GroupState::Partition(flotilla_partition::PartitionState::new()),
    )
    .unwrap();
    let (hw, start, last) = sm.shared().read(|s| match s {
        GroupState::Partition(p) => (p.high_watermark(), p.log_start_offset(), p.last_applied_index()),
        _ => unreachable!(),
    });
    assert_eq!((start, hw), (10, 30));
    assert_eq!(Some(last), applied, "the saved state is the last one applied");

    let restarted = start_node(&net, fast_retention(victim.id()), &engines[victim.id() as usize - 1]).await;
    eventually("the restarted replica serves", async || {
        restarted.fetch("t", 0, 10, 1 << 20, Duration::ZERO, true).await.ok().filter(|f| !f.batches.is_empty())
    })
    .await;
}

/// l70 (regression): the time index holds only batches that raise the greatest time.
/// Once a snapshot deleted the index below the log start, batches stamped with the same
/// time as the last deleted one had no entry of their own, so a seek to that time (and
/// retention by time, which seeks the same way) skipped past them and deleted records
/// within retention. The entry for the greatest time before the log start is now kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l70_records_stamped_like_the_last_deleted_one_are_neither_skipped_nor_deleted() {
    let net = LocalNet::default();
    let engines: Vec<MemEngine> = (0..3).map(|_| MemEngine::new()).collect();
    let nodes = cluster(&net, &engines).await;
    let topic = one_partition_topic(&nodes, "t").await;
    let group = topic.partitions[0].group_id;
    let ts = flotilla_types::SystemClock.now_ms() - 1_000;
    for i in 0..10 {
        produce_batch(&nodes, "t", 0, &stamped(&[(&format!("v{i}"), ts)])).await;
    }
    let leader = eventually("a leader", async || leader_of(&nodes, group).cloned()).await;
    assert_eq!(leader.delete_records("t", 0, 4).await.unwrap(), 4);
    let g = leader.groups().get(group).unwrap();
    eventually("the leader snapshotted at the new log start", async || (g.state().snapshot_start() == 4).then_some(()))
        .await;
    assert_eq!(leader.offset_for_time("t", 0, ts).await.unwrap(), 4, "the first record at that time kept");
    // Retention (7 days by default) runs every 100 ms: it must leave them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in &nodes {
        assert_eq!(range(n, group), Some((4, 10)), "node {}", n.id());
    }
}
