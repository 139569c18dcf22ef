//! The producer over real node processes. e1: the idempotent producer through a
//! transport that loses answers: the client's connections are cut just as an answer starts to arrive, so the
//! node has done the work (a produce was committed and applied) and the client sees an
//! indeterminate failure and retries. With idempotence (the default) every record is in
//! the partition exactly once and in order, across a leader kill; without it, the same
//! transport writes duplicates (so the test can tell the two apart). e2: compressed and
//! uncompressed producers on one topic. e3: `flotilla produce --format` with keys and
//! headers per line, and `--acks leader`.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use flotilla_client::{Client, ClientConfig, Compression, ProducerConfig, Record, StartAt};
use flotilla_proto::v1;
use flotilla_testkit::ProcessCluster;
use flotilla_types::RecordBatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Cuts connections: every `every`-th time an answer starts to arrive after a request
/// was written, the read fails and the connection is dead.
#[derive(Clone)]
struct Lossy {
    armed: Arc<AtomicBool>,
    every: u64,
    answers: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
}

struct LossyStream {
    inner: tokio::net::TcpStream,
    lossy: Lossy,
    wrote: bool,
    dead: bool,
}

impl AsyncRead for LossyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.dead {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before && this.wrote => {
                this.wrote = false;
                let n = this.lossy.answers.fetch_add(1, Ordering::Relaxed) + 1;
                if this.lossy.armed.load(Ordering::Relaxed) && n.is_multiple_of(this.lossy.every) {
                    this.dead = true;
                    this.lossy.cuts.fetch_add(1, Ordering::Relaxed);
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for LossyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.dead {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Lossy {
    fn new(every: u64) -> Lossy {
        Lossy { armed: Arc::new(AtomicBool::new(false)), every, answers: Arc::default(), cuts: Arc::default() }
    }

    fn dialer(&self) -> flotilla_proto::Dialer {
        let lossy = self.clone();
        Arc::new(move |endpoint: tonic::transport::Endpoint| {
            let lossy = lossy.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: tonic::transport::Uri| {
                let lossy = lossy.clone();
                async move {
                    let host = uri.host().ok_or_else(|| io::Error::other(format!("no host in {uri}")))?.to_string();
                    let port = uri.port_u16().ok_or_else(|| io::Error::other(format!("no port in {uri}")))?;
                    let inner = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    inner.set_nodelay(true)?;
                    let stream = LossyStream { inner, lossy, wrote: false, dead: false };
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
        })
    }
}

/// Sends `n` records named `{prefix}{i}` to partition 0 through a lossy transport, many
/// queued at once; kills the partition's leader halfway when `kill` is set. The offset
/// each record was acknowledged at, and the cuts made.
async fn send_through_lossy(
    cluster: &mut ProcessCluster,
    topic: &str,
    prefix: &str,
    n: usize,
    config: ProducerConfig,
    kill: bool,
) -> (Vec<u64>, u64) {
    let lossy = Lossy::new(5);
    let client_config = ClientConfig { dialer: Some(lossy.dialer()), ..ClientConfig::default() };
    let live: Vec<String> =
        cluster.ids().into_iter().filter(|&id| cluster.is_running(id)).map(|id| cluster.addr(id)).collect();
    let client = Client::connect_with(&live.join(","), client_config).await.expect("connect");
    let producer = client.producer(topic, config);
    lossy.armed.store(true, Ordering::Relaxed);
    let mut offsets = Vec::with_capacity(n);
    for chunk in 0..n / 50 {
        if kill && chunk == n / 100 {
            let t = client.describe_topic(topic).await.expect("describe");
            let leader = t.partitions[0].leader.expect("a leader");
            cluster.kill(leader);
            println!("killed the leader, node {leader}");
        }
        let mut acks = Vec::new();
        for i in chunk * 50..(chunk + 1) * 50 {
            acks.push(producer.enqueue_to(0, Record::value(format!("{prefix}{i}"))).await.expect("queued"));
        }
        for ack in acks {
            offsets.push(ack.await.expect("acknowledged").1);
        }
    }
    lossy.armed.store(false, Ordering::Relaxed);
    (offsets, lossy.cuts.load(Ordering::Relaxed))
}

/// e1: exactly once through lost answers and a leader kill; duplicates without
/// idempotence through the same transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_the_idempotent_producer_writes_each_record_once_through_lost_answers_and_a_leader_kill() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "once", 1).await;
    create_topic(&client, "twice", 1).await;
    let n = 1_000;
    let patient = ProducerConfig {
        delivery_timeout: Some(Duration::from_secs(120)),
        max_in_flight: 5,
        ..ProducerConfig::default()
    };

    let started = std::time::Instant::now();
    let (offsets, cuts) = send_through_lossy(&mut cluster, "once", "v", n, patient.clone(), true).await;
    println!("idempotent: {n} records, {cuts} answers lost, {:?}", started.elapsed());
    assert!(cuts >= 10, "the transport lost only {cuts} answers");
    let read = drain(&client, "once", 1).await.remove(&0).expect("partition 0");
    let values: Vec<String> = read.iter().map(|(_, v)| v.clone()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    assert_eq!(values.len(), n, "every record once: {} read for {n} sent", values.len());
    assert_eq!(values, expected, "in the order sent");
    let read_offsets: Vec<u64> = read.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, read_offsets, "each record was acknowledged at the offset it is read at");

    // The same transport without idempotence: retries write some batches twice.
    let at_least_once = ProducerConfig { idempotent: false, retry_indeterminate: true, ..patient };
    let started = std::time::Instant::now();
    let (_, cuts) = send_through_lossy(&mut cluster, "twice", "w", 500, at_least_once, false).await;
    let values: Vec<String> =
        drain(&client, "twice", 1).await.remove(&0).expect("p0").into_iter().map(|(_, v)| v).collect();
    println!("not idempotent: 500 records, {cuts} answers lost, {} read, {:?}", values.len(), started.elapsed());
    assert!(values.len() > 500, "lost answers and retries without idempotence wrote no duplicate");
}

/// e2: producers with no compression, lz4 and zstd write the same compressible records
/// to one partition; a consumer reads all three back identically, and the batches the
/// partition stores (as a fetch returns them) are smaller by the codec's factor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_compressed_and_uncompressed_producers_on_one_topic_read_back_identically() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "mixed", 1).await;
    let value = |i: usize| format!("{{\"user\": \"user-{}\", \"event\": \"clicked\", \"n\": {i:>40}}}", i % 50);
    let n = 600;
    let mut ranges = Vec::new();
    for c in Compression::ALL {
        let producer = client.producer(
            "mixed",
            ProducerConfig { compression: c, linger: Duration::from_millis(20), ..ProducerConfig::default() },
        );
        let mut acks = Vec::new();
        for i in 0..n {
            let r = Record { key: Some(format!("k{}", i % 5).into()), ..Record::value(value(i)) };
            acks.push(producer.enqueue_to(0, r).await.expect("queued"));
        }
        let mut offsets = Vec::new();
        for a in acks {
            offsets.push(a.await.expect("acknowledged").1);
        }
        ranges.push((c, offsets[0], offsets[n - 1] + 1));
    }

    // The consumer sees the same records from each producer.
    let mut consumer = client.consumer("mixed", 0, StartAt::Beginning).await.expect("consumer");
    let mut read = Vec::new();
    while read.len() < 3 * n {
        read.extend(consumer.poll(Duration::from_secs(1)).await.expect("poll"));
    }
    let values: Vec<String> = read.iter().map(|r| String::from_utf8(r.record.value.to_vec()).unwrap()).collect();
    for k in 0..3 {
        let expected: Vec<String> = (0..n).map(value).collect();
        assert_eq!(values[k * n..(k + 1) * n], expected[..], "{:?}", ranges[k].0);
        assert!(
            read[k * n..(k + 1) * n]
                .iter()
                .enumerate()
                .all(|(i, r)| r.record.key.as_deref() == Some(format!("k{}", i % 5).as_bytes()))
        );
    }

    // The stored batches, as the partition serves them.
    let mut raw = raw(&cluster, 1).await;
    let mut stored = std::collections::BTreeMap::new();
    let mut offset = 0;
    while offset < 3 * n as u64 {
        let req = v1::FetchRequest {
            topic: "mixed".into(),
            partition: 0,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            from_follower: true,
            ..Default::default()
        };
        let r = raw.fetch(req).await.expect("fetch").into_inner();
        assert!(r.error.is_none(), "{:?}", r.error);
        for b in r.batches {
            let batch = RecordBatch::decode(b.batch.clone()).expect("a whole batch");
            *stored.entry(batch.compression().name()).or_insert(0usize) += b.batch.len();
            offset = b.base_offset + u64::from(batch.len());
        }
    }
    println!("stored bytes of {n} records: {stored:?}");
    let (none, lz4, zstd) = (stored["none"], stored["lz4"], stored["zstd"]);
    assert!(lz4 * 3 < none, "lz4 stored {lz4} bytes for {none} uncompressed");
    assert!(zstd * 4 < none, "zstd stored {zstd} bytes for {none} uncompressed");
}

/// e3: `flotilla produce --format` reads keys, headers and values per line (kcat-style),
/// `--acks leader` is answered, a line that does not match is reported and counted while
/// the others are sent, and `consume --format` prints them back as they were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_produce_reads_keys_and_headers_per_line_and_acks_leader_is_answered() {
    let _serial = serial().await;
    let cluster = ProcessCluster::start(env!("CARGO_BIN_EXE_flotilla"), 3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    cli_ok(&b, &["topic", "create", "kv", "--partitions", "1"]).await;
    let input = "user-1\tsource=web,v=2\thello\nuser-2\t\tworld\tand a tab\nno tabs here\nuser-3\tv=3\t!\n";
    let out = cli_with_input(&b, &["produce", "kv", "-F", "%k\\t%h\\t%s", "--acks", "leader"], input).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad line makes the exit non-zero: {stderr}");
    assert!(stderr.contains("line 3: does not match --format"), "{stderr}");
    assert!(stderr.contains("3 records acknowledged") && stderr.contains("1 input line not sent"), "{stderr}");
    let printed = cli_ok(&b, &["consume", "kv", "--format", "%o %k|%h|%s\\n"]).await;
    assert_eq!(printed, "0 user-1|source=web,v=2|hello\n1 user-2||world\tand a tab\n2 user-3|v=3|!\n");
    // The records are committed (acks=leader answered them before the followers had them).
    assert_eq!(client.list_offsets("kv", 0).await.unwrap(), (0, 3));
}
