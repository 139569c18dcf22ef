//! The batching producer.
//!
//! Each partition has a queue and a background task. The task gathers the queued
//! records into a [`RecordBatch`] (the first record waits up to `linger`, counted from
//! when it was queued, for more; the batch stops at the batch limits), sends it to the
//! partition's leader, and hands each waiting caller its own offset (the batch's base
//! offset plus the record's index). Up to `max_in_flight` batches per partition are in
//! flight at once; the next batch is gathered only when one may go, so batches grow with
//! the load. A byte budget over every queued and unacknowledged record (`buffer_bytes`)
//! is the producer's backpressure: `send` waits for room, `try_send` fails at once.
//!
//! **Idempotence** (on by default, `ProducerConfig::idempotent`): the producer gets an id
//! and epoch from the metadata group on its first send, and stamps every batch with them
//! and the partition's next sequence number (the partition's task numbers its batches in
//! the order they go). The partition appends a batch only if its sequence is the next
//! one, answers a retry with the first append's offsets, and refuses a gap with
//! `OUT_OF_ORDER_SEQUENCE`; so retries after timeouts and lost connections are safe, and
//! with several batches in flight the partition's order is the queue's order:
//!
//! - a batch refused as out of order while an earlier one is still in flight (the
//!   earlier one failed over to a new leader, or the requests crossed) waits, and goes
//!   again once everything before it is acknowledged;
//! - after a failure whose outcome stays unknown, or one that leaves later batches
//!   behind a gap, or when the partition no longer knows the producer, the producer takes
//!   a new identity (a new id, or a named producer's next epoch; Kafka's KIP-360), and
//!   each partition starts again at sequence 0 with it, once its batches under the old
//!   identity have all been answered: they are numbered again, in order, under the new
//!   one if they were refused.
//!
//! Without idempotence one batch per partition is in flight, so retries cannot reorder.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use flotilla_types::batch::BATCH_HEADER_BYTES;
use flotilla_types::{Compression, ErrorCode, Offset, PartitionId, ProducerStamp, Record, RecordBatch, limits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ProducerConfig;
use crate::error::{ClientError, Result};
use crate::partitioner::partition_for_key;
use crate::router::ClientInner;

/// Sends records to one topic. Cheap to clone; clones share the batching queues and the
/// buffer. Dropping the last clone lets the queues drain: records already queued are
/// still sent.
///
/// **Exactly once per send.** With idempotence (the default) a batch whose attempt timed
/// out or lost its connection is sent again and appended at most once, and records
/// queued for one partition are appended in the order they were queued, whatever was
/// retried. A send that still fails with an indeterminate error
/// (`ClientError::is_indeterminate`: the delivery timeout passed while the outcome was
/// unknown) may have been appended once; never twice. Without idempotence and with
/// `ProducerConfig::retry_indeterminate`, a retried batch whose first attempt had in fact
/// been committed is in the partition twice.
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
    queues: Mutex<HashMap<PartitionId, mpsc::UnboundedSender<Item>>>,
    sticky: Mutex<Sticky>,
    /// One permit per byte of every record queued or in flight (encoded size); a record
    /// larger than the whole buffer takes all of it.
    buffer: Arc<Semaphore>,
    buffer_bytes: usize,
}

