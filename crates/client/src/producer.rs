//! The batching producer.
//!
//! Each partition has a queue and a background task. The task takes the first queued
//! record, waits up to `linger` (counted from when that record was queued) for more,
//! packs what came into one [`RecordBatch`] within the batch limits, sends it to the
//! partition's leader, and hands each waiting caller its own offset (the batch's base
//! offset plus the record's index). One batch per partition is in flight at a time, so
//! records sent to one partition are appended in the order they were queued; while a
//! batch is in flight the next one fills up, so batches grow with the load.
//!
//! **Idempotence** (on by default, `ProducerConfig::idempotent`): the producer gets an id
//! and epoch from the metadata group on its first send, and stamps every batch with them
//! and the partition's next sequence number (a `Sequencer` per partition, shared by the
//! queue's task and `send_batch`, so one batch per partition is in flight). The partition
//! appends a retried batch once and answers the retry with the first append's offsets,
//! so retries after timeouts and lost connections are safe. After a failure whose outcome
//! stays unknown, or when the partition no longer knows the producer, the producer takes
//! a new identity (a new id, or a named producer's next epoch) and every partition starts
//! again at sequence 0 with it (Kafka's KIP-360).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use flotilla_types::batch::BATCH_HEADER_BYTES;
use flotilla_types::{Compression, ErrorCode, Offset, PartitionId, ProducerStamp, Record, RecordBatch, limits};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{Client, ClientInner};
use crate::config::ProducerConfig;
use crate::error::{ClientError, Result};
use crate::partitioner::partition_for_key;

/// Sends records to one topic. Cheap to clone; clones share the batching queues. Dropping
/// the last clone lets the queues drain: records already queued are still sent.
///
/// **Exactly once per send.** With idempotence (the default) a batch whose attempt timed
/// out or lost its connection is sent again and appended at most once. A send that still
/// fails with an indeterminate error (`ClientError::is_indeterminate`: the delivery
/// timeout passed while the outcome was unknown) may have been appended once; never
/// twice. Without idempotence and with `ProducerConfig::retry_indeterminate`, a retried
/// batch whose first attempt had in fact been committed is in the partition twice.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("topic", &self.shared.writer.topic).finish_non_exhaustive()
    }
}

struct Shared {
    writer: Arc<Writer>,
    queues: Mutex<HashMap<PartitionId, mpsc::Sender<Pending>>>,
    round_robin: AtomicU32,
}

/// What sends batches: shared by the producer and its partitions' tasks (which must not
/// hold the queues, or the queues would never close).
struct Writer {
    client: Client,
    topic: String,
    config: ProducerConfig,
    /// Per partition, shared by its queue's task and `send_batch`.
    sequencers: Mutex<HashMap<PartitionId, Arc<tokio::sync::Mutex<Sequencer>>>>,
    /// The idempotent producer's id and epoch, once the metadata group issued them.
    identity: tokio::sync::Mutex<Option<Identity>>,
}

/// An idempotent producer's id and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    id: u64,
    epoch: u16,
}

/// The next sequence number of one partition, under the identity it counts for.
#[derive(Debug, Default)]
struct Sequencer {
    identity: Option<Identity>,
    next: u32,
}

/// The acknowledgement of one queued record: resolves to its partition and offset, or
/// to the error its batch failed with (shared by every record of the batch).
#[derive(Debug)]
#[must_use = "an Ack does nothing unless awaited (the record is sent anyway)"]
pub struct Ack {
    partition: PartitionId,
    answer: oneshot::Receiver<Result<Offset>>,
}

impl Ack {
    /// The partition the record was queued for.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }
}

impl std::future::Future for Ack {
    type Output = Result<(PartitionId, Offset)>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.answer).poll(cx) {
            std::task::Poll::Ready(Ok(r)) => std::task::Poll::Ready(r.map(|o| (this.partition, o))),
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(ClientError::Closed)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// One record waiting for its batch.
struct Pending {
    record: Record,
    size: usize,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Offset>>,
}

/// Batch limits after clamping to the global limits.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    bytes: usize,
    records: usize,
}

