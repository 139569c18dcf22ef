//! The client: bootstrap, metadata cache, one channel per broker, leader routing and the
//! retry engine every request goes through, plus the admin methods.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_proto::request::{self, CreateTopic};
use flotilla_proto::v1::{self, admin_client::AdminClient, flotilla_client::FlotillaClient};
use flotilla_types::{Acks, ErrorCode, NodeId, Offset, PartitionId, RecordBatch, limits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::admin::TopicPolicy;
use crate::backoff::Backoff;
use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::{Consumer, StartAt};
use crate::error::{ClientError, Result};
use crate::metadata::{self, Cache, ClusterInfo, PartitionInfo, TopicInfo, TopicSummary};
use crate::producer::Producer;

/// The most broker channels kept open; past it the pool is emptied (channels reconnect
/// lazily), so a stream of bogus leader hints cannot grow it without bound.
const CHANNELS_MAX: usize = 1024;
/// Immediate redirects (NOT_LEADER with a hint) before backing off: stops two nodes that
/// name each other from bouncing a request without pause.
const REDIRECTS_WITHOUT_BACKOFF: u32 = 3;
/// After a fetch from a replica in the client's zone fails (it is down, lags behind the
/// position, or no longer hosts the partition), fetches go to the leader for this long.
const FOLLOWER_COOLDOWN: Duration = Duration::from_secs(5);

/// A connection to a Flotilla cluster. Cheap to clone; clones share the metadata cache
/// and the connections. Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("bootstrap", &self.inner.bootstrap).finish_non_exhaustive()
    }
}

pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    /// `host:port`, as normalised by [`normalize_addr`].
    bootstrap: Vec<String>,
    cache: RwLock<Cache>,
    channels: Mutex<HashMap<String, Channel>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Topics this client routes requests for: what a refresh asks about.
    interest: Mutex<BTreeSet<String>>,
    pub(crate) rng: Mutex<StdRng>,
    /// Replicas in this client's zone not to fetch from until the instant given.
    follower_cooldown: Mutex<HashMap<String, Instant>>,
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

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
pub(crate) fn normalize_addr(addr: &str) -> std::result::Result<String, String> {
    let a = addr.trim();
    if a.starts_with("https://") {
        return Err(format!("{a:?}: TLS is not supported; use host:port or http://host:port"));
    }
    let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
    let uri: tonic::transport::Uri =
        format!("http://{a}").parse().map_err(|e| format!("{addr:?} is not a host:port address: {e}"))?;
    match (uri.host(), uri.port_u16(), uri.path()) {
        (Some(h), Some(_), "/" | "") if !h.is_empty() => Ok(a.to_string()),
        (_, None, _) => Err(format!("{addr:?} has no port; expected host:port")),
        _ => Err(format!("{addr:?} is not a host:port address")),
    }
}

pub(crate) fn flotilla(ch: Channel) -> FlotillaClient<Channel> {
    FlotillaClient::new(ch)
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::REQUEST_BYTES_MAX)
}

pub(crate) fn admin(ch: Channel) -> AdminClient<Channel> {
    AdminClient::new(ch)
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::REQUEST_BYTES_MAX)
}

/// Turns an in-band error into `Err`.
pub(crate) fn answered(addr: &str, error: &Option<v1::Error>) -> Result<()> {
    flotilla_proto::check(error).map_err(|e| ClientError::server(addr, e))
}

pub(crate) fn rpc_err(addr: &str) -> impl Fn(tonic::Status) -> ClientError + '_ {
    move |s| ClientError::from_status(addr, &s)
}

pub(crate) fn refused(e: v1::Error) -> ClientError {
    ClientError::refused(e.error_code(), e.message)
}