/// What sends batches: shared by the producer and its partitions' tasks (which must not
/// hold the queues, or the queues would never close).
struct Writer {
    client: Arc<ClientInner>,
    topic: String,
    config: ProducerConfig,
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

/// The partition for records without a key (Kafka's sticky partitioner, KIP-480/794):
/// one partition until `switch_bytes` of records went to it, then another one at random,
/// so that keyless records fill batches instead of spreading one record per partition.
struct Sticky {
    current: Option<PartitionId>,
    bytes: usize,
    rng: StdRng,
}

impl Sticky {
    fn pick(&mut self, partitions: u32, size: usize, switch_bytes: usize) -> PartitionId {
        if let Some(p) = self.current
            && p < partitions
            && self.bytes < switch_bytes
        {
            self.bytes += size;
            return p;
        }
        let mut next = self.rng.random_range(0..partitions);
        if partitions > 1 && Some(next) == self.current {
            next = (next + 1 + self.rng.random_range(0..partitions - 1)) % partitions;
        }
        self.current = Some(next);
        self.bytes = size;
        next
    }
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

/// What a partition's queue carries.
enum Item {
    /// One record waiting for its batch.
    Record(Pending),
    /// A batch of its own (`send_batch`): not merged with queued records.
    Batch(Batch),
    /// `flush`: answered once everything queued before it is answered.
    Flush(oneshot::Sender<()>),
}

/// One record waiting for its batch.
struct Pending {
    record: Record,
    size: usize,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Offset>>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Who waits for a batch's answer.
enum Replies {
    /// One caller per record, each answered with its own offset.
    Each(Vec<oneshot::Sender<Result<Offset>>>),
    /// One caller for the whole batch, answered with the first offset.
    Whole(oneshot::Sender<Result<Offset>>),
}

/// Records that go as one batch, with whoever waits for them and their buffer space.
struct Batch {
    /// Gathering order within the partition; 0 until gathered.
    id: u64,
    records: Vec<Record>,
    replies: Replies,
    queued_at: Instant,
    permit: Option<OwnedSemaphorePermit>,
}

impl Batch {
    fn answer(self, result: Result<Offset>) {
        match self.replies {
            Replies::Whole(reply) => {
                let _ = reply.send(result);
            }
            Replies::Each(replies) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(result.clone().map(|base| base + i as u64));
                }
            }
        }
        // The buffer space goes back once the callers have their answers.
        drop(self.permit);
    }
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

/// Whether a record that finds the buffer full waits for room or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Wait,
    Fail,
}

impl Producer {
    pub(crate) fn new(client: Arc<ClientInner>, topic: String, config: ProducerConfig) -> Producer {
        #[allow(clippy::disallowed_methods, reason = "an unseeded client draws its seed from the OS")]
        let seed = client.config.seed.unwrap_or_else(rand::random::<u64>);
        let buffer_bytes = config.buffer_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Producer {
            shared: Arc::new(Shared {
                writer: Arc::new(Writer { client, topic, config, identity: tokio::sync::Mutex::new(None) }),
                queues: Mutex::new(HashMap::new()),
                sticky: Mutex::new(Sticky { current: None, bytes: 0, rng: StdRng::seed_from_u64(seed) }),
                buffer: Arc::new(Semaphore::new(buffer_bytes)),
                buffer_bytes,
            }),
        }
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.shared.writer.topic
    }

    /// Sends one record and waits for its acknowledgement (acks=all: durable on a quorum).
    /// The partition is chosen by key (Kafka's murmur2 hash partitioner), or by the sticky
    /// partitioner for records without a key (see [`ProducerConfig::sticky_bytes`]).
    /// Returns the partition and the record's offset.
    pub async fn send(&self, record: Record) -> Result<(PartitionId, Offset)> {
        self.enqueue(record).await?.await
    }

    /// Sends one record to `partition`, batched with other records for it; its offset.
    pub async fn send_to(&self, partition: PartitionId, record: Record) -> Result<Offset> {
        Ok(self.enqueue_to(partition, record).await?.await?.1)
    }

    /// Queues one record (partition chosen as by [`Producer::send`]) and returns as soon
    /// as it is queued, waiting only while the producer's buffer is full
    /// ([`ProducerConfig::buffer_bytes`]). The returned [`Ack`] resolves to its partition
    /// and offset. Records queued one after another from one task are appended in that
    /// order, so a caller can keep many records in flight without giving up ordering. A
    /// queued record is sent whether or not its `Ack` is awaited.
    pub async fn enqueue(&self, record: Record) -> Result<Ack> {
        self.enqueue_keyed(record, Room::Wait).await
    }

    /// [`Producer::enqueue`] without waiting for room: when the buffer cannot take the
    /// record, fails at once with [`ClientError::BufferFull`] and queues nothing (Kafka's
    /// `send` with `max.block.ms=0`). It may still wait for the topic's metadata the
    /// first time.
    pub async fn try_send(&self, record: Record) -> Result<Ack> {
        self.enqueue_keyed(record, Room::Fail).await
    }