impl BatchLimits {
    fn new(config: &ProducerConfig) -> BatchLimits {
        BatchLimits {
            bytes: config.max_batch_bytes.clamp(BATCH_HEADER_BYTES + 1, limits::BATCH_BYTES_MAX),
            records: config.max_batch_records.clamp(1, limits::BATCH_RECORDS_MAX),
        }
    }
}

/// Refuses, before anything is sent, a record that could never be written: its
/// encoded size (in a batch of its own) is returned.
pub(crate) fn check_record(r: &Record) -> Result<usize> {
    let too_large = |m: String| ClientError::refused(ErrorCode::RecordTooLarge, m);
    if let Some(k) = &r.key
        && k.len() > limits::RECORD_KEY_BYTES_MAX
    {
        return Err(too_large(format!("key of {} bytes, the limit is {}", k.len(), limits::RECORD_KEY_BYTES_MAX)));
    }
    if r.headers.len() > limits::RECORD_HEADERS_MAX {
        return Err(too_large(format!("{} headers, the limit is {}", r.headers.len(), limits::RECORD_HEADERS_MAX)));
    }
    if let Some((name, _)) = r.headers.iter().find(|(n, _)| n.len() > u16::MAX as usize) {
        return Err(too_large(format!("header name of {} bytes, the limit is {}", name.len(), u16::MAX)));
    }
    let size = r.encoded_len();
    if BATCH_HEADER_BYTES + size > limits::BATCH_BYTES_MAX {
        return Err(too_large(format!(
            "record of {} bytes encoded, the limit is {} (one batch)",
            size,
            limits::BATCH_BYTES_MAX - BATCH_HEADER_BYTES
        )));
    }
    Ok(size)
}

impl Producer {
    pub(crate) fn new(client: Client, topic: String, config: ProducerConfig) -> Producer {
        let start = client.inner.config.seed.map_or_else(rand::random::<u32>, |s| s as u32);
        Producer {
            shared: Arc::new(Shared {
                writer: Arc::new(Writer {
                    client,
                    topic,
                    config,
                    sequencers: Mutex::new(HashMap::new()),
                    identity: tokio::sync::Mutex::new(None),
                }),
                queues: Mutex::new(HashMap::new()),
                round_robin: AtomicU32::new(start),
            }),
        }
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.shared.writer.topic
    }

    /// Sends one record and waits for its acknowledgement (acks=all: durable on a quorum).
    /// The partition is chosen by key (Kafka's murmur2 hash partitioner), or round-robin
    /// for records without a key. Returns the partition and the record's offset.
    pub async fn send(&self, record: Record) -> Result<(PartitionId, Offset)> {
        self.enqueue(record).await?.await
    }

    /// Sends one record to `partition`, batched with other records for it; its offset.
    pub async fn send_to(&self, partition: PartitionId, record: Record) -> Result<Offset> {
        Ok(self.enqueue_to(partition, record).await?.await?.1)
    }

