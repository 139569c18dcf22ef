//! Settings, each with a default a person would expect.

use std::sync::Arc;
use std::time::Duration;

use flotilla_types::{Clock, SystemClock, limits};

/// How the client connects and retries.
#[derive(Clone)]
pub struct ClientConfig {
    /// The longest one attempt of one request may take before it counts as a timeout
    /// (an indeterminate failure). A fetch's long-poll wait is added to it. Default 10 s.
    pub request_timeout: Duration,
    /// The total time an operation may spend retrying (redirects, backoffs, metadata
    /// refreshes) before it gives up. Default 30 s.
    pub retry_deadline: Duration,
    /// The longest a TCP connection may take to open. Default 3 s.
    pub connect_timeout: Duration,
    /// The first backoff between retries; it doubles up to `backoff_max`, jittered.
    /// Default 50 ms.
    pub backoff_initial: Duration,
    /// Default 1 s.
    pub backoff_max: Duration,
    /// How long `create_topic` waits for every new partition to have a leader before
    /// returning (it returns anyway when this runs out). Default 10 s.
    pub create_topic_wait: Duration,
    /// Stamps records whose `timestamp_ms` is 0. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// Seeds the backoff jitter and the sticky partitioner, for reproducible runs.
    /// Default: random.
    pub seed: Option<u64>,
    /// Opens connections to brokers. Default: the host's TCP stack. The simulator sets
    /// one that dials over its simulated network.
    pub dialer: Option<flotilla_proto::Dialer>,
    /// The zone this client runs in. When set, consumers fetch from a replica whose
    /// broker is in this zone (follower fetching: it serves what it has committed, so
    /// reads cross no zone boundary), falling back to the leader when the partition has
    /// no replica there or the replica fails. Produce always goes to the leader.
    /// Default: none (every fetch goes to the leader).
    pub zone: Option<String>,
    /// Who this client is to the cluster's quotas (Kafka's `client.id`), sent with every
    /// produce and fetch: clients with the same id share a quota. At most 255 bytes.
    /// Default: empty (the principal every client without an id shares).
    pub client_id: String,
    /// TLS to the brokers' client listeners (docs/security.md). Default: none
    /// (plaintext).
    pub tls: Option<ClientTls>,
    /// The user this client acts as, proven by its password on every request (send it
    /// over TLS). Default: none (the client certificate's user, if any, or anonymous).
    pub credentials: Option<Credentials>,
}

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }

    /// The `authorization` header's value: `Basic base64(user:password)`.
    pub(crate) fn header(&self) -> String {
        use base64::Engine as _;
        let pair = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// TLS to the brokers: the authority that signed their certificates, and this client's
/// own certificate when the brokers ask for one.
#[derive(Clone)]
pub struct ClientTls {
    /// PEM of the certificate authority a broker's certificate must chain to; a broker
    /// is checked against the host of the address it is dialled at.
    pub ca_pem: Vec<u8>,
    /// This client's certificate and key (PEM), for brokers that require clients to
    /// present one (`tls-client-ca`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the authority's certificate, and this client's certificate and key when
    /// given, from PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<ClientTls> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(ClientTls { ca_pem: read(ca)?, identity })
    }

    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("client_certificate", &self.identity.is_some()).finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            create_topic_wait: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            seed: None,
            dialer: None,
            zone: None,
            client_id: String::new(),
            tls: None,
            credentials: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("request_timeout", &self.request_timeout)
            .field("retry_deadline", &self.retry_deadline)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("create_topic_wait", &self.create_topic_wait)
            .field("seed", &self.seed)
            .field("dialer", &self.dialer.as_ref().map(|_| "custom"))
            .field("zone", &self.zone)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// How a [`crate::Producer`] batches and retries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a partition's batch waits for more records after its first one arrives,
    /// when nothing is in flight to that partition yet. Default 0: while a batch is in
    /// flight the next one fills up anyway, so lingering only adds latency. Kafka:
    /// `linger.ms`.
    pub linger: Duration,
    /// The most encoded bytes in one batch; clamped to `limits::BATCH_BYTES_MAX`. Kafka:
    /// `batch.size`.
    pub max_batch_bytes: usize,
    /// The most records in one batch; clamped to `limits::BATCH_RECORDS_MAX`.
    pub max_batch_records: usize,
    /// Bytes of records (encoded) queued or in flight, over every partition, before
    /// `send` and `enqueue` wait for room and `try_send` fails with
    /// [`crate::ClientError::BufferFull`]: the producer's memory bound and backpressure.
    /// A record larger than the whole buffer waits until it is empty. Default 32 MiB.
    /// Kafka: `buffer.memory`.
    pub buffer_bytes: usize,
    /// Batches per partition sent and not yet answered, with idempotence; clamped to
    /// 1..=5 (`limits::PRODUCER_IN_FLIGHT_MAX`, what a partition remembers of a producer
    /// to recognise retries). Order is kept across retries. Without idempotence one
    /// batch is in flight whatever this says, so that a retry cannot reorder. Kafka:
    /// `max.in.flight.requests.per.connection` (per partition here).
    ///
    /// Default 1: on a cluster whose nodes are CPU-bound, every batch is a Raft entry
    /// with its own cost, and splitting the same records over several smaller batches
    /// (whose requests may also cross on the way and be sent again) costs more than it
    /// saves: measured on two cores, six partitions, 64 records in flight, 10,524 records/s
    /// with one batch in flight against 3,225 with five (docs/perf.md). More pays where
    /// the round trip, not the nodes, bounds a producer: a distant cluster, or large
    /// batches.
    pub max_in_flight: usize,
    /// Records without a key go to one partition until this many bytes went to it, then
    /// to another chosen at random (the sticky partitioner: fuller batches than
    /// round-robin). Default 16 KiB. Kafka: `batch.size` as the sticky partitioner uses
    /// it (KIP-480, KIP-794).
    pub sticky_bytes: usize,
    /// Idempotence (Kafka's `enable.idempotence`, on by default): every batch carries the
    /// producer's id, epoch and a sequence number per partition, and the partition appends
    /// a retried batch only once, answering the retry with the offsets of the first
    /// append. Retries after indeterminate failures are then safe and always made
    /// (`retry_indeterminate` is ignored). The producer id comes from the metadata group
    /// on the first send. Off: today's at-least-once producer, as `retry_indeterminate`
    /// says.
    pub idempotent: bool,
    /// A name for an idempotent producer that must be fenced when a new instance starts
    /// (Kafka's `transactional.id`, fencing only): each producer created with the same
    /// name gets the same producer id at a newer epoch, and every partition then refuses
    /// the older instances' batches with `PRODUCER_FENCED`. Default none: a fresh producer
    /// id per `Producer`.
    pub name: Option<String>,
    /// How batches are compressed (Kafka's `compression.type`): `None` (the default),
    /// `Lz4` or `Zstd`. Batches are stored and replicated compressed and decompressed by
    /// the consumer; the batch limits apply to the uncompressed records.
    pub compression: flotilla_types::Compression,
    /// Without idempotence: retry a produce whose previous attempt failed indeterminately
    /// (timeout, connection lost mid-request). Default true. **This may duplicate
    /// records**: the earlier attempt may have been committed. With `false`, such a
    /// failure is returned to the caller (`ClientError::is_indeterminate` is true) and
    /// nothing is resent. Definite failures (`NOT_LEADER`, `UNAVAILABLE`, connection
    /// refused, ...) are always retried: they cannot duplicate.
    pub retry_indeterminate: bool,
    /// When a batch counts as written (Kafka's `acks`): `Acks::All` (the default) once a
    /// quorum of replicas has it durably and it is committed; `Acks::Leader` once the
    /// partition leader has it durably in its own log, before any follower: lower
    /// latency, but an acknowledged batch is lost if the leader's node is lost before a
    /// quorum has it (with idempotence the producer then notices the gap on its next batch
    /// and carries on under a new producer id; the lost batch stays lost).
    pub acks: flotilla_types::Acks,
    /// How long a record may take from `send` to its acknowledgement, retries included.
    /// Default: the client's `retry_deadline`. Kafka: `delivery.timeout.ms`.
    pub delivery_timeout: Option<Duration>,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            linger: Duration::ZERO,
            max_batch_bytes: limits::BATCH_BYTES_MAX,
            max_batch_records: limits::BATCH_RECORDS_MAX,
            buffer_bytes: 32 * 1024 * 1024,
            max_in_flight: 1,
            sticky_bytes: 16 * 1024,
            idempotent: true,
            name: None,
            compression: flotilla_types::Compression::None,
            retry_indeterminate: true,
            acks: flotilla_types::Acks::All,
            delivery_timeout: None,
        }
    }
}

/// How a [`crate::Consumer`] fetches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The batch bytes asked for per fetch (at least one batch comes back whatever its
    /// size). Default 1 MiB; clamped to `limits::FETCH_BYTES_MAX`. The client accepts
    /// answers up to `limits::FETCH_RESPONSE_BYTES_MAX`, which such a fetch's batches and
    /// framing fit.
    pub fetch_max_bytes: u32,
    /// What to do when the position is no longer in the partition (deleted by
    /// retention): go to the log start (the default), to the end, or fail.
    pub offset_reset: crate::consumer::OffsetReset,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig { fetch_max_bytes: 1024 * 1024, offset_reset: Default::default() }
    }
}