    /// [`Producer::enqueue`] to a given partition.
    pub async fn enqueue_to(&self, partition: PartitionId, record: Record) -> Result<Ack> {
        let size = check_record(&record)?;
        self.queue_record(partition, record, size, Room::Wait).await
    }

    /// [`Producer::try_send`] to a given partition.
    pub async fn try_send_to(&self, partition: PartitionId, record: Record) -> Result<Ack> {
        let size = check_record(&record)?;
        self.queue_record(partition, record, size, Room::Fail).await
    }

    async fn enqueue_keyed(&self, record: Record, room: Room) -> Result<Ack> {
        let size = check_record(&record)?;
        let n = self.shared.writer.client.partition_count(&self.shared.writer.topic).await?;
        if n == 0 {
            return Err(ClientError::refused(
                ErrorCode::Unavailable,
                format!("topic '{}' has no partitions yet", self.shared.writer.topic),
            ));
        }
        let partition = match &record.key {
            Some(k) => partition_for_key(k, n),
            None => {
                let switch = self.shared.writer.config.sticky_bytes.max(1);
                self.shared.sticky.lock().expect("sticky lock").pick(n, size, switch)
            }
        };
        self.queue_record(partition, record, size, room).await
    }

    async fn queue_record(&self, partition: PartitionId, mut record: Record, size: usize, room: Room) -> Result<Ack> {
        if record.timestamp_ms == 0 {
            record.timestamp_ms = self.shared.writer.client.now_ms();
        }
        let queue = self.queue(partition).await?;
        let permit = self.reserve(size, room).await?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending { record, size, queued_at: Instant::now(), reply, permit: Some(permit) };
        queue.send(Item::Record(pending)).map_err(|_| ClientError::Closed)?;
        Ok(Ack { partition, answer })
    }

    /// Room in the buffer for `bytes`: waits for it, or fails at once.
    async fn reserve(&self, bytes: usize, room: Room) -> Result<OwnedSemaphorePermit> {
        let permits = u32::try_from(bytes.clamp(1, self.shared.buffer_bytes)).unwrap_or(u32::MAX);
        let buffer = self.shared.buffer.clone();
        match room {
            Room::Wait => buffer.acquire_many_owned(permits).await.map_err(|_| ClientError::Closed),
            Room::Fail => buffer
                .try_acquire_many_owned(permits)
                .map_err(|_| ClientError::BufferFull { needed: bytes, limit: self.shared.buffer_bytes }),
        }
    }