impl Client {
    /// Connects with the default [`ClientConfig`]. `bootstrap` is `host:port` or
    /// `http://host:port` (several may be given, comma-separated); the client learns
    /// the other brokers from the cluster's metadata.
    pub async fn connect(bootstrap: &str) -> Result<Client> {
        Client::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Connects and loads the cluster's metadata. Fails (definitely) when no bootstrap
    /// address answers within `connect_timeout` plus one `request_timeout`.
    pub async fn connect_with(bootstrap: &str, config: ClientConfig) -> Result<Client> {
        let mut addrs = vec![];
        for a in bootstrap.split(',').filter(|a| !a.trim().is_empty()) {
            let a = normalize_addr(a).map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, e))?;
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(ClientError::refused(ErrorCode::InvalidRequest, "no bootstrap address given"));
        }
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                bootstrap: addrs,
                cache: RwLock::new(Cache::default()),
                channels: Mutex::new(HashMap::new()),
                refresh_lock: tokio::sync::Mutex::new(()),
                interest: Mutex::new(BTreeSet::new()),
                rng: Mutex::new(rng),
                follower_cooldown: Mutex::new(HashMap::new()),
            }),
        };
        client.inner.bootstrap_metadata().await?;
        Ok(client)
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A batching producer for `topic`. Records sent through it are gathered per
    /// partition; see [`Producer`].
    pub fn producer(&self, topic: impl Into<String>, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), topic.into(), config)
    }

    /// A consumer of one partition, positioned at `start`.
    pub async fn consumer(&self, topic: &str, partition: PartitionId, start: StartAt) -> Result<Consumer> {
        self.consumer_with(topic, partition, start, ConsumerConfig::default()).await
    }

    /// [`Client::consumer`] with explicit settings.
    pub async fn consumer_with(
        &self,
        topic: &str,
        partition: PartitionId,
        start: StartAt,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        let position = match start {
            StartAt::Offset(o) => {
                self.inner.partition_info(topic, partition).await?;
                o
            }
            StartAt::Beginning => self.list_offsets(topic, partition).await?.0,
            StartAt::End => self.list_offsets(topic, partition).await?.1,
            StartAt::Time(ms) => self.offset_for_time(topic, partition, ms).await?,
        };
        Ok(Consumer::new(self.clone(), topic.to_string(), partition, position, config))
    }

    /// The earliest offset still stored and the latest (the high watermark: the offset the
    /// next record will get) of a partition, from its leader.
    pub async fn list_offsets(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset)> {
        let target = Target::Partition { topic: topic.to_string(), partition };
        let req = v1::ListOffsetsRequest { topic: topic.to_string(), partition, timestamp_ms: None };
        self.inner
            .call(target, Kind::Read, Duration::ZERO, None, |ch, addr| {
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
    pub async fn offset_for_time(&self, topic: &str, partition: PartitionId, time_ms: u64) -> Result<Offset> {
        let target = Target::Partition { topic: topic.to_string(), partition };
        let req = v1::ListOffsetsRequest { topic: topic.to_string(), partition, timestamp_ms: Some(time_ms) };
        self.inner
            .call(target, Kind::Read, Duration::ZERO, None, |ch, addr| {
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

    /// Deletes the partition's records below `before` (Kafka's DeleteRecords): its log
    /// start moves there on every replica and the space is given back. Returns the new
    /// log start. Safe to retry: deleting below an offset twice is deleting it once.
    pub async fn delete_records(&self, topic: &str, partition: PartitionId, before: Offset) -> Result<Offset> {
        let target = Target::Partition { topic: topic.to_string(), partition };
        let req = v1::DeleteRecordsRequest { topic: topic.to_string(), partition, before_offset: before };
        self.inner
            .call(target, Kind::Write { retry_indeterminate: true }, Duration::ZERO, None, |ch, addr| {
                let req = req.clone();
                async move {
                    let r = flotilla(ch).delete_records(req).await.map_err(rpc_err(&addr))?.into_inner();
                    answered(&addr, &r.error)?;
                    Ok(r.log_start_offset)
                }
            })
            .await
    }

    /// The number of partitions of `topic` (from the cache, refreshed when unknown).
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(t) = self.inner.cache.read().expect("cache lock").topics.get(topic) {
            return Ok(t.partitions.len() as u32);
        }
        Ok(self.inner.topic_info(topic).await?.partitions.len() as u32)
    }

    /// What the cache knows of `topic`, without asking the cluster.
    pub fn cached_topic(&self, topic: &str) -> Option<TopicInfo> {
        self.inner.cache.read().expect("cache lock").topics.get(topic).cloned()
    }

    /// Brokers, topics and leaders, from the Metadata API of any node; also refreshes the
    /// cache. `answered_by` is `None` (this API does not say).
    pub async fn metadata(&self) -> Result<ClusterInfo> {
        let req = v1::MetadataRequest { topics: vec![] };
        let resp = self
            .inner
            .call(Target::Any, Kind::Read, Duration::ZERO, None, |ch, addr| {
                let req = req.clone();
                async move {
                    let r = flotilla(ch).metadata(req).await.map_err(rpc_err(&addr))?.into_inner();
                    Ok((addr, r))
                }
            })
            .await;
        let (addr, resp) = resp?;
        let brokers = metadata::brokers_from_wire(&resp.brokers).map_err(|e| ClientError::protocol(&addr, e))?;
        let (topics, _) = metadata::topics_from_wire(&resp.topics).map_err(|e| ClientError::protocol(&addr, e))?;
        self.inner.cache.write().expect("cache lock").apply(&resp, &[]).map_err(|e| ClientError::protocol(&addr, e))?;
        Ok(ClusterInfo {
            brokers,
            metadata_leader: (resp.metadata_leader_id != 0).then_some(resp.metadata_leader_id),
            topics,
            answered_by: None,
        })
    }

    /// Creates a topic, at the metadata leader. Then waits (up to
    /// `ClientConfig::create_topic_wait`) until the cluster's metadata shows a leader for
    /// every partition, so that producing right away works; returns the topic as last seen.
    ///
    /// Retried like any write, also after an indeterminate failure: a `TOPIC_EXISTS`
    /// answer to such a retry comes back as [`ClientError::GaveUp`] with
    /// `maybe_applied: true` (the first attempt may have created it).
    pub async fn create_topic(&self, name: &str, partitions: u32, replication_factor: u32) -> Result<TopicInfo> {
        self.create_topic_with(name, partitions, replication_factor, &TopicPolicy::default()).await
    }

    /// [`Client::create_topic`] with a placement policy: where its replicas may go and
    /// where its leaders should be. A policy the cluster cannot satisfy is refused with
    /// `POLICY_VIOLATION` and the reason.
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        policy: &TopicPolicy,
    ) -> Result<TopicInfo> {
        let req = CreateTopic {
            policy: request::Policy::try_from(v1::TopicPolicy::from(policy)).map_err(refused)?,
            ..CreateTopic::new(name, partitions, replication_factor).map_err(refused)?
        };
        let wire = v1::CreateTopicRequest::from(&req);
        let created = self
            .admin_write(true, |ch, addr| {
                let wire = wire.clone();
                async move {
                    let r = admin(ch).create_topic(wire).await.map_err(rpc_err(&addr))?.into_inner();
                    answered(&addr, &r.error)?;
                    r.topic
                        .as_ref()
                        .map(metadata::topic_from_wire)
                        .transpose()
                        .map_err(|e| ClientError::protocol(&addr, e))
                }
            })
            .await?;
        let mut last = created.clone();
        let until = Instant::now() + self.inner.config.create_topic_wait;
        loop {
            if self.inner.refresh(&[name.to_string()]).await.is_ok()
                && let Some(t) = self.cached_topic(name)
            {
                let ready =
                    t.partitions.len() == partitions as usize && t.partitions.iter().all(|p| p.leader.is_some());
                last = Some(t);
                if ready {
                    break;
                }
            }
            if Instant::now() + Duration::from_millis(100) > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(last.unwrap_or(TopicInfo { name: name.to_string(), replication_factor, partitions: vec![] }))
    }

    /// Deletes a topic, at the metadata leader.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        limits::check_topic_name(name).map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, e))?;
        let req = v1::DeleteTopicRequest { name: name.to_string() };
        self.admin_write(true, |ch, addr| {
            let req = req.clone();
            async move {
                let r = admin(ch).delete_topic(req).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)
            }
        })
        .await?;
        self.inner.cache.write().expect("cache lock").topics.remove(name);
        Ok(())
    }

    /// Every topic, in name order.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let mut topics = self
            .inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| async move {
                let r = admin(ch).list_topics(v1::ListTopicsRequest {}).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                r.topics
                    .into_iter()
                    .map(|t| {
                        limits::check_topic_name(&t.name).map_err(|e| ClientError::protocol(&addr, e))?;
                        Ok(TopicSummary {
                            name: t.name,
                            partitions: t.partitions,
                            replication_factor: t.replication_factor,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// One topic with its partitions, leaders and replicas.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        limits::check_topic_name(name).map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, e))?;
        let req = v1::DescribeTopicRequest { name: name.to_string() };
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| {
                let req = req.clone();
                async move {
                    let r = admin(ch).describe_topic(req).await.map_err(rpc_err(&addr))?.into_inner();
                    answered(&addr, &r.error)?;
                    let t = r
                        .topic
                        .ok_or_else(|| ClientError::protocol(&addr, "DescribeTopic answered without a topic"))?;
                    answered(&addr, &t.error)?;
                    metadata::topic_from_wire(&t).map_err(|e| ClientError::protocol(&addr, e))
                }
            })
            .await
    }

    /// The cluster as the metadata leader (or, while it is unknown, any node) sees it.
    pub async fn describe_cluster(&self) -> Result<ClusterInfo> {
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| async move {
                let r = admin(ch)
                    .describe_cluster(v1::DescribeClusterRequest {})
                    .await
                    .map_err(rpc_err(&addr))?
                    .into_inner();
                answered(&addr, &r.error)?;
                let bad = |e: String| ClientError::protocol(&addr, e);
                let brokers = metadata::brokers_from_wire(&r.brokers).map_err(bad)?;
                let (topics, _) = metadata::topics_from_wire(&r.topics).map_err(bad)?;
                Ok(ClusterInfo {
                    brokers,
                    metadata_leader: (r.metadata_leader_id != 0).then_some(r.metadata_leader_id),
                    topics,
                    answered_by: (r.answered_by != 0).then_some(r.answered_by),
                })
            })
            .await
    }
}

impl ClientInner {
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
    async fn bootstrap_metadata(&self) -> Result<()> {
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
        self.cache
            .read()
            .expect("cache lock")
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::refused(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")))
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

    /// The channel to `addr` (`host:port`), opened lazily and kept.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, format!("bad broker address {addr:?}: {e}")))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = flotilla_proto::dial(endpoint, self.config.dialer.as_ref());
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
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
        F: FnMut(Channel, String) -> Fut,
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
            enum Next {
                Now,
                Backoff,
                Fail,
            }
            let next = match &err {
                ClientError::Server { code: ErrorCode::NotLeader, addr, leader_id, leader_addr, .. } => {
                    let named = {
                        let mut c = self.cache.write().expect("cache lock");
                        // A leader the cache has not heard of yet (a node that just joined).
                        if let (Some(id), Some(a)) = (leader_id, leader_addr)
                            && !c.brokers.contains_key(id)
                            && let Ok(a) = normalize_addr(a)
                        {
                            c.brokers.insert(*id, metadata::BrokerInfo::bare(*id, a));
                        }
                        if let Some(id) = leader_id {
                            match &target {
                                Target::Partition { topic, partition } => c.set_leader(topic, *partition, *id),
                                Target::MetadataLeader => c.metadata_leader = Some(*id),
                                Target::Any => {}
                            }
                        } else if let Target::Partition { topic, partition } = &target
                            && let Some(id) = c.brokers.values().find(|b| &b.addr == addr).map(|b| b.id)
                        {
                            c.forget_leader(topic, *partition, id);
                        }
                        leader_addr.clone().or_else(|| leader_id.and_then(|id| c.broker_addr(id).map(str::to_string)))
                    };
                    match named.and_then(|n| normalize_addr(&n).ok()) {
                        Some(n) if &n != addr && redirects < REDIRECTS_WITHOUT_BACKOFF => {
                            redirects += 1;
                            hint = Some(n);
                            Next::Now
                        }
                        Some(n) => {
                            hint = Some(n);
                            Next::Backoff
                        }
                        None => {
                            self.refresh_quietly(&target).await;
                            Next::Backoff
                        }
                    }
                }
                ClientError::Server { code: ErrorCode::UnknownTopic | ErrorCode::UnknownPartition, .. }
                    if !refreshed_for_unknown =>
                {
                    refreshed_for_unknown = true;
                    self.refresh_quietly(&target).await;
                    Next::Now
                }
                // UNAVAILABLE, SHUTTING_DOWN, STORAGE_ERROR, ...: nothing was done.
                ClientError::Server { code, addr, .. } if code.is_retriable() && code.is_definite() => {
                    avoid = Some(addr.clone());
                    self.refresh_quietly(&target).await;
                    Next::Backoff
                }
                ClientError::Refused { code: ErrorCode::Unavailable, .. } => {
                    self.refresh_quietly(&target).await;
                    Next::Backoff
                }
                ClientError::Connect { addr, .. } => {
                    avoid = Some(addr.clone());
                    self.refresh_quietly(&target).await;
                    Next::Backoff
                }
                // TIMEOUT, LEADER_CHANGED, a lost connection, no answer: maybe done.
                ClientError::Server { code, addr, .. } if code.is_retriable() && retry_unknown_outcome => {
                    avoid = Some(addr.clone());
                    self.refresh_quietly(&target).await;
                    Next::Backoff
                }
                ClientError::Transport { addr, .. } | ClientError::Timeout { addr, .. } if retry_unknown_outcome => {
                    avoid = Some(addr.clone());
                    self.refresh_quietly(&target).await;
                    Next::Backoff
                }
                ClientError::Rpc { code: tonic::Code::ResourceExhausted, .. } => Next::Backoff,
                _ => Next::Fail,
            };
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
        let req = v1::ProduceRequest::new(topic, partition, batch, acks);
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
            max_bytes: max_bytes.min(limits::BATCH_BYTES_MAX as u32),
            max_wait_ms: max_wait.as_millis() as u32,
            from_follower: false,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(normalize_addr("127.0.0.1:7070").unwrap(), "127.0.0.1:7070");
        assert_eq!(normalize_addr(" http://localhost:7070/ ").unwrap(), "localhost:7070");
        assert_eq!(normalize_addr("[::1]:7070").unwrap(), "[::1]:7070");
        assert!(normalize_addr("localhost").unwrap_err().contains("no port"));
        assert!(normalize_addr("https://h:1").unwrap_err().contains("TLS"));
        assert!(normalize_addr("h:1/path").is_err());
        assert!(normalize_addr("").is_err());
    }
}
