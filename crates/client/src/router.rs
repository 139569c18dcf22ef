//! The routing core of the client: the metadata cache, one channel per broker, leader
//! routing, and the retry engine every request goes through (`ClientInner::call`, whose
//! decisions are the pure table `next_step`). The public facade is [`crate::Client`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_types::{Acks, ErrorCode, NodeId, Offset, PartitionId, RecordBatch, limits};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::metadata::{self, Cache, PartitionInfo, TopicInfo};
use crate::wire::{Auth, Conn, InBand, answered, flotilla, normalize_addr, rpc_err};

/// The most broker channels kept open; past it the pool is emptied (channels reconnect
/// lazily), so a stream of bogus leader hints cannot grow it without bound.
const CHANNELS_MAX: usize = 1024;
/// Immediate redirects (NOT_LEADER with a hint) before backing off: stops two nodes that
/// name each other from bouncing a request without pause.
const REDIRECTS_WITHOUT_BACKOFF: u32 = 3;
/// After a fetch from a replica in the client's zone fails (it is down, lags behind the
/// position, or no longer hosts the partition), fetches go to the leader for this long.
const FOLLOWER_COOLDOWN: Duration = Duration::from_secs(5);

/// The state every clone of a [`crate::Client`] shares.
pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    /// `host:port`, as normalised by [`normalize_addr`].
    pub(crate) bootstrap: Vec<String>,
    pub(crate) cache: RwLock<Cache>,
    channels: Mutex<HashMap<String, Channel>>,
    /// What every request carries: the credentials' header.
    auth: Auth,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Topics this client routes requests for: what a refresh asks about.
    interest: Mutex<BTreeSet<String>>,
    pub(crate) rng: Mutex<StdRng>,
    /// Replicas in this client's zone not to fetch from until the instant given.
    follower_cooldown: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for ClientInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInner").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The partition's leader (its replicas while the leader is unknown).
    Partition { topic: String, partition: PartitionId },
    /// The metadata group's leader (any node while it is unknown).
    MetadataLeader,
    /// Any node.
    Any,
}

/// Whether a request may be repeated after an outcome that is unknown.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Read,
    Write { retry_indeterminate: bool },
}

/// When a failed attempt goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// At once.
    Now,
    /// After a backoff.
    Backoff,
    /// Not at all: the error is the answer.
    Fail,
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub next: Next,
    /// The node to try next.
    pub hint: Option<String>,
    /// A node to avoid when choosing the next one.
    pub avoid: Option<String>,
    /// Refresh the metadata before going again.
    pub refresh: bool,
}

/// The retry decision table of [`ClientInner::call`]: what to do after `err`. `named` is
/// the leader a NOT_LEADER answer pointed to (normalised); `redirects` how many such
/// redirects went at once since the last backoff; `refreshed_for_unknown` whether an
/// unknown topic already caused a refresh; `retry_unknown_outcome` whether the request
/// may be repeated when it may have been applied.
pub(crate) fn next_step(
    err: &ClientError,
    named: Option<String>,
    redirects: u32,
    refreshed_for_unknown: bool,
    retry_unknown_outcome: bool,
) -> Step {
    let step = |next, hint, avoid: Option<&String>, refresh| Step { next, hint, avoid: avoid.cloned(), refresh };
    match err {
        ClientError::Server { code: ErrorCode::NotLeader, addr, .. } => match named {
            Some(n) if &n != addr && redirects < REDIRECTS_WITHOUT_BACKOFF => step(Next::Now, Some(n), None, false),
            Some(n) => step(Next::Backoff, Some(n), None, false),
            None => step(Next::Backoff, None, None, true),
        },
        ClientError::Server { code: ErrorCode::UnknownTopic | ErrorCode::UnknownPartition, .. }
            if !refreshed_for_unknown =>
        {
            step(Next::Now, None, None, true)
        }
        // UNAVAILABLE, SHUTTING_DOWN, STORAGE_ERROR, ...: nothing was done.
        ClientError::Server { code, addr, .. } if code.is_retriable() && code.is_definite() => {
            step(Next::Backoff, None, Some(addr), true)
        }
        ClientError::Refused { code: ErrorCode::Unavailable, .. } => step(Next::Backoff, None, None, true),
        ClientError::Connect { addr, .. } => step(Next::Backoff, None, Some(addr), true),
        // TIMEOUT, LEADER_CHANGED, a lost connection, no answer: maybe done.
        ClientError::Server { code, addr, .. } if code.is_retriable() && retry_unknown_outcome => {
            step(Next::Backoff, None, Some(addr), true)
        }
        ClientError::Transport { addr, .. } | ClientError::Timeout { addr, .. } if retry_unknown_outcome => {
            step(Next::Backoff, None, Some(addr), true)
        }
        ClientError::Rpc { code: tonic::Code::ResourceExhausted, .. } => step(Next::Backoff, None, None, false),
        _ => step(Next::Fail, None, None, false),
    }
}