    /// Sends `records` as one batch to `partition` (no lingering, not merged with other
    /// records; in order with the records queued for the partition before it); the offset
    /// of the first. Every record must pass the limits and the batch must fit in one batch
    /// (`limits::BATCH_BYTES_MAX`, `BATCH_RECORDS_MAX`), else nothing is sent.
    pub async fn send_batch(&self, partition: PartitionId, mut records: Vec<Record>) -> Result<Offset> {
        let now = self.shared.writer.client.now_ms();
        let mut bytes = BATCH_HEADER_BYTES;
        for r in &mut records {
            bytes += check_record(r)?;
            if r.timestamp_ms == 0 {
                r.timestamp_ms = now;
            }
        }
        if records.is_empty() {
            return Err(ClientError::refused(ErrorCode::InvalidRequest, "a batch of no records"));
        }
        if records.len() > limits::BATCH_RECORDS_MAX || bytes > limits::BATCH_BYTES_MAX {
            return Err(ClientError::refused(
                ErrorCode::RecordTooLarge,
                format!(
                    "a batch of {} records and {bytes} bytes encoded; the limits are {} records and {} bytes",
                    records.len(),
                    limits::BATCH_RECORDS_MAX,
                    limits::BATCH_BYTES_MAX
                ),
            ));
        }
        let queue = self.queue(partition).await?;
        let permit = self.reserve(bytes, Room::Wait).await?;
        let (reply, answer) = oneshot::channel();
        let batch =
            Batch { id: 0, records, replies: Replies::Whole(reply), queued_at: Instant::now(), permit: Some(permit) };
        queue.send(Item::Batch(batch)).map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Waits until every record queued before the call (by any clone of this producer) has
    /// its answer, sending what lingers at once (Kafka's `flush`). Records queued during
    /// the call may or may not be waited for.
    pub async fn flush(&self) -> Result<()> {
        let queues: Vec<_> = self.shared.queues.lock().expect("queues lock").values().cloned().collect();
        let mut answers = Vec::with_capacity(queues.len());
        for q in queues {
            let (tx, rx) = oneshot::channel();
            q.send(Item::Flush(tx)).map_err(|_| ClientError::Closed)?;
            answers.push(rx);
        }
        for a in answers {
            a.await.map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    /// Bytes of records queued or in flight (what counts against
    /// [`ProducerConfig::buffer_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.shared.buffer_bytes - self.shared.buffer.available_permits()
    }

    /// The queue of `partition`, created with its task on first use.
    async fn queue(&self, partition: PartitionId) -> Result<mpsc::UnboundedSender<Item>> {
        if let Some(q) = self.shared.queues.lock().expect("queues lock").get(&partition) {
            return Ok(q.clone());
        }
        // Checked before a task is spawned, so an unknown partition costs nothing.
        self.shared.writer.client.partition_info(&self.shared.writer.topic, partition).await?;
        let mut queues = self.shared.queues.lock().expect("queues lock");
        let q = queues.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let config = &self.shared.writer.config;
            let gatherer = Gatherer { rx, carry: None, linger: config.linger, limits: BatchLimits::new(config) };
            let task = PartitionTask {
                writer: self.shared.writer.clone(),
                partition,
                max_in_flight: if config.idempotent {
                    config.max_in_flight.clamp(1, limits::PRODUCER_IN_FLIGHT_MAX)
                } else {
                    1
                },
            };
            tokio::spawn(task.run(gatherer));
            tx
        });
        Ok(q.clone())
    }
}

impl Writer {
    fn client(&self) -> &Arc<ClientInner> {
        &self.client
    }