    /// Queues one record (partition chosen as by [`Producer::send`]) and returns as soon
    /// as it is queued, waiting only while the partition's queue is full. The returned
    /// [`Ack`] resolves to its partition and offset. Records queued one after another
    /// from one task are appended in that order, so a caller can keep many records in
    /// flight without giving up ordering. A queued record is sent whether or not its
    /// `Ack` is awaited.
    pub async fn enqueue(&self, record: Record) -> Result<Ack> {
        check_record(&record)?;
        let n = self.shared.writer.client.partition_count(&self.shared.writer.topic).await?;
        if n == 0 {
            return Err(ClientError::refused(
                ErrorCode::Unavailable,
                format!("topic '{}' has no partitions yet", self.shared.writer.topic),
            ));
        }
        let partition = match &record.key {
            Some(k) => partition_for_key(k, n),
            None => self.shared.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.enqueue_to(partition, record).await
    }

    /// [`Producer::enqueue`] to a given partition.
    pub async fn enqueue_to(&self, partition: PartitionId, mut record: Record) -> Result<Ack> {
        let size = check_record(&record)?;
        if record.timestamp_ms == 0 {
            record.timestamp_ms = self.shared.writer.client.inner.now_ms();
        }
        let queue = self.queue(partition).await?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { record, size, queued_at: Instant::now(), reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Ack { partition, answer })
    }

    /// Sends `records` as one batch to `partition` at once (no lingering, not ordered
    /// with records queued by `send`); the offset of the first. Every record must pass
    /// the limits and the batch must fit in one batch (`limits::BATCH_BYTES_MAX`,
    /// `BATCH_RECORDS_MAX`), else nothing is sent.
    pub async fn send_batch(&self, partition: PartitionId, mut records: Vec<Record>) -> Result<Offset> {
        let now = self.shared.writer.client.inner.now_ms();
        for r in &mut records {
            check_record(r)?;
            if r.timestamp_ms == 0 {
                r.timestamp_ms = now;
            }
        }
        // Checked before anything is sent: the encoding fails the same way stamped or not.
        RecordBatch::encode(&records)
            .map_err(|e| ClientError::refused(flotilla_proto::batch_error_code(&e), e.to_string()))?;
        self.shared.writer.client.inner.partition_info(&self.shared.writer.topic, partition).await?;
        let deadline = self.shared.writer.config.delivery_timeout.map(|d| Instant::now() + d);
        self.shared.writer.send(partition, &records, deadline).await
    }

    /// The queue of `partition`, created with its task on first use.
    async fn queue(&self, partition: PartitionId) -> Result<mpsc::Sender<Pending>> {
        if let Some(q) = self.shared.queues.lock().expect("queues lock").get(&partition) {
            return Ok(q.clone());
        }
        // Checked before a task is spawned, so an unknown partition costs nothing.
        self.shared.writer.client.inner.partition_info(&self.shared.writer.topic, partition).await?;
        let mut queues = self.shared.queues.lock().expect("queues lock");
        let q = queues.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.shared.writer.config.queue_records.max(1));
            let task = PartitionTask {
                shared: self.shared.writer.clone(),
                partition,
                limits: BatchLimits::new(&self.shared.writer.config),
            };
            tokio::spawn(task.run(rx));
            tx
        });
        Ok(q.clone())
    }
}

impl Writer {
    fn client(&self) -> &Arc<ClientInner> {
        &self.client.inner
    }

    /// Sends `records` as one batch to `partition`: stamped and in sequence when
    /// idempotent, plain otherwise. The first record's offset.
    async fn send(&self, partition: PartitionId, records: &[Record], deadline: Option<Instant>) -> Result<Offset> {
        if !self.config.idempotent {
            let batch = encode(records, None, self.config.compression)?;
            return self
                .client()
                .produce(&self.topic, partition, &batch, self.config.retry_indeterminate, deadline)
                .await;
        }
        let sequencer = self.sequencer(partition);
        let mut seq = sequencer.lock().await;
        let mut renewed = false;
        loop {
            // No batch was sent yet: whatever became of the request for an id, this send
            // definitely wrote nothing.
            let identity = self.identity().await.map_err(|e| match e.is_indeterminate() {
                true => ClientError::refused(
                    ErrorCode::Unavailable,
                    format!("no producer id from the metadata group, nothing was sent: {e}"),
                ),
                false => e,
            })?;
            if seq.identity != Some(identity) {
                *seq = Sequencer { identity: Some(identity), next: 0 };
            }
            let stamp = ProducerStamp { id: identity.id, epoch: identity.epoch, base_sequence: seq.next };
            let batch = encode(records, Some(stamp), self.config.compression)?;
            match self.client().produce(&self.topic, partition, &batch, true, deadline).await {
                Ok(base) => {
                    seq.next = seq.next.wrapping_add(batch.len());
                    return Ok(base);
                }
                // The partition forgot this producer (idle too long): nothing was
                // written, so the batch may go again under a new identity, once.
                Err(e) if e.code() == Some(ErrorCode::OutOfOrderSequence) && !renewed => {
                    tracing::info!(topic = %self.topic, partition, error = %e, "producer sequence refused; renewing the producer id");
                    self.renew(identity).await;
                    renewed = true;
                }
                // The batch may or may not be in the partition, so the next one cannot
                // follow it in sequence: start a new sequence under a new identity.
                Err(e) if e.is_indeterminate() => {
                    self.renew(identity).await;
                    return Err(e);
                }
                // Nothing was written: the sequence number is still free.
                Err(e) => return Err(e),
            }
        }
    }

