//! The idempotent producer over real node processes, through a transport that loses
//! answers: the client's connections are cut just as an answer starts to arrive, so the
//! node has done the work (a produce was committed and applied) and the client sees an
//! indeterminate failure and retries. With idempotence (the default) every record is in
//! the partition exactly once and in order, across a leader kill; without it, the same
//! transport writes duplicates (so the test can tell the two apart).

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use flotilla_client::{Client, ClientConfig, ProducerConfig, Record};
use flotilla_testkit::ProcessCluster;
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
    let patient = ProducerConfig { delivery_timeout: Some(Duration::from_secs(120)), ..ProducerConfig::default() };

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