    /// The producer's id and epoch, from the metadata group on first use. A failure is
    /// definite for the batch waiting for it: nothing was sent.
    async fn identity(&self) -> Result<Identity> {
        let mut identity = self.identity.lock().await;
        if let Some(i) = *identity {
            return Ok(i);
        }
        let (id, epoch) =
            self.client().init_producer(self.config.name.as_deref()).await.map_err(|e| match e.is_indeterminate() {
                true => ClientError::refused(
                    ErrorCode::Unavailable,
                    format!("no producer id from the metadata group, nothing was sent: {e}"),
                ),
                false => e,
            })?;
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

/// Takes batches off a partition's queue.
struct Gatherer {
    rx: mpsc::UnboundedReceiver<Item>,
    carry: Option<Item>,
    linger: std::time::Duration,
    limits: BatchLimits,
}

/// What [`Gatherer::gather`] took off the queue: a batch, and the flushes queued right
/// after it (or with nothing before them).
struct Gathered {
    batch: Option<Batch>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Gatherer {
    /// The next batch: the first record (carried over or awaited), then whatever arrives
    /// until the first record's linger has passed or the batch is full. A record that
    /// does not fit, or a batch of its own, is carried over to the next batch; a flush
    /// ends the batch at once. `None` when the queue is closed and empty.
    async fn gather(&mut self) -> Option<Gathered> {
        let first = match self.carry.take() {
            Some(i) => i,
            None => self.rx.recv().await?,
        };
        let first = match first {
            Item::Flush(tx) => return Some(Gathered { batch: None, flushes: vec![tx] }),
            Item::Batch(b) => return Some(Gathered { batch: Some(b), flushes: vec![] }),
            Item::Record(p) => p,
        };
        let queued_at = first.queued_at;
        let linger_until = queued_at + self.linger;
        let mut bytes = BATCH_HEADER_BYTES + first.size;
        let mut records = vec![first.record];
        let mut replies = vec![first.reply];
        let mut permit = first.permit;
        let mut flushes = vec![];
        while records.len() < self.limits.records {
            let next = match self.rx.try_recv() {
                Ok(i) => Some(i),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() >= linger_until {
                        None
                    } else {
                        tokio::time::timeout_at(linger_until, self.rx.recv()).await.ok().flatten()
                    }
                }
            };
            let p = match next {
                None => break,
                Some(Item::Flush(tx)) => {
                    flushes.push(tx);
                    break;
                }
                Some(other @ Item::Batch(_)) => {
                    self.carry = Some(other);
                    break;
                }
                Some(Item::Record(p)) => p,
            };
            if bytes + p.size > self.limits.bytes {
                self.carry = Some(Item::Record(p));
                break;
            }
            bytes += p.size;
            records.push(p.record);
            replies.push(p.reply);
            permit = merge(permit, p.permit);
        }
        Some(Gathered {
            batch: Some(Batch { id: 0, records, replies: Replies::Each(replies), queued_at, permit }),
            flushes,
        })
    }
}

fn merge(a: Option<OwnedSemaphorePermit>, b: Option<OwnedSemaphorePermit>) -> Option<OwnedSemaphorePermit> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.merge(b);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// A batch sent and not yet answered.
struct InFlight {
    batch: Batch,
    /// The identity it is stamped with (`None` without idempotence).
    identity: Option<Identity>,
    base_sequence: u32,
    deadline: Instant,
    /// Refused as out of order: waits to go again. `behind`: an earlier batch was still
    /// unanswered when it was refused (so the refusal may only mean the two crossed).
    parked: Option<Parked>,
    /// Renewals of the producer's identity this batch caused: at most one.
    renewed: bool,
    /// Acknowledged at this base offset; answered once every batch before it is (it
    /// holds its place in the window until then, see [`Window::in_flight`]).
    done: Option<Offset>,
}

struct Parked {
    error: ClientError,
    behind: bool,
}

/// A partition's background task: gathers batches and keeps up to `max_in_flight` of
/// them in flight, in sequence.
struct PartitionTask {
    writer: Arc<Writer>,
    partition: PartitionId,
    max_in_flight: usize,
}

type GatherFuture = Pin<Box<dyn Future<Output = (Gatherer, Option<Gathered>)> + Send>>;

/// The state of a partition's task.
struct Window {
    /// In gathering order (and so in sequence order within one identity), from the oldest
    /// batch not yet acknowledged: an acknowledged batch keeps its place until every batch
    /// before it is answered, so that the window never spans more batches than the
    /// partition remembers. (Were it to move on past an unanswered batch, five later
    /// batches could be appended while its retry is still coming, the partition would no
    /// longer recognise the retry, and it would be written twice: found by the simulation,
    /// seeds 132 and 165.)
    in_flight: VecDeque<InFlight>,
    sends: JoinSet<(u64, Result<Offset>)>,
    sequencer: Sequencer,
    /// Gathered, waiting for room or for the batches under an older identity.
    held: Option<Batch>,
    /// Flushes waiting for every batch gathered up to the id given.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    last_id: u64,
}

impl PartitionTask {
    async fn run(self, gatherer: Gatherer) {
        let mut gatherer = Some(gatherer);
        let mut gathering: Option<GatherFuture> = None;
        let mut closed = false;
        let mut w = Window {
            in_flight: VecDeque::new(),
            sends: JoinSet::new(),
            sequencer: Sequencer::default(),
            held: None,
            flushes: vec![],
            last_id: 0,
        };
        loop {
            self.dispatch_held(&mut w).await;
            let unanswered = |w: &Window, upto: u64| {
                w.in_flight.front().is_some_and(|e| e.batch.id <= upto) || w.held.as_ref().is_some_and(|b| b.id <= upto)
            };
            let (done, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut w.flushes).into_iter().partition(|(upto, _)| !unanswered(&w, *upto));
            w.flushes = waiting;
            for (_, tx) in done {
                let _ = tx.send(());
            }
            if !closed && gathering.is_none() && w.held.is_none() && w.in_flight.len() < self.max_in_flight {
                let mut g = gatherer.take().expect("the gatherer is home");
                gathering = Some(Box::pin(async move {
                    let out = g.gather().await;
                    (g, out)
                }));
            }
            if closed && gathering.is_none() && w.held.is_none() && w.in_flight.is_empty() {
                for (_, tx) in w.flushes.drain(..) {
                    let _ = tx.send(());
                }
                return;
            }
            let gathered = async {
                match gathering.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(joined) = w.sends.join_next() => {
                    let (id, result) = joined.expect("a produce task panicked");
                    self.answered(&mut w, id, result).await;
                }
                (g, out) = gathered => {
                    gathering = None;
                    gatherer = Some(g);
                    match out {
                        None => closed = true,
                        Some(Gathered { batch, flushes }) => {
                            if let Some(mut b) = batch {
                                w.last_id += 1;
                                b.id = w.last_id;
                                w.held = Some(b);
                            }
                            w.flushes.extend(flushes.into_iter().map(|tx| (w.last_id, tx)));
                        }
                    }
                }
            }
        }
    }

    /// Sends the held batch if there is room and every batch in flight is under the
    /// current identity (so a new sequence never overtakes the old one).
    async fn dispatch_held(&self, w: &mut Window) {
        if w.held.is_none() || w.in_flight.len() >= self.max_in_flight {
            return;
        }
        let identity = match self.writer.config.idempotent {
            false => None,
            true => match self.writer.identity().await {
                Ok(i) => Some(i),
                Err(e) => {
                    w.held.take().expect("held").answer(Err(e));
                    return;
                }
            },
        };
        if w.in_flight.iter().any(|e| e.identity != identity) {
            return;
        }
        let batch = w.held.take().expect("held");
        let timeout = self.writer.config.delivery_timeout.unwrap_or(self.writer.client().config.retry_deadline);
        let entry = InFlight {
            deadline: batch.queued_at + timeout,
            batch,
            identity,
            base_sequence: 0,
            parked: None,
            renewed: false,
            done: None,
        };
        w.in_flight.push_back(entry);
        let i = w.in_flight.len() - 1;
        self.send(w, i);
    }

    /// Stamps the batch at `i` with its identity's next sequence (when idempotent) and
    /// sends it.
    fn send(&self, w: &mut Window, i: usize) {
        let e = &mut w.in_flight[i];
        let stamp = e.identity.map(|identity| {
            if w.sequencer.identity != Some(identity) {
                w.sequencer = Sequencer { identity: Some(identity), next: 0 };
            }
            e.base_sequence = w.sequencer.next;
            w.sequencer.next = w.sequencer.next.wrapping_add(e.batch.records.len() as u32);
            ProducerStamp { id: identity.id, epoch: identity.epoch, base_sequence: e.base_sequence }
        });
        self.resend(w, i, stamp);
    }

    /// Sends the batch at `i` with `stamp` (its own again, or a new one).
    fn resend(&self, w: &mut Window, i: usize, stamp: Option<ProducerStamp>) {
        let e = &mut w.in_flight[i];
        e.parked = None;
        let (id, deadline) = (e.batch.id, e.deadline);
        let batch = match encode(&e.batch.records, stamp, self.writer.config.compression) {
            Ok(b) => b,
            Err(err) => {
                w.sends.spawn(async move { (id, Err(err)) });
                return;
            }
        };
        let writer = self.writer.clone();
        let partition = self.partition;
        // Idempotent batches are always retried: the partition appends them once.
        let retry = self.writer.config.idempotent || self.writer.config.retry_indeterminate;
        w.sends.spawn(async move {
            let acks = writer.config.acks;
            let r = writer.client().produce(&writer.topic, partition, &batch, acks, retry, Some(deadline)).await;
            (id, r)
        });
    }

    /// Handles the answer to batch `id`.
    async fn answered(&self, w: &mut Window, id: u64, result: Result<Offset>) {
        let Some(i) = w.in_flight.iter().position(|e| e.batch.id == id) else { return };
        match result {
            Ok(base) => w.in_flight[i].done = Some(base),
            Err(error) if error.code() == Some(ErrorCode::OutOfOrderSequence) && w.in_flight[i].identity.is_some() => {
                w.in_flight[i].parked = Some(Parked { error, behind: i > 0 });
            }
            Err(error) => {
                let e = w.in_flight.remove(i).expect("in flight");
                self.failed(w, &e, &error).await;
                e.batch.answer(Err(error));
            }
        }
        self.resend_head(w).await;
    }

    /// Answers the acknowledged batches at the front of the window.
    fn settle(w: &mut Window) {
        while let Some(base) = w.in_flight.front().and_then(|e| e.done) {
            let e = w.in_flight.pop_front().expect("front");
            e.batch.answer(Ok(base));
        }
    }

    /// After batch `e` failed for good: when what follows it can no longer be in
    /// sequence (its outcome is unknown, or later batches are in flight behind the gap),
    /// the producer takes a new identity; otherwise its sequence numbers are free again.
    async fn failed(&self, w: &mut Window, e: &InFlight, error: &ClientError) {
        let Some(identity) = e.identity else { return };
        if error.is_indeterminate() || !w.in_flight.is_empty() {
            tracing::info!(topic = %self.writer.topic, partition = self.partition, %error,
                "a batch failed with later batches behind it or an unknown outcome; renewing the producer id");
            self.writer.renew(identity).await;
        } else if w.sequencer.identity == Some(identity)
            && w.sequencer.next == e.base_sequence.wrapping_add(e.batch.records.len() as u32)
        {
            w.sequencer.next = e.base_sequence;
        }
    }

    /// Sends again the first batch in flight while it is parked: as it was when it was
    /// refused only because it overtook an earlier batch, under a new sequence when its
    /// identity is gone or the partition no longer follows it.
    async fn resend_head(&self, w: &mut Window) {
        loop {
            Self::settle(w);
            let Some(head) = w.in_flight.front() else { return };
            let Some(parked) = &head.parked else { return };
            let (identity, base_sequence, behind, renewed, deadline, error) =
                (head.identity, head.base_sequence, parked.behind, head.renewed, head.deadline, parked.error.clone());
            let current = match self.writer.identity().await {
                Ok(_) if Instant::now() >= deadline => Err(error.clone()),
                other => other,
            };
            let next = match current {
                Ok(c) if identity == Some(c) && behind => {
                    // Everything before it is answered now: it goes again as it was.
                    let stamp = ProducerStamp { id: c.id, epoch: c.epoch, base_sequence };
                    self.resend(w, 0, Some(stamp));
                    return;
                }
                Ok(c) if identity == Some(c) && !renewed => {
                    // Refused with nothing before it: the partition forgot this producer.
                    tracing::info!(topic = %self.writer.topic, partition = self.partition, %error,
                        "producer sequence refused; renewing the producer id");
                    w.in_flight[0].renewed = true;
                    self.writer.renew(c).await;
                    self.writer.identity().await
                }
                Ok(c) if identity == Some(c) => Err(error),
                other => other,
            };
            match next {
                Ok(c) => {
                    w.in_flight[0].identity = Some(c);
                    self.send(w, 0);
                    return;
                }
                Err(error) => {
                    let e = w.in_flight.pop_front().expect("head");
                    self.failed(w, &e, &error).await;
                    e.batch.answer(Err(error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn pending(value_len: usize) -> (Item, oneshot::Receiver<Result<Offset>>) {
        let record = Record::value(vec![0u8; value_len]);
        let size = check_record(&record).unwrap();
        let (reply, rx) = oneshot::channel();
        (Item::Record(Pending { record, size, queued_at: Instant::now(), reply, permit: None }), rx)
    }

    fn gatherer(linger: Duration, limits: BatchLimits) -> (mpsc::UnboundedSender<Item>, Gatherer) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Gatherer { rx, carry: None, linger, limits })
    }

    fn unlimited() -> BatchLimits {
        BatchLimits { bytes: limits::BATCH_BYTES_MAX, records: limits::BATCH_RECORDS_MAX }
    }

    /// Gathers until the queue is closed; each batch's record count (0 for a flush alone).
    async fn sizes(g: &mut Gatherer) -> Vec<usize> {
        let mut sizes = vec![];
        while let Some(b) = g.gather().await {
            sizes.push(b.batch.map_or(0, |b| b.records.len()));
        }
        sizes
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
        let (tx, mut g) = gatherer(Duration::from_millis(1), BatchLimits { records: 10, ..unlimited() });
        let mut answers = vec![];
        for _ in 0..25 {
            let (p, a) = pending(10);
            answers.push(a);
            tx.send(p).unwrap();
        }
        drop(tx);
        assert_eq!(sizes(&mut g).await, vec![10, 10, 5]);
    }

    #[tokio::test]
    async fn batches_respect_the_byte_limit_and_carry_over() {
        let one = Record::value(vec![0u8; 1000]).encoded_len();
        // Room for two records, not three.
        let limits = BatchLimits { bytes: BATCH_HEADER_BYTES + 2 * one + one / 2, records: 100 };
        let (tx, mut g) = gatherer(Duration::from_millis(1), limits);
        let mut answers = vec![];
        for _ in 0..5 {
            let (p, a) = pending(1000);
            answers.push(a);
            tx.send(p).unwrap();
        }
        drop(tx);
        let mut sizes = vec![];
        while let Some(b) = g.gather().await {
            let b = b.batch.unwrap();
            assert!(RecordBatch::encode(&b.records).unwrap().bytes().len() <= limits.bytes);
            sizes.push(b.records.len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_gathers_late_records_but_not_after_it() {
        let (tx, mut g) = gatherer(Duration::from_millis(20), unlimited());
        let (p1, _a1) = pending(1);
        tx.send(p1).unwrap();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (p2, a2) = pending(1);
            tx2.send(p2).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (p3, a3) = pending(1);
            tx2.send(p3).unwrap();
            std::mem::forget((a2, a3));
        });
        let b = g.gather().await.unwrap().batch.unwrap();
        assert_eq!(b.records.len(), 2, "the record 5 ms later joins a 20 ms linger");
        let b = g.gather().await.unwrap().batch.unwrap();
        assert_eq!(b.records.len(), 1, "the record 55 ms later starts a new batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_ends_the_batch_without_lingering() {
        let (tx, mut g) = gatherer(Duration::from_secs(3600), unlimited());
        let mut answers = vec![];
        for _ in 0..3 {
            let (p, a) = pending(1);
            answers.push(a);
            tx.send(p).unwrap();
        }
        let (flush, _flushed) = oneshot::channel();
        tx.send(Item::Flush(flush)).unwrap();
        let (p, a) = pending(1);
        answers.push(a);
        tx.send(p).unwrap();
        let started = Instant::now();
        let first = g.gather().await.unwrap();
        assert_eq!(first.batch.unwrap().records.len(), 3, "only what was queued before the flush");
        assert_eq!(first.flushes.len(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "no lingering once flushed");
    }

    #[tokio::test]
    async fn a_batch_of_its_own_is_not_merged() {
        let (tx, mut g) = gatherer(Duration::from_millis(1), unlimited());
        let (p, _a) = pending(1);
        tx.send(p).unwrap();
        let (reply, _whole) = oneshot::channel();
        let own = Batch {
            id: 0,
            records: vec![Record::value("a"), Record::value("b")],
            replies: Replies::Whole(reply),
            queued_at: Instant::now(),
            permit: None,
        };
        tx.send(Item::Batch(own)).unwrap();
        let (p, _b) = pending(1);
        tx.send(p).unwrap();
        drop(tx);
        assert_eq!(sizes(&mut g).await, vec![1, 2, 1]);
    }

    #[test]
    fn keyless_records_stick_to_a_partition_then_move_on() {
        let mut s = Sticky { current: None, bytes: 0, rng: StdRng::seed_from_u64(7) };
        let mut runs: Vec<(PartitionId, usize)> = vec![];
        for _ in 0..600 {
            let p = s.pick(6, 1000, 16_000);
            match runs.last_mut() {
                Some((q, n)) if *q == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        // 16 records of 1000 bytes reach 16,000 bytes: each run is 16 long, and the next
        // partition is always another one.
        assert!(runs[..runs.len() - 1].iter().all(|(_, n)| *n == 16), "{runs:?}");
        assert!(runs.windows(2).all(|w| w[0].0 != w[1].0));
        let used: std::collections::BTreeSet<_> = runs.iter().map(|(p, _)| *p).collect();
        assert_eq!(used.len(), 6, "every partition gets records");
        // Fewer partitions than the sticky one's number: it moves.
        assert!(s.pick(1, 1, 16_000) == 0);
    }
}
