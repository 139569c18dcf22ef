//! End-to-end tests over real node processes: gRPC between processes, RocksDB on disk,
//! fsync before acknowledgement. Each test starts its own three-node cluster on free
//! loopback ports in a temporary directory (FLOTILLA_KEEP=1 keeps it for inspection).

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{ErrorCode, ProducerConfig, Record};
use flotilla_proto::v1;
use flotilla_proto::v1::flotilla_client::FlotillaClient;
use flotilla_testkit::replica::read_replica_log;
use flotilla_types::{RecordBatch, limits};

/// t10: 100,000 records produced by key to a six-partition topic are all consumed back,
/// each exactly once, at the offset it was acknowledged with, in order per partition and
/// per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_hundred_thousand_records_by_key_round_trip() {
    const N: usize = 100_000;
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "orders", 6).await;
    let producer = client.producer("orders", ProducerConfig::default());
    let started = Instant::now();
    let mut acks = Vec::with_capacity(N);
    for i in 0..N {
        let rec = keyed(&format!("key-{}", i % 1000), &i.to_string());
        acks.push(producer.enqueue(rec).await.expect("enqueue"));
    }
    let mut acked: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let (p, o) = ack.await.unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}"));
        acked.insert(i.to_string(), (p, o));
    }
    eprintln!("produced {N} records in {:?}", started.elapsed());

    let consumed = drain(&client, "orders", 6).await;
    let mut seen = BTreeSet::new();
    let mut last_by_key: BTreeMap<usize, usize> = BTreeMap::new();
    for (p, records) in &consumed {
        let mut prev = None;
        for (offset, value) in records {
            assert!(prev.is_none_or(|q| *offset == q + 1), "partition {p}: offset {offset} after {prev:?}");
            prev = Some(*offset);
            assert!(seen.insert(value.clone()), "value {value} consumed twice");
            assert_eq!(acked.get(value), Some(&(*p, *offset)), "value {value} not where it was acknowledged");
            let i: usize = value.parse().unwrap();
            if let Some(before) = last_by_key.insert(i % 1000, i) {
                assert!(before < i, "key {}: {i} after {before}", i % 1000);
            }
        }
    }
    assert_eq!(seen.len(), N, "{} of {N} records consumed", seen.len());
}

/// t15: a fetch at the largest size a consumer may ask for (`FETCH_BYTES_MAX`), over
/// many small batches, brings that much in one answer: the answer, batches and framing,
/// is over the request limit, and the client accepts answers up to
/// `FETCH_RESPONSE_BYTES_MAX`. The client once decoded no more than the request limit,
/// and so cut every fetch to `BATCH_BYTES_MAX` (half what the node serves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_a_fetch_of_the_largest_size_reaches_the_consumer() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "small-batches", 1).await;
    // One record of 1 KiB per batch: 9 MiB in all, more than one fetch holds.
    let config = ProducerConfig { max_batch_records: 1, max_in_flight: 5, ..ProducerConfig::default() };
    let producer = client.producer("small-batches", config);
    let value = "v".repeat(1024);
    let n = 9 * 1024;
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(producer.enqueue(keyed(&i.to_string(), &value)).await.expect("enqueue"));
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    let config = flotilla_client::ConsumerConfig {
        fetch_max_bytes: limits::FETCH_BYTES_MAX as u32,
        ..flotilla_client::ConsumerConfig::default()
    };
    let mut consumer =
        client.consumer_with("small-batches", 0, flotilla_client::StartAt::Beginning, config).await.expect("consumer");
    let records = consumer.poll(Duration::from_secs(5)).await.expect("the largest fetch is decoded");
    let bytes: usize = records.iter().map(|r| r.record.value.len()).sum();
    assert!(bytes > 7 * 1024 * 1024, "one fetch brought {} records, {bytes} bytes", records.len());
}