    fn sequencer(&self, partition: PartitionId) -> Arc<tokio::sync::Mutex<Sequencer>> {
        self.sequencers.lock().expect("sequencers lock").entry(partition).or_default().clone()
    }

    /// The producer's id and epoch, from the metadata group on first use.
    async fn identity(&self) -> Result<Identity> {
        let mut identity = self.identity.lock().await;
        if let Some(i) = *identity {
            return Ok(i);
        }
        let (id, epoch) = self.client().init_producer(self.config.name.as_deref()).await?;
        let i = Identity { id, epoch };
        *identity = Some(i);
        Ok(i)
    }

    /// Drops identity `old` (if still current) so the next batch gets a new one.
    async fn renew(&self, old: Identity) {
        let mut identity = self.identity.lock().await;
        if *identity == Some(old) {
            *identity = None;
        }
    }
}

fn encode(records: &[Record], stamp: Option<ProducerStamp>, compression: Compression) -> Result<RecordBatch> {
    RecordBatch::encode_with(records, stamp, compression)
        .map_err(|e| ClientError::refused(flotilla_proto::batch_error_code(&e), e.to_string()))
}

struct PartitionTask {
    shared: Arc<Writer>,
    partition: PartitionId,
    limits: BatchLimits,
}

impl PartitionTask {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let mut carry: Option<Pending> = None;
        while let Some(batch) = next_batch(&mut rx, &mut carry, self.shared.config.linger, self.limits).await {
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Vec<Pending>) {
        let Some(first) = batch.first() else { return };
        let timeout = self.shared.config.delivery_timeout.unwrap_or(self.shared.client().config.retry_deadline);
        let deadline = first.queued_at + timeout;
        let (records, replies): (Vec<Record>, Vec<_>) = batch.into_iter().map(|p| (p.record, p.reply)).unzip();
        let result = self.shared.send(self.partition, &records, Some(deadline)).await;
        for (i, reply) in replies.into_iter().enumerate() {
            let _ = reply.send(result.clone().map(|base| base + i as u64));
        }
    }
}