impl ClientInner {
    /// A client's core for `bootstrap` (normalised addresses), its metadata not loaded yet.
    pub(crate) fn new(config: ClientConfig, bootstrap: Vec<String>, rng: StdRng) -> ClientInner {
        ClientInner {
            bootstrap,
            cache: RwLock::new(Cache::default()),
            auth: Auth::new(config.credentials.as_ref()),
            channels: Mutex::new(HashMap::new()),
            refresh_lock: tokio::sync::Mutex::new(()),
            interest: Mutex::new(BTreeSet::new()),
            rng: Mutex::new(rng),
            follower_cooldown: Mutex::new(HashMap::new()),
            config,
        }
    }

    fn random(&self) -> u64 {
        self.rng.lock().expect("rng lock").random()
    }

    fn backoff_delay(&self, b: &mut Backoff) -> Duration {
        b.next_delay(&mut *self.rng.lock().expect("rng lock"))
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// The first metadata load: each bootstrap address in turn, retried on connection
    /// failures until `connect_timeout` has passed.
    pub(crate) async fn bootstrap_metadata(&self) -> Result<()> {
        let until = Instant::now() + self.config.connect_timeout;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let mut last = None;
            for addr in &self.bootstrap {
                match self.metadata_from(addr, &[]).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            let last = last.expect("at least one bootstrap address");
            let delay = self.backoff_delay(&mut backoff);
            let retry = matches!(last, ClientError::Connect { .. } | ClientError::Transport { .. });
            if !retry || Instant::now() + delay > until {
                return Err(last);
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One Metadata request to `addr`, applied to the cache.
    async fn metadata_from(&self, addr: &str, topics: &[String]) -> Result<()> {
        let ch = self.channel(addr)?;
        let req = v1::MetadataRequest { topics: topics.to_vec() };
        let after = self.config.request_timeout;
        let resp = match tokio::time::timeout(after, flotilla(ch).metadata(req)).await {
            Ok(r) => r.map_err(rpc_err(addr))?.into_inner(),
            Err(_) => {
                self.forget_channel(addr);
                return Err(ClientError::Timeout { addr: addr.to_string(), after });
            }
        };
        self.cache.write().expect("cache lock").apply(&resp, topics).map_err(|e| ClientError::protocol(addr, e))
    }

    /// Refreshes the cache for `topics` and every topic this client routes to. Concurrent
    /// callers share one refresh.
    pub(crate) async fn refresh(&self, topics: &[String]) -> Result<()> {
        let before = self.cache.read().expect("cache lock").generation;
        let _one_at_a_time = self.refresh_lock.lock().await;
        {
            let c = self.cache.read().expect("cache lock");
            if c.generation != before && topics.iter().all(|t| c.topics.contains_key(t)) {
                return Ok(());
            }
        }
        let asked: Vec<String> = {
            let interest = self.interest.lock().expect("interest lock");
            let mut all: BTreeSet<String> = interest.iter().cloned().collect();
            all.extend(topics.iter().cloned());
            if all.len() > limits::TOPICS_MAX { vec![] } else { all.into_iter().collect() }
        };
        let mut candidates: Vec<String> = {
            let c = self.cache.read().expect("cache lock");
            c.brokers.values().map(|b| b.addr.clone()).collect()
        };
        if !candidates.is_empty() {
            let start = self.random() as usize % candidates.len();
            candidates.rotate_left(start);
        }
        for b in &self.bootstrap {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        // Every node known, before giving up for this round: any one that answers will do.
        let mut last = None;
        for addr in &candidates {
            match self.metadata_from(addr, &asked).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "metadata refresh failed");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one candidate"))
    }

    /// [`ClientInner::refresh`], retried with backoff for up to `retry_deadline`. Its
    /// failure is `UNAVAILABLE` and definite: it happens before any request is sent.
    async fn refresh_patiently(&self, topics: &[String]) -> Result<()> {
        let until = Instant::now() + self.config.retry_deadline;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let e = match self.refresh(topics).await {
                Ok(()) => return Ok(()),
                // Waiting will not change the credentials.
                Err(e) if matches!(e.code(), Some(ErrorCode::NotAuthenticated | ErrorCode::NotAuthorized)) => {
                    return Err(e);
                }
                Err(e) => e,
            };
            let delay = self.backoff_delay(&mut backoff);
            if Instant::now() + delay > until {
                return Err(ClientError::refused(
                    ErrorCode::Unavailable,
                    format!("cannot load the cluster's metadata: {e}"),
                ));
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn note_interest(&self, topic: &str) {
        let mut i = self.interest.lock().expect("interest lock");
        if !i.contains(topic) && i.len() < limits::TOPICS_MAX {
            i.insert(topic.to_string());
        }
    }

    /// The topic from the cache; refreshed once when it is not there.
    pub(crate) async fn topic_info(&self, topic: &str) -> Result<TopicInfo> {
        limits::check_topic_name(topic).map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, e))?;
        self.note_interest(topic);
        if let Some(t) = self.cache.read().expect("cache lock").topics.get(topic) {
            return Ok(t.clone());
        }
        self.refresh_patiently(&[topic.to_string()]).await?;
        let cache = self.cache.read().expect("cache lock");
        if let Some(t) = cache.topics.get(topic) {
            return Ok(t.clone());
        }
        Err(match cache.refused.get(topic) {
            Some(e) => ClientError::refused(e.error_code(), e.message.clone()),
            None => ClientError::refused(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")),
        })
    }

    /// The partition from the cache; the topic is refreshed once when it is unknown or
    /// has no such partition.
    pub(crate) async fn partition_info(&self, topic: &str, partition: PartitionId) -> Result<PartitionInfo> {
        let mut t = self.topic_info(topic).await?;
        if partition as usize >= t.partitions.len() {
            self.refresh_patiently(&[topic.to_string()]).await?;
            t = self.topic_info(topic).await?;
        }
        t.partitions.get(partition as usize).cloned().ok_or_else(|| {
            ClientError::refused(
                ErrorCode::UnknownPartition,
                format!("topic '{topic}' has {} partitions; there is no partition {partition}", t.partitions.len()),
            )
        })
    }

    /// The connection to `addr` (`host:port`), opened lazily and kept.
    pub(crate) fn channel(&self, addr: &str) -> Result<Conn> {
        let conn = |channel: &Channel| Conn { channel: channel.clone(), auth: self.auth.clone() };
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(addr) {
            return Ok(conn(c));
        }
        let scheme = if self.config.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
            ClientError::refused(ErrorCode::InvalidRequest, format!("bad broker address {addr:?}: {e}"))
        })?;
        if let Some(tls) = &self.config.tls {
            endpoint = endpoint
                .tls_config(tls.tonic())
                .map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, format!("TLS to broker {addr:?}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = flotilla_proto::dial(endpoint, self.config.dialer.as_ref());
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(addr.to_string(), channel.clone());
        Ok(conn(&channel))
    }

    /// Drops the channel to `addr` after a request on it got no answer in time, so the
    /// next request dials a fresh connection (as Kafka's client closes a connection on a
    /// request timeout). A connection can stay open while the bytes on it are lost (a
    /// half-open connection after a partition); reusing it would time out again until
    /// HTTP/2 keepalive noticed.
    pub(crate) fn forget_channel(&self, addr: &str) {
        self.channels.lock().expect("channels lock").remove(addr);
    }

    /// The address to send the next attempt for `target` to. `cursor` rotates through
    /// the candidates when there is no single right one; `avoid` is a node that just
    /// failed, skipped when there is any other choice.
    async fn resolve(&self, target: &Target, cursor: &mut usize, avoid: Option<&str>) -> Result<String> {
        match target {
            Target::Partition { topic, partition } => {
                let p = self.partition_info(topic, *partition).await?;
                let c = self.cache.read().expect("cache lock");
                let leader = p.leader.and_then(|id| c.broker_addr(id)).map(str::to_string);
                if let Some(l) = &leader
                    && avoid != Some(l.as_str())
                {
                    return Ok(l.clone());
                }
                let replicas: Vec<String> =
                    p.replicas.iter().filter_map(|id| c.broker_addr(*id)).map(str::to_string).collect();
                let others: Vec<&String> = replicas.iter().filter(|a| Some(a.as_str()) != avoid).collect();
                let pick = if !others.is_empty() {
                    others[*cursor % others.len()].clone()
                } else if !replicas.is_empty() {
                    replicas[*cursor % replicas.len()].clone()
                } else if let Some(l) = leader {
                    l
                } else {
                    return Err(ClientError::refused(
                        ErrorCode::Unavailable,
                        format!("no known leader or replica address for {topic}/{partition}"),
                    ));
                };
                *cursor = cursor.wrapping_add(1);
                Ok(pick)
            }
            Target::MetadataLeader => {
                let leader = {
                    let c = self.cache.read().expect("cache lock");
                    c.metadata_leader.and_then(|id| c.broker_addr(id)).map(str::to_string)
                };
                match leader {
                    Some(l) if avoid != Some(l.as_str()) => Ok(l),
                    _ => Ok(self.any_node(cursor, avoid)),
                }
            }
            Target::Any => Ok(self.any_node(cursor, avoid)),
        }
    }

    fn any_node(&self, cursor: &mut usize, avoid: Option<&str>) -> String {
        let mut all: Vec<String> =
            self.cache.read().expect("cache lock").brokers.values().map(|b| b.addr.clone()).collect();
        for b in &self.bootstrap {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        let others: Vec<&String> = all.iter().filter(|a| Some(a.as_str()) != avoid).collect();
        let pick =
            if others.is_empty() { all[*cursor % all.len()].clone() } else { others[*cursor % others.len()].clone() };
        *cursor = cursor.wrapping_add(1);
        pick
    }

    async fn refresh_quietly(&self, target: &Target) {
        let topics = match target {
            Target::Partition { topic, .. } => vec![topic.clone()],
            _ => vec![],
        };
        if let Err(e) = self.refresh(&topics).await {
            tracing::debug!(error = %e, "metadata refresh failed; retrying after backoff");
        }
    }

    /// Sends a request to the right node and retries it by error code until it succeeds,
    /// fails for good, or `deadline` (default: now + `retry_deadline`) passes:
    ///
    /// - `NOT_LEADER` naming a leader: at once to that leader (a few times, then with
    ///   backoff); without a name: refresh metadata, back off, retry.
    /// - other retriable codes that are definite (`UNAVAILABLE`, `SHUTTING_DOWN`,
    ///   `STORAGE_ERROR`) and refused connections: refresh, back off, retry (elsewhere,
    ///   when there is a choice).
    /// - `UNKNOWN_TOPIC`/`UNKNOWN_PARTITION`: refresh once and retry; then fail.
    /// - indeterminate failures (no answer in time, connection lost mid-request, retriable
    ///   indeterminate codes such as `TIMEOUT` and `LEADER_CHANGED`): retried for reads,
    ///   and for writes only when `retry_indeterminate`.
    /// - anything else fails at once.
    ///
    /// `f` runs one attempt on a channel to the chosen node (named by its address); each
    /// attempt may take `request_timeout + extra_wait`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        target: Target,
        kind: Kind,
        extra_wait: Duration,
        deadline: Option<Instant>,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let deadline = deadline.unwrap_or(start + self.config.retry_deadline);
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let (retry_unknown_outcome, is_write) = match kind {
            Kind::Read => (true, false),
            Kind::Write { retry_indeterminate } => (retry_indeterminate, true),
        };
        let mut attempts = 0u32;
        let mut maybe_applied = false;
        let mut hint: Option<String> = None;
        let mut avoid: Option<String> = None;
        let mut refreshed_for_unknown = false;
        let mut redirects = 0u32;
        let mut cursor = self.random() as usize;
        loop {
            attempts += 1;
            let outcome = async {
                let addr = match hint.take() {
                    Some(a) => a,
                    None => self.resolve(&target, &mut cursor, avoid.as_deref()).await?,
                };
                let ch = self.channel(&addr)?;
                let after = self.config.request_timeout + extra_wait;
                match tokio::time::timeout(after, f(ch, addr.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.forget_channel(&addr);
                        Err(ClientError::Timeout { addr, after })
                    }
                }
            }
            .await;
            let err = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            tracing::debug!(?target, attempts, error = %err, "request attempt failed");
            if err.is_indeterminate() && is_write {
                maybe_applied = true;
            }
            // A NOT_LEADER teaches the cache who leads (or who does not), and may name
            // the node to try next.
            let named = match &err {
                ClientError::Server { code: ErrorCode::NotLeader, addr, leader_id, leader_addr, .. } => {
                    self.learn_leader(&target, addr, *leader_id, leader_addr.as_deref())
                }
                _ => None,
            };
            let step = next_step(&err, named, redirects, refreshed_for_unknown, retry_unknown_outcome);
            if let Some(a) = step.avoid {
                avoid = Some(a);
            }
            if step.refresh {
                // Only an unknown topic or partition refreshes and goes again at once.
                refreshed_for_unknown |= step.next == Next::Now;
                self.refresh_quietly(&target).await;
            }
            if step.hint.is_some() {
                hint = step.hint;
            }
            if step.next == Next::Now && hint.is_some() {
                redirects += 1;
            }
            let next = step.next;
            let gave_up = |err: ClientError| ClientError::GaveUp {
                attempts,
                elapsed: start.elapsed(),
                maybe_applied,
                last: Box::new(err),
            };
            match next {
                Next::Fail => {
                    return Err(if maybe_applied && !err.is_indeterminate() { gave_up(err) } else { err });
                }
                Next::Now => {
                    if Instant::now() >= deadline {
                        return Err(gave_up(err));
                    }
                }
                Next::Backoff => {
                    let delay = self.backoff_delay(&mut backoff);
                    if Instant::now() + delay > deadline {
                        return Err(gave_up(err));
                    }
                    tokio::time::sleep(delay).await;
                    redirects = 0;
                }
            }
        }
    }

    /// Updates the cache from a NOT_LEADER answer by `addr` for `target`: the leader it
    /// names (added as a bare broker if unknown), or, without a name, that `addr` does
    /// not lead the partition. Returns the address to try next, if one is known.
    fn learn_leader(
        &self,
        target: &Target,
        addr: &str,
        leader_id: Option<NodeId>,
        leader_addr: Option<&str>,
    ) -> Option<String> {
        let mut c = self.cache.write().expect("cache lock");
        // A leader the cache has not heard of yet (a node that just joined).
        if let (Some(id), Some(a)) = (leader_id, leader_addr)
            && !c.brokers.contains_key(&id)
            && let Ok(a) = normalize_addr(a)
        {
            c.brokers.insert(id, metadata::BrokerInfo::bare(id, a));
        }
        if let Some(id) = leader_id {
            match target {
                Target::Partition { topic, partition } => c.set_leader(topic, *partition, id),
                Target::MetadataLeader => c.metadata_leader = Some(id),
                Target::Any => {}
            }
        } else if let Target::Partition { topic, partition } = target
            && let Some(id) = c.brokers.values().find(|b| b.addr == addr).map(|b| b.id)
        {
            c.forget_leader(topic, *partition, id);
        }
        let named =
            leader_addr.map(str::to_string).or_else(|| leader_id.and_then(|id| c.broker_addr(id).map(str::to_string)));
        named.and_then(|n| normalize_addr(&n).ok())
    }

    /// Appends `batch` to a partition at its leader, with retries; the batch's base offset.
    pub(crate) async fn produce(
        &self,
        topic: &str,
        partition: PartitionId,
        batch: &RecordBatch,
        acks: Acks,
        retry_indeterminate: bool,
        deadline: Option<Instant>,
    ) -> Result<Offset> {
        let req = v1::ProduceRequest {
            client_id: self.config.client_id.clone(),
            ..v1::ProduceRequest::new(topic, partition, batch, acks)
        };
        let count = batch.len();
        let target = Target::Partition { topic: topic.to_string(), partition };
        self.call(target, Kind::Write { retry_indeterminate }, Duration::ZERO, deadline, |ch, addr| {
            let req = req.clone();
            async move {
                let r = flotilla(ch).produce(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                if r.record_count != count {
                    return Err(ClientError::protocol(
                        &addr,
                        format!("sent {count} records, the answer says {}", r.record_count),
                    ));
                }
                if r.base_offset.checked_add(u64::from(count)).is_none() {
                    return Err(ClientError::protocol(&addr, format!("base offset {} overflows", r.base_offset)));
                }
                if r.acks != flotilla_proto::request::acks_to_wire(acks) {
                    return Err(ClientError::protocol(
                        &addr,
                        format!("asked for acks={}, the answer is at level {}", acks.name(), r.acks),
                    ));
                }
                Ok(r.base_offset)
            }
        })
        .await
    }

    /// An idempotent producer's id and epoch from the metadata group: a new id without a
    /// `name`, the name's id at its next epoch with one. Retried after indeterminate
    /// failures: a lost answer costs an unused id or skips an epoch, nothing else.
    pub(crate) async fn init_producer(&self, name: Option<&str>) -> Result<(u64, u16)> {
        let req = v1::InitProducerRequest { name: name.unwrap_or_default().to_string() };
        let kind = Kind::Write { retry_indeterminate: true };
        self.call(Target::MetadataLeader, kind, Duration::ZERO, None, |ch, addr| {
            let req = req.clone();
            async move {
                let r = flotilla(ch).init_producer(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                let epoch = u16::try_from(r.producer_epoch).map_err(|_| {
                    ClientError::protocol(&addr, format!("producer epoch {} over 16 bits", r.producer_epoch))
                })?;
                if r.producer_id == 0 {
                    return Err(ClientError::protocol(&addr, "producer id 0 is reserved"));
                }
                Ok((r.producer_id, epoch))
            }
        })
        .await
    }

    /// One request to the metadata leader (the group coordinator), retried as `kind`
    /// allows; `send` makes one attempt with `req` on a channel. The answer's in-band
    /// error comes back as `Err`.
    pub(crate) async fn to_coordinator<Req, Resp, F, Fut>(&self, kind: Kind, req: Req, send: F) -> Result<Resp>
    where
        Req: Clone,
        Resp: InBand,
        F: Fn(Conn, Req) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(Target::MetadataLeader, kind, Duration::ZERO, None, |ch, addr| {
            let sent = send(ch, req.clone());
            async move {
                let r = sent.await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, r.in_band_error())?;
                Ok(r)
            }
        })
        .await
    }

    /// One fetch of a partition, with retries. With [`ClientConfig::zone`] set, first
    /// once from a replica in that zone (see [`ClientInner::zone_replica`]); from the
    /// leader when there is none or it fails.
    pub(crate) async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<v1::FetchResponse> {
        let max_wait = max_wait.min(Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
        let req = v1::FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: max_bytes.min(limits::FETCH_BYTES_MAX as u32),
            max_wait_ms: max_wait.as_millis() as u32,
            from_follower: false,
            client_id: self.config.client_id.clone(),
        };
        if let Some(addr) = self.zone_replica(topic, partition).await {
            let follower = v1::FetchRequest { from_follower: true, ..req.clone() };
            match self.fetch_once(&addr, follower, max_wait).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(%addr, topic, partition, error = %e, "follower fetch failed; fetching from the leader");
                    self.follower_failed(&addr);
                }
            }
        }
        let target = Target::Partition { topic: topic.to_string(), partition };
        self.call(target, Kind::Read, max_wait, None, |ch, addr| {
            let req = req.clone();
            async move {
                let r = flotilla(ch).fetch(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                Ok(r)
            }
        })
        .await
    }

    /// One fetch, without waiting, from the replica of `topic`/`partition` at `addr`,
    /// whether or not it leads: what that replica has committed and applied. No retries.
    pub(crate) async fn fetch_replica(
        &self,
        addr: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<v1::FetchResponse> {
        let req = v1::FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: limits::FETCH_BYTES_MAX as u32,
            max_wait_ms: 0,
            from_follower: true,
            client_id: self.config.client_id.clone(),
        };
        self.fetch_once(addr, req, Duration::ZERO).await
    }

    /// One attempt of `req` at `addr`, no retries.
    async fn fetch_once(&self, addr: &str, req: v1::FetchRequest, max_wait: Duration) -> Result<v1::FetchResponse> {
        let ch = self.channel(addr)?;
        let after = self.config.request_timeout + max_wait;
        match tokio::time::timeout(after, flotilla(ch).fetch(req)).await {
            Ok(r) => {
                let r = r.map_err(rpc_err(addr))?.into_inner();
                answered(addr, &r.error)?;
                Ok(r)
            }
            Err(_) => {
                self.forget_channel(addr);
                Err(ClientError::Timeout { addr: addr.to_string(), after })
            }
        }
    }

    /// The address of a replica of the partition in this client's zone to fetch from,
    /// when the client has a zone, the leader is not in it (then the leader is the
    /// right replica anyway), and such a replica has not failed in the last
    /// [`FOLLOWER_COOLDOWN`]. Among several, each partition picks its own, so the load
    /// spreads.
    async fn zone_replica(&self, topic: &str, partition: PartitionId) -> Option<String> {
        let zone = self.config.zone.as_deref().filter(|z| !z.is_empty())?;
        let p = self.partition_info(topic, partition).await.ok()?;
        let now = Instant::now();
        let c = self.cache.read().expect("cache lock");
        let in_zone = |id: &NodeId| c.brokers.get(id).is_some_and(|b| b.zone == zone && b.may_serve());
        if p.leader.as_ref().is_some_and(in_zone) {
            return None;
        }
        let cooling = self.follower_cooldown.lock().expect("cooldown lock");
        let candidates: Vec<&str> = p
            .replicas
            .iter()
            .filter(|id| in_zone(id))
            .filter_map(|id| c.broker_addr(*id))
            .filter(|a| cooling.get(*a).is_none_or(|until| *until <= now))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[partition as usize % candidates.len()].to_string())
    }

    /// Stops fetching from the replica at `addr` for a while: it failed or lags.
    fn follower_failed(&self, addr: &str) {
        let mut cooling = self.follower_cooldown.lock().expect("cooldown lock");
        let now = Instant::now();
        cooling.retain(|_, until| *until > now);
        if cooling.len() < CHANNELS_MAX {
            cooling.insert(addr.to_string(), now + FOLLOWER_COOLDOWN);
        }
    }

    /// The earliest offset still stored and the latest (the high watermark: the offset the
    /// next record will get) of a partition, from its leader.
    pub(crate) async fn list_offsets(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset)> {
        let target = Target::Partition { topic: topic.to_string(), partition };
        let req = v1::ListOffsetsRequest { topic: topic.to_string(), partition, timestamp_ms: None };
        self.call(target, Kind::Read, Duration::ZERO, None, |ch, addr| {
            let req = req.clone();
            async move {
                let r = flotilla(ch).list_offsets(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                if r.earliest > r.latest {
                    return Err(ClientError::protocol(
                        &addr,
                        format!("earliest offset {} is above latest {}", r.earliest, r.latest),
                    ));
                }
                Ok((r.earliest, r.latest))
            }
        })
        .await
    }

    /// The first offset whose record's timestamp is at or after `time_ms` (ms since the
    /// Unix epoch; Kafka's `offsetsForTimes`), from the partition's leader. A time after
    /// every record gives the high watermark; a time before the log start, the log start.
    pub(crate) async fn offset_for_time(&self, topic: &str, partition: PartitionId, time_ms: u64) -> Result<Offset> {
        let target = Target::Partition { topic: topic.to_string(), partition };
        let req = v1::ListOffsetsRequest { topic: topic.to_string(), partition, timestamp_ms: Some(time_ms) };
        self.call(target, Kind::Read, Duration::ZERO, None, |ch, addr| {
            let req = req.clone();
            async move {
                let r = flotilla(ch).list_offsets(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                match r.offset_for_time {
                    Some(o) if (r.earliest..=r.latest).contains(&o) => Ok(o),
                    other => Err(ClientError::protocol(
                        &addr,
                        format!("offset for time {other:?} is outside [{}, {}]", r.earliest, r.latest),
                    )),
                }
            }
        })
        .await
    }

    /// The number of partitions of `topic` (from the cache, refreshed when unknown).
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(t) = self.cache.read().expect("cache lock").topics.get(topic) {
            return Ok(t.partitions.len() as u32);
        }
        Ok(self.topic_info(topic).await?.partitions.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode, addr: &str) -> ClientError {
        ClientError::Server { code, message: String::new(), addr: addr.into(), leader_id: None, leader_addr: None }
    }

    /// One row per line of `next_step`'s table: the error, the leader a NOT_LEADER
    /// named, redirects so far, whether an unknown topic already refreshed, whether an
    /// unknown outcome may be retried → the step.
    #[test]
    fn the_retry_table() {
        use ErrorCode::{
            DiskFull, Internal, InvalidRequest, LeaderChanged, NotLeader, ShuttingDown, StorageError, Timeout,
            Unavailable, UnknownPartition, UnknownTopic,
        };
        let (a, b) = ("a:1".to_string(), "b:1".to_string());
        let step = |next, hint: Option<&String>, avoid: Option<&String>, refresh| Step {
            next,
            hint: hint.cloned(),
            avoid: avoid.cloned(),
            refresh,
        };
        let transport = ClientError::Transport { addr: a.clone(), message: "reset".into() };
        let timeout = ClientError::Timeout { addr: a.clone(), after: Duration::from_secs(1) };
        let connect = ClientError::Connect { addr: a.clone(), message: "refused".into() };
        let exhausted = ClientError::Rpc { addr: a.clone(), code: tonic::Code::ResourceExhausted, message: "".into() };
        let unavailable = ClientError::Refused { code: Unavailable, message: "".into() };
        let invalid = ClientError::Refused { code: InvalidRequest, message: "".into() };
        type Row<'a> = (ClientError, Option<&'a String>, u32, bool, bool, Step);
        let rows: Vec<Row> = vec![
            // NOT_LEADER naming another node: there at once, three times, then after a backoff.
            (server(NotLeader, &a), Some(&b), 0, false, false, step(Next::Now, Some(&b), None, false)),
            (server(NotLeader, &a), Some(&b), 3, false, false, step(Next::Backoff, Some(&b), None, false)),
            // ... naming the node that answered, or nobody.
            (server(NotLeader, &a), Some(&a), 0, false, false, step(Next::Backoff, Some(&a), None, false)),
            (server(NotLeader, &a), None, 0, false, false, step(Next::Backoff, None, None, true)),
            // An unknown topic or partition: refresh and go again at once, once.
            (server(UnknownTopic, &a), None, 0, false, false, step(Next::Now, None, None, true)),
            (server(UnknownPartition, &a), None, 0, false, false, step(Next::Now, None, None, true)),
            (server(UnknownTopic, &a), None, 0, true, true, step(Next::Fail, None, None, false)),
            // Retriable and definite (nothing was done): elsewhere, after a backoff.
            (server(Unavailable, &a), None, 0, false, false, step(Next::Backoff, None, Some(&a), true)),
            (server(StorageError, &a), None, 0, false, false, step(Next::Backoff, None, Some(&a), true)),
            (server(ShuttingDown, &a), None, 0, false, false, step(Next::Backoff, None, Some(&a), true)),
            (server(DiskFull, &a), None, 0, false, false, step(Next::Backoff, None, Some(&a), true)),
            (unavailable, None, 0, false, false, step(Next::Backoff, None, None, true)),
            (connect, None, 0, false, false, step(Next::Backoff, None, Some(&a), true)),
            // Maybe applied: again only where that is allowed.
            (server(Timeout, &a), None, 0, false, true, step(Next::Backoff, None, Some(&a), true)),
            (server(LeaderChanged, &a), None, 0, false, true, step(Next::Backoff, None, Some(&a), true)),
            (server(Timeout, &a), None, 0, false, false, step(Next::Fail, None, None, false)),
            (transport.clone(), None, 0, false, true, step(Next::Backoff, None, Some(&a), true)),
            (transport, None, 0, false, false, step(Next::Fail, None, None, false)),
            (timeout.clone(), None, 0, false, true, step(Next::Backoff, None, Some(&a), true)),
            (timeout, None, 0, false, false, step(Next::Fail, None, None, false)),
            // The server's stream limit: back off, same node.
            (exhausted, None, 0, false, false, step(Next::Backoff, None, None, false)),
            // Anything else is the answer.
            (server(InvalidRequest, &a), None, 0, false, true, step(Next::Fail, None, None, false)),
            (server(Internal, &a), None, 0, false, true, step(Next::Fail, None, None, false)),
            (invalid, None, 0, false, true, step(Next::Fail, None, None, false)),
            (ClientError::Closed, None, 0, false, true, step(Next::Fail, None, None, false)),
        ];
        for (err, named, redirects, refreshed, retry_unknown, want) in rows {
            let got = next_step(&err, named.cloned(), redirects, refreshed, retry_unknown);
            assert_eq!(got, want, "{err:?} named {named:?}, {redirects} redirects, refreshed {refreshed}");
        }
    }
}