/// t16: every replica of a partition, read on its own node (`Client::read_replica`, a
/// follower fetch without fallback to the leader), holds the same records at the same
/// offsets, up to the high watermark it reports; the chaos suite compares replicas this
/// way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_each_replica_is_read_on_its_own_node() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "replicas", 1).await;
    let producer = client.producer("replicas", ProducerConfig::default());
    for i in 0..500 {
        producer.send(keyed("k", &format!("v{i}"))).await.expect("acknowledged");
    }
    let topic = client.describe_topic("replicas").await.expect("describe");
    let replicas = topic.partitions[0].replicas.clone();
    assert_eq!(replicas.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in replicas {
        let addr = cluster.addr(node);
        let (high, values) = loop {
            // A follower applies what the leader committed a moment later.
            match read_replica_log(&client, node, &addr, "replicas", 0, 0).await {
                Ok(log) if log.commit_offset == 500 => break (log.commit_offset, log.records),
                other if Instant::now() > deadline => panic!("node {node}: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let expected: Vec<(u64, String)> = (0..500).map(|i| (i, format!("v{i}"))).collect();
        assert_eq!(values, expected, "node {node} below its high watermark {high}");
    }
    // A topic the node does not know is an error, not an empty read.
    let e = client.read_replica(&cluster.addr(1), "no-such-topic", 0, 0).await.expect_err("unknown topic");
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}");
}

/// t20: kill -9 the node leading the most partitions while a producer runs. The producer
/// carries on after failover and every acknowledged record is consumed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_kill_busiest_leader_under_load() {
    const N: usize = 30_000;
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "events", 6).await;
    let victim = busiest_leader(&client, "events").await;

    let producer = client.producer("events", ProducerConfig::default());
    // The kill lands after a third of the records are acknowledged, whatever the speed of
    // the machine (a fixed delay let a fast run finish before the kill).
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = progress.clone();
    let task = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..N {
            let ack = producer.enqueue(keyed(&format!("k{}", i % 97), &format!("v{i}"))).await;
            in_flight.push_back((i, ack));
            // Pace the load so that the kill lands in the middle of it.
            if in_flight.len() >= 256 || i + 1 == N {
                while let Some((j, ack)) = in_flight.pop_front() {
                    match ack {
                        Ok(a) => match a.await {
                            Ok(_) => {
                                acked.push((j, Instant::now()));
                                counted.store(acked.len(), std::sync::atomic::Ordering::SeqCst);
                            }
                            Err(e) => failed.push((j, e.to_string())),
                        },
                        Err(e) => failed.push((j, e.to_string())),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (acked, failed)
    });
    while progress.load(std::sync::atomic::Ordering::SeqCst) < N / 3 {
        assert!(!task.is_finished(), "the producer stopped before a third of its records were acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    cluster.kill(victim);
    eprintln!("killed node {victim} (the busiest leader)");
    let (acked, failed) = task.await.unwrap();
    let after_kill = acked.iter().filter(|(_, t)| *t > killed_at).count();
    eprintln!("acknowledged {} ({} after the kill), failed {}", acked.len(), after_kill, failed.len());
    assert!(after_kill > 0, "no record was acknowledged after the kill");
    assert!(failed.is_empty(), "sends failed despite retries: {:?}", &failed[..failed.len().min(5)]);

    let consumed = drain(&client, "events", 6).await;
    let values: BTreeSet<String> = consumed.values().flatten().map(|(_, v)| v.clone()).collect();
    for (i, _) in &acked {
        assert!(values.contains(&format!("v{i}")), "acknowledged record v{i} is missing");
    }
    // Duplicates are possible only for sends retried after an indeterminate failure.
    let total: usize = consumed.values().map(Vec::len).sum();
    eprintln!("consumed {total} records, {} distinct", values.len());

    // The killed node comes back and catches up.
    cluster.restart(victim);
    let c2 = ready_client(&cluster, 3).await;
    let again = drain(&c2, "events", 6).await;
    assert_eq!(again.values().map(Vec::len).sum::<usize>(), total);
}

/// t30: stop every node (gracefully, then with kill -9) and start them again: every
/// acknowledged record is still there, and produce works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_full_restart_keeps_acknowledged_records() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "ledger", 3).await;
    let producer = client.producer("ledger", ProducerConfig::default());
    let mut expected = BTreeSet::new();
    let mut acks = Vec::new();
    for i in 0..5_000 {
        acks.push(producer.enqueue(keyed(&format!("k{i}"), &format!("a{i}"))).await.unwrap());
        expected.insert(format!("a{i}"));
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    drop(producer);
    drop(client);

    for round in ["SIGTERM", "SIGKILL"] {
        for id in cluster.ids() {
            if round == "SIGTERM" {
                cluster.stop(id);
            } else {
                cluster.kill(id);
            }
        }
        for id in cluster.ids() {
            cluster.restart(id);
        }
        let client = ready_client(&cluster, 3).await;
        let consumed = drain(&client, "ledger", 3).await;
        let values: BTreeSet<String> = consumed.values().flatten().map(|(_, v)| v.clone()).collect();
        assert_eq!(values, expected, "after {round} of every node");
        // Produce works again, and is durable for the next round.
        let producer = client.producer("ledger", ProducerConfig::default());
        let v = format!("after-{round}");
        eventually("produce after restart", Duration::from_secs(30), async || producer.send(keyed("k", &v)).await)
            .await;
        expected.insert(v);
    }
}

/// t40: bad requests get their documented error codes, and the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_bad_requests_get_documented_errors() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "t", 1).await;
    let leader = client.describe_topic("t").await.unwrap().partitions[0].leader.unwrap();
    let mut raw = FlotillaClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let produce = |topic: &str, batch: bytes::Bytes| v1::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        batch,
        ..Default::default()
    };
    let small = RecordBatch::encode(&[Record::value("x")]).unwrap().bytes().clone();

    // A batch over BATCH_BYTES_MAX but within the gRPC limit: RECORD_TOO_LARGE, in-band.
    let mut big = vec![0u8; limits::BATCH_BYTES_MAX + 1024];
    big[0] = 1;
    let r = raw.produce(produce("t", big.into())).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, ErrorCode::RecordTooLarge.as_u32());

    // A message over the gRPC limit is refused by the transport before Flotilla sees it.
    let huge = vec![0u8; limits::REQUEST_BYTES_MAX + 1024];
    let status = raw.produce(produce("t", huge.into())).await.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "unexpected status {status:?}"
    );

    // The client library refuses an oversized record locally, with the same code.
    let producer = client.producer("t", ProducerConfig::default());
    let e = producer.send_to(0, Record::value(vec![0u8; limits::BATCH_BYTES_MAX + 1])).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RecordTooLarge), "{e}");
    assert!(!e.is_indeterminate());

    // A corrupt batch: CORRUPT_BATCH.
    let mut corrupt = small.to_vec();
    *corrupt.last_mut().unwrap() ^= 0xff;
    let r = raw.produce(produce("t", corrupt.into())).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, ErrorCode::CorruptBatch.as_u32());

    // An unknown topic: UNKNOWN_TOPIC, from the raw API and from the client library.
    let r = raw.produce(produce("nope", small.clone())).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, ErrorCode::UnknownTopic.as_u32());
    let e = client.producer("nope", ProducerConfig::default()).send_to(0, Record::value("x")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}");
    assert!(!e.is_indeterminate());

    // A produce to a follower: NOT_LEADER, naming the leader and its address. A replica
    // that has not heard from its leader yet names the leader's own report, which every
    // node receives within a reconcile interval; until then it may say "not known".
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let mut to_follower = FlotillaClient::connect(format!("http://{}", cluster.addr(follower))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let r = to_follower.produce(produce("t", small.clone())).await.unwrap().into_inner();
        let err = r.error.expect("a follower refuses");
        if err.leader_id != 0 || Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(err.code, ErrorCode::NotLeader.as_u32(), "{err:?}");
    assert_eq!(err.leader_id, leader);
    assert_eq!(err.leader_addr, cluster.addr(leader));

    // An invalid topic name: INVALID_REQUEST.
    let r = raw.produce(produce("bad/name", small.clone())).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidRequest.as_u32());

    // gRPC reflection lists the services, as `grpcurl -plaintext ADDR list` does.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.addr(leader)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in ["flotilla.v1.Flotilla", "flotilla.v1.Admin"] {
        assert!(names.contains(s), "{s} not in {names:?}");
    }
    // The node-to-node service is not the client port's.
    assert!(!names.contains("flotilla.raft.v1.Raft"), "{names:?}");

    // The cluster keeps serving.
    let (p, o) = producer.send(Record::value("still-here")).await.unwrap();
    assert_eq!(p, 0);
    let consumed = drain(&client, "t", 1).await;
    assert_eq!(consumed[&0].last().unwrap(), &(o, "still-here".to_string()));
}