/// Gathers the next batch: the first record (carried over or awaited), then whatever
/// arrives until the first record's linger has passed or the batch is full. A record
/// that does not fit is carried over to the next batch. `None` when the queue is closed
/// and empty.
async fn next_batch(
    rx: &mut mpsc::Receiver<Pending>,
    carry: &mut Option<Pending>,
    linger: std::time::Duration,
    limits: BatchLimits,
) -> Option<Vec<Pending>> {
    let first = match carry.take() {
        Some(p) => p,
        None => rx.recv().await?,
    };
    let linger_until = first.queued_at + linger;
    let mut bytes = BATCH_HEADER_BYTES + first.size;
    let mut batch = vec![first];
    while batch.len() < limits.records {
        let next = match rx.try_recv() {
            Ok(p) => Some(p),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                if Instant::now() >= linger_until {
                    None
                } else {
                    tokio::time::timeout_at(linger_until, rx.recv()).await.ok().flatten()
                }
            }
        };
        let Some(p) = next else { break };
        if bytes + p.size > limits.bytes {
            *carry = Some(p);
            break;
        }
        bytes += p.size;
        batch.push(p);
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn pending(value_len: usize) -> (Pending, oneshot::Receiver<Result<Offset>>) {
        let record = Record::value(vec![0u8; value_len]);
        let size = check_record(&record).unwrap();
        let (reply, rx) = oneshot::channel();
        (Pending { record, size, queued_at: Instant::now(), reply }, rx)
    }

    #[test]
    fn oversized_records_are_refused_locally() {
        let big = Record::value(vec![0u8; limits::BATCH_BYTES_MAX]);
        let e = check_record(&big).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::RecordTooLarge));
        assert!(!e.is_indeterminate());
        assert!(e.to_string().contains("limit"), "{e}");

        let key = Record { key: Some(Bytes::from(vec![0u8; limits::RECORD_KEY_BYTES_MAX + 1])), ..Record::value("v") };
        assert_eq!(check_record(&key).unwrap_err().code(), Some(ErrorCode::RecordTooLarge));

        let headers =
            Record { headers: vec![("h".into(), Bytes::new()); limits::RECORD_HEADERS_MAX + 1], ..Record::value("v") };
        assert_eq!(check_record(&headers).unwrap_err().code(), Some(ErrorCode::RecordTooLarge));

        // The largest record that fits a batch of its own is accepted and encodes.
        let max_value = limits::BATCH_BYTES_MAX - BATCH_HEADER_BYTES - Record::value("").encoded_len();
        let fits = Record::value(vec![0u8; max_value]);
        assert!(check_record(&fits).is_ok());
        assert!(RecordBatch::encode(&[fits]).is_ok());
    }

    #[test]
    fn limits_are_clamped() {
        let l = BatchLimits::new(&ProducerConfig {
            max_batch_bytes: usize::MAX,
            max_batch_records: 0,
            ..Default::default()
        });
        assert_eq!(l.bytes, limits::BATCH_BYTES_MAX);
        assert_eq!(l.records, 1);
    }

    #[tokio::test]
    async fn batches_respect_the_record_limit() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut answers = vec![];
        for _ in 0..25 {
            let (p, a) = pending(10);
            answers.push(a);
            tx.send(p).await.unwrap();
        }
        drop(tx);
        let limits = BatchLimits { bytes: limits::BATCH_BYTES_MAX, records: 10 };
        let mut carry = None;
        let mut sizes = vec![];
        while let Some(b) = next_batch(&mut rx, &mut carry, Duration::from_millis(1), limits).await {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![10, 10, 5]);
    }

    #[tokio::test]
    async fn batches_respect_the_byte_limit_and_carry_over() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut answers = vec![];
        for _ in 0..5 {
            let (p, a) = pending(1000);
            answers.push(a);
            tx.send(p).await.unwrap();
        }
        drop(tx);
        let one = Record::value(vec![0u8; 1000]).encoded_len();
        // Room for two records, not three.
        let limits = BatchLimits { bytes: BATCH_HEADER_BYTES + 2 * one + one / 2, records: 100 };
        let mut carry = None;
        let mut sizes = vec![];
        while let Some(b) = next_batch(&mut rx, &mut carry, Duration::from_millis(1), limits).await {
            let records: Vec<Record> = b.iter().map(|p| p.record.clone()).collect();
            assert!(RecordBatch::encode(&records).unwrap().bytes().len() <= limits.bytes);
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_gathers_late_records_but_not_after_it() {
        let (tx, mut rx) = mpsc::channel(100);
        let (p1, _a1) = pending(1);
        tx.send(p1).await.unwrap();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (p2, a2) = pending(1);
            tx2.send(p2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (p3, a3) = pending(1);
            tx2.send(p3).await.unwrap();
            std::mem::forget((a2, a3));
        });
        let limits = BatchLimits { bytes: limits::BATCH_BYTES_MAX, records: 100 };
        let mut carry = None;
        let b = next_batch(&mut rx, &mut carry, Duration::from_millis(20), limits).await.unwrap();
        assert_eq!(b.len(), 2, "the record 5 ms later joins a 20 ms linger");
        let b = next_batch(&mut rx, &mut carry, Duration::from_millis(20), limits).await.unwrap();
        assert_eq!(b.len(), 1, "the record 55 ms later starts a new batch");
    }
}
