//! c10–c50: the controller on real processes over RocksDB and gRPC: six nodes in three
//! zones (a, b, c: nodes 1 and 4 in a, 2 and 5 in b, 3 and 6 in c). Nodes 1-3 vote in
//! the metadata group; 4-6 are its learners.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientError, NodeId, ProducerConfig};
use flotilla_testkit::{ClusterOptions, ProcessCluster};

const PARTITIONS: u32 = 24;

fn six_nodes(node_args: &[&str]) -> ProcessCluster {
    let options = ClusterOptions {
        zones: vec!["a".into(), "b".into(), "c".into()],
        node_args: node_args.iter().map(|s| s.to_string()).collect(),
        metrics: true,
        ..ClusterOptions::default()
    };
    ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 6, options)
}

/// Creates the topic and waits until every partition takes a write.
async fn topic_ready(client: &Client, name: &str) {
    eventually("create topic", Duration::from_secs(30), async || {
        match client.create_topic(name, PARTITIONS, 3).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(flotilla_client::ErrorCode::TopicExists) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    let producer = client.producer(name, ProducerConfig::default());
    for p in 0..PARTITIONS {
        eventually("first write", Duration::from_secs(30), async || producer.send_to(p, keyed("init", "init")).await)
            .await;
    }
}

/// Partition → replicas, and whether any move is in progress.
async fn layout(client: &Client, topic: &str) -> Result<(BTreeMap<u32, Vec<NodeId>>, usize), ClientError> {
    let t = client.describe_topic(topic).await?;
    let moves = client.moves().await?.len();
    Ok((t.partitions.iter().map(|p| (p.partition, p.replicas.clone())).collect(), moves))
}

/// Produces `n` records round-robin over the partitions; returns the acknowledged values.
/// A record whose send fails is sent once more (it may have been appended: the value is
/// the same, and only acknowledged values are checked); failures are printed.
async fn produce_some(client: &Client, topic: &str, tag: &str, n: usize) -> Vec<String> {
    let producer = client.producer(topic, ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..n {
        let v = format!("{tag}-{i}");
        let partition = (i % PARTITIONS as usize) as u32;
        let mut sent = producer.send_to(partition, keyed("k", &v)).await;
        if let Err(e) = &sent {
            eprintln!("{v} to partition {partition}: {e}; sending it again");
            sent = producer.send_to(partition, keyed("k", &v)).await;
        }
        match sent {
            Ok(_) => acked.push(v),
            Err(e) => eprintln!("{v} to partition {partition}: {e}"),
        }
    }
    acked
}

async fn assert_all_present(client: &Client, topic: &str, acked: &[String]) {
    let consumed = drain(client, topic, PARTITIONS).await;
    let values: BTreeSet<&String> = consumed.values().flatten().map(|(_, v)| v).collect();
    for v in acked {
        assert!(values.contains(v), "acknowledged record {v} is missing");
    }
}

/// c10: a 24-partition topic has every partition in three zones; a killed node's
/// replicas are re-created elsewhere after the grace period, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_zones_then_a_dead_nodes_replicas_are_recreated() {
    let _serial = serial().await;
    let mut cluster = six_nodes(&["--dead-after-ms", "5000"]);
    let client = ready_client(&cluster, 6).await;
    topic_ready(&client, "events").await;
    let zone_of: BTreeMap<NodeId, String> =
        client.describe_cluster().await.unwrap().brokers.iter().map(|b| (b.id, b.zone.clone())).collect();
    let (replicas, _) = layout(&client, "events").await.unwrap();
    for (p, r) in &replicas {
        let zones: BTreeSet<&String> = r.iter().map(|n| &zone_of[n]).collect();
        assert_eq!(zones.len(), 3, "partition {p} has replicas {r:?} in zones {zones:?}");
    }
    let acked = produce_some(&client, "events", "before", 480).await;
    assert_eq!(acked.len(), 480);

    let killed = Instant::now();
    cluster.kill(6);
    eventually("node 6 dead and its replicas re-created", Duration::from_secs(90), async || {
        let (replicas, moves) = layout(&client, "events").await?;
        let on6 = replicas.values().filter(|r| r.contains(&6)).count();
        let state = client.describe_cluster().await?.brokers.iter().find(|b| b.id == 6).map(|b| b.state.clone());
        if on6 == 0 && moves == 0 && replicas.values().all(|r| r.len() == 3) {
            Ok(state)
        } else {
            Err(ClientError::Closed)
        }
    })
    .await;
    eprintln!("every partition back to three replicas {:?} after the kill (grace period 5 s)", killed.elapsed());
    let state = client.describe_cluster().await.unwrap().brokers.iter().find(|b| b.id == 6).unwrap().state.clone();
    assert_eq!(state, "dead");
    assert_all_present(&client, "events", &acked).await;
}

/// c20: draining a node under a running producer empties it; nothing acknowledged is
/// lost and the producer sees no failure (its retries absorb the leader moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c20_drain_under_a_running_producer() {
    let _serial = serial().await;
    let cluster = six_nodes(&[]);
    let client = ready_client(&cluster, 6).await;
    topic_ready(&client, "orders").await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = client.producer("orders", ProducerConfig::default());
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        let mut i = 0usize;
        while !stopping.load(Ordering::SeqCst) {
            let v = format!("v{i}");
            match producer.send(keyed(&format!("k{}", i % 101), &v)).await {
                Ok(_) => acked.push(v),
                Err(e) => failed.push(e.to_string()),
            }
            i += 1;
        }
        (acked, failed)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plan = client.plan(&flotilla_client::PlanScenario::Drain(5)).await.unwrap();
    assert!(!plan.actions.is_empty(), "draining node 5 moves its replicas");
    let started = Instant::now();
    client.drain_node(5).await.unwrap();
    eventually("node 5 drained", Duration::from_secs(120), async || {
        let b = client.describe_cluster().await?.brokers.into_iter().find(|b| b.id == 5).expect("node 5");
        let moves = client.moves().await?.len();
        if b.replicas == 0 && moves == 0 { Ok(()) } else { Err(ClientError::Closed) }
    })
    .await;
    eprintln!("node 5 drained in {:?} under load", started.elapsed());
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = task.await.unwrap();
    eprintln!("acknowledged {} records during the drain, {} failed", acked.len(), failed.len());
    assert!(failed.is_empty(), "the producer failed: {:?}", &failed[..failed.len().min(3)]);
    assert_all_present(&client, "orders", &acked).await;
    client.remove_node(5).await.unwrap();
    let b = client.describe_cluster().await.unwrap().brokers.into_iter().find(|b| b.id == 5).unwrap();
    assert_eq!((b.state.as_str(), b.replicas), ("removed", 0));
}

/// c30: a node that joins receives replicas and preferred leaderships until the counts
/// are even within one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c30_an_added_node_receives_replicas_and_leaders() {
    let _serial = serial().await;
    let mut cluster = six_nodes(&[]);
    let client = ready_client(&cluster, 6).await;
    topic_ready(&client, "clicks").await;
    let acked = produce_some(&client, "clicks", "pre", 240).await;
    // A fourth zone, so zone spread does not cap what the new node can take.
    let seven = cluster.join("d");
    assert_eq!(seven, 7);
    let started = Instant::now();
    let counts = eventually("even replicas and leaders", Duration::from_secs(120), async || {
        let brokers = client.describe_cluster().await?.brokers;
        let moves = client.moves().await?.len();
        let r: Vec<u64> = brokers.iter().map(|b| b.replicas).collect();
        let l: Vec<u64> = brokers.iter().map(|b| b.preferred_leaders).collect();
        let even = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap() <= 1;
        if brokers.len() == 7 && moves == 0 && even(&r) && even(&l) {
            Ok(brokers.iter().map(|b| (b.id, b.replicas, b.preferred_leaders)).collect::<Vec<_>>())
        } else {
            Err(ClientError::Closed)
        }
    })
    .await;
    eprintln!("balanced in {:?}: (node, replicas, preferred leaders) {counts:?}", started.elapsed());
    assert_all_present(&client, "clicks", &acked).await;
}