/// t50: `/healthz` answers while the process serves HTTP; `/ready` answers 200 once the
/// node serves (a metadata leader known, its replicas started) and 503 with the reason
/// while it does not: a node started while the rest of its cluster is down is alive but
/// not ready, and becomes ready once the others are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_health_and_readiness_endpoints() {
    let _serial = serial().await;
    let options = flotilla_testkit::ClusterOptions { metrics: true, ..Default::default() };
    let mut cluster = flotilla_testkit::ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "h", 3).await;
    let metrics = |c: &flotilla_testkit::ProcessCluster, id| c.metrics_addr(id).expect("metrics endpoint");
    for id in cluster.ids() {
        assert_eq!(http_status(&metrics(&cluster, id), "/healthz"), Some((200, "ok\n".into())));
        eventually("ready", Duration::from_secs(30), async || match http_status(&metrics(&cluster, id), "/ready") {
            Some((200, body)) if body == "ready\n" => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;
    }
    // Alone, a restarted node knows no metadata leader: alive, not ready.
    for id in cluster.ids() {
        cluster.stop(id);
    }
    cluster.restart(1);
    let addr = metrics(&cluster, 1);
    eventually("alive", Duration::from_secs(30), async || {
        http_status(&addr, "/healthz").filter(|(c, _)| *c == 200).ok_or("no answer")
    })
    .await;
    let (code, body) = http_status(&addr, "/ready").expect("an answer");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    eprintln!("node 1 alone: {body}");
    cluster.restart(2);
    cluster.restart(3);
    eventually("ready again", Duration::from_secs(60), async || match http_status(&addr, "/ready") {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
}
