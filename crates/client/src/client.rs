//! The public facade: [`Client`], what an application holds. It connects, makes
//! producers and consumers, and offers the topic and offset calls; every request goes
//! through the routing core (`router`), and the admin, group and share calls extend
//! `Client` in their own modules.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::request::{self, CreateTopic};
use flotilla_proto::v1;
use flotilla_types::{ErrorCode, Offset, PartitionId, TopicPolicy, limits};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::{ConsumedRecord, Consumer, StartAt};
use crate::error::{ClientError, Result};
use crate::metadata::{self, ClusterInfo, TopicInfo, TopicSummary};
use crate::producer::Producer;
use crate::router::{ClientInner, Kind, Target};
use crate::wire::{admin, answered, flotilla, normalize_addr, refused, rpc_err};

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
        #[allow(clippy::disallowed_methods, reason = "an unseeded client draws its seed from the OS")]
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let client = Client { inner: Arc::new(ClientInner::new(config, addrs, rng)) };
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
        Producer::new(self.inner.clone(), topic.into(), config)
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
        Ok(Consumer::new(self.inner.clone(), topic.to_string(), partition, position, config))
    }

    /// The earliest offset still stored and the latest (the high watermark: the offset the
    /// next record will get) of a partition, from its leader.
    pub async fn list_offsets(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset)> {
        self.inner.list_offsets(topic, partition).await
    }

    /// The first offset whose record's timestamp is at or after `time_ms` (ms since the
    /// Unix epoch; Kafka's `offsetsForTimes`), from the partition's leader. A time after
    /// every record gives the high watermark; a time before the log start, the log start.
    pub async fn offset_for_time(&self, topic: &str, partition: PartitionId, time_ms: u64) -> Result<Offset> {
        self.inner.offset_for_time(topic, partition, time_ms).await
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

    /// Reads one replica: the records of `topic`/`partition` from `offset` that the node
    /// at `addr` has committed and applied, whether it leads or follows, in one fetch
    /// without retries or waiting (up to the fetch size limit; call again from the
    /// returned position for more). For checkers and operators comparing replicas; a
    /// consumer reads through [`Client::consumer`]. A follower that has lost its leader
    /// answers `NOT_LEADER`.
    pub async fn read_replica(
        &self,
        addr: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<ReplicaRead> {
        let resp = self.inner.fetch_replica(addr, topic, partition, offset).await?;
        let (records, next) = crate::consumer::records_from(&resp, topic, partition, offset)?;
        Ok(ReplicaRead { log_start: resp.log_start_offset, high_watermark: resp.high_watermark, records, next })
    }

    /// The number of partitions of `topic` (from the cache, refreshed when unknown).
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.inner.partition_count(topic).await
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
            policy: request::TopicPolicy::try_from(v1::TopicPolicy::from(policy)).map_err(refused)?,
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

/// One fetch from one replica ([`Client::read_replica`]).
#[derive(Debug, Clone)]
pub struct ReplicaRead {
    /// The replica's log start: records below are deleted.
    pub log_start: Offset,
    /// The replica's high watermark: every offset below it is committed there.
    pub high_watermark: Offset,
    pub records: Vec<ConsumedRecord>,
    /// The offset to read from next.
    pub next: Offset,
}