/// c40: the metadata leader is killed in the middle of a throttled reassignment: the
/// move completes (or rolls back) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c40_metadata_leader_killed_mid_reassignment() {
    let _serial = serial().await;
    // 64 KiB/s: moving a partition of about 400 KiB takes several seconds.
    let mut cluster = six_nodes(&["--move-bytes-per-sec", "65536", "--auto-balance", "false"]);
    let client = ready_client(&cluster, 6).await;
    topic_ready(&client, "ledger").await;
    let producer = client.producer("ledger", ProducerConfig::default());
    let big = "x".repeat(4000);
    let mut acked = Vec::new();
    for i in 0..100 {
        let v = format!("{i}-{big}");
        producer.send_to(0, keyed("k", &v)).await.unwrap();
        acked.push(v);
    }
    let meta_leader = client.describe_cluster().await.unwrap().metadata_leader.unwrap();
    let (replicas, _) = layout(&client, "ledger").await.unwrap();
    let old = replicas[&0].clone();
    // Replace one replica (not the metadata leader's) by a node of the same zone.
    let leaving = *old.iter().find(|n| **n != meta_leader).unwrap();
    let incoming = if leaving > 3 { leaving - 3 } else { leaving + 3 };
    let target: Vec<NodeId> = old.iter().map(|n| if *n == leaving { incoming } else { *n }).collect();
    let move_id = client.reassign("ledger", 0, &target).await.unwrap();
    eventually("the move under way", Duration::from_secs(20), async || {
        let m = client.moves().await?;
        if m.iter().any(|m| m.move_id == move_id) { Ok(()) } else { Err(ClientError::Closed) }
    })
    .await;
    cluster.kill(meta_leader);
    eprintln!("killed the metadata leader (node {meta_leader}) during move {move_id}: {old:?} -> {target:?}");
    let survivor = cluster.ids().into_iter().find(|n| *n != meta_leader).unwrap();
    let c2 =
        eventually("client", Duration::from_secs(30), async || Client::connect(&cluster.addr(survivor)).await).await;
    let done = eventually("the move finished or rolled back", Duration::from_secs(120), async || {
        let (replicas, moves) = layout(&c2, "ledger").await?;
        if moves == 0 { Ok(replicas[&0].clone()) } else { Err(ClientError::Closed) }
    })
    .await;
    assert!(done == target || done == old, "partition 0 ended on {done:?}");
    eprintln!("partition 0 ended on {done:?}");
    let consumed = drain(&c2, "ledger", 1).await;
    let values: BTreeSet<&String> = consumed[&0].iter().map(|(_, v)| v).collect();
    for v in &acked {
        assert!(values.contains(v), "acknowledged record {} is missing", &v[..8]);
    }
}

/// c50: the metadata group grows from three voters to five, survives losing two, and
/// shrinks back; every node serves Prometheus metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c50_metadata_group_grows_to_five_and_shrinks_back() {
    let _serial = serial().await;
    let mut cluster = six_nodes(&[]);
    let client = ready_client(&cluster, 6).await;
    let five =
        eventually("five voters", Duration::from_secs(30), async || client.set_controllers(&[1, 2, 3, 4, 5]).await)
            .await;
    assert_eq!(five.voters, vec![1, 2, 3, 4, 5]);
    // Lose two voters (the leader among them if it is 1 or 2): the rest still commit.
    cluster.kill(1);
    cluster.kill(2);
    let c2 = eventually("client", Duration::from_secs(30), async || Client::connect(&cluster.addr(3)).await).await;
    eventually("a topic created with two voters gone", Duration::from_secs(60), async || {
        c2.create_topic("after-loss", 3, 3).await
    })
    .await;
    cluster.restart(1);
    cluster.restart(2);
    let three =
        eventually("back to three voters", Duration::from_secs(60), async || c2.set_controllers(&[1, 2, 3]).await)
            .await;
    assert_eq!(three.voters, vec![1, 2, 3]);
    let members = c2.controllers().await.unwrap();
    assert!(members.learners.contains(&4) && members.learners.contains(&5), "{members:?}");

    let text = http_get(&cluster.metrics_addr(3).unwrap(), "/metrics");
    for family in [
        "flotilla_partition_leader",
        "flotilla_partition_high_watermark",
        "flotilla_under_replicated_partitions",
        "flotilla_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "/metrics lacks {family}:\n{}", &text[..text.len().min(2000)]);
    }
    // Cluster-wide figures come from the metadata leader alone.
    eventually("one exporter of the cluster-wide figures", Duration::from_secs(20), async || {
        let exporters: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| cluster.is_running(*id))
            .filter(|id| {
                let text = http_get(&cluster.metrics_addr(*id).unwrap(), "/metrics");
                text.lines().any(|l| l.starts_with("flotilla_moves_in_progress "))
            })
            .collect();
        if exporters.len() == 1 { Ok(()) } else { Err(format!("exported by {exporters:?}")) }
    })
    .await;
}
