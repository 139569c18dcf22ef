//! The request handlers behind the client and admin APIs, in domain types.
//!
//! Every error is an `ApiError` with a stable `ErrorCode`; a wrong-leader error names
//! the leader when this node knows it. Input was checked for shape at the edge (`rpc`);
//! here it is checked against the cluster (topics, partitions, leadership, limits).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use flotilla_metadata::{Command as MetaCommand, Liveness, Response as MetaResponse, Topic, TopicPolicy};
use flotilla_partition::Response as PartResponse;
use flotilla_raft::{Group, MembershipError, PartitionGroup, RaftTransport, WriteError};
use flotilla_types::planted::{self, Bug};
use flotilla_types::{Acks, ErrorCode, GroupId, NodeId, Offset, PartitionId, RecordBatch, limits};
use serde::Serialize;

use crate::Node;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For NOT_LEADER: the leader's id and address, when known.
    pub leader: Option<(NodeId, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), leader: None }
    }
}

pub use flotilla_types::cluster::{BrokerInfo, PartitionInfo, TopicInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub brokers: Vec<BrokerInfo>,
    pub metadata_leader: Option<NodeId>,
    pub topics: Vec<TopicInfo>,
    pub answered_by: NodeId,
    pub now_ms: u64,
}

/// A produce's answer: the batch's first offset and record count; `duplicate` when an
/// idempotent producer's retry was answered with the offsets of its first append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: Offset,
    pub records: u32,
    pub duplicate: bool,
    /// The level it was acknowledged at.
    pub acks: Acks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    pub base_offset: Offset,
    pub batch: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    pub batches: Vec<FetchedBatch>,
    /// How long the fetch waited for records to arrive (its long poll): not part of the
    /// time it took to serve.
    pub waited: Duration,
}

/// How long a topic create waits for more brokers when the cluster cannot place it yet
/// because it is still forming (members of the metadata group have not registered);
/// then it fails with `UNAVAILABLE`, which clients retry. docs/errors.md.
pub const CREATE_TOPIC_FORMING_WAIT: Duration = Duration::from_secs(5);

impl<T: RaftTransport> Node<T> {
    /// A wrong-leader error naming the leader when this node knows one: the replica's own
    /// view first, else the leader's own report while the metadata group holds it alive (a
    /// replica created after its group's election, in a quiet group, has heard from no
    /// leader yet).
    fn leader_error(&self, group: GroupId, leader: Option<NodeId>, code: ErrorCode, what: &str) -> ApiError {
        let leader = leader.or_else(|| self.reported_live_leader(group));
        let leader = leader.filter(|l| *l != self.id()).and_then(|l| self.client_addr(l).map(|a| (l, a)));
        let message = match &leader {
            Some((id, addr)) => {
                format!("node {} does not lead {what} (group {group}); node {id} at {addr} does", self.id())
            }
            None => format!("node {} does not lead {what} (group {group}); the leader is not known", self.id()),
        };
        ApiError { code, message, leader }
    }

    /// The leader `group` last reported, if the metadata group holds that node alive.
    fn reported_live_leader(&self, group: GroupId) -> Option<NodeId> {
        let leader = self.groups().reported_leader(group)?;
        self.with_metadata(|m| m.brokers().get(&leader).is_some_and(|b| b.liveness == Liveness::Alive))
            .then_some(leader)
    }

    /// A change of the metadata group's voters (`flotilla cluster controllers`) that
    /// did not happen, or may not have.
    pub(crate) fn controllers_error(&self, e: MembershipError) -> ApiError {
        match e {
            MembershipError::NotLeader { leader, .. } => self.not_metadata_leader(leader),
            MembershipError::Refused { .. } => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            MembershipError::Timeout { .. } => ApiError::new(
                ErrorCode::Timeout,
                format!("{e}: the controllers may or may not have changed; see `flotilla cluster controllers`"),
            ),
        }
    }

    // The raft layer's errors become error codes here (writes, membership changes) and in
    // `storage_error`; nowhere else.
    fn write_error(&self, e: WriteError, what: &str) -> ApiError {
        match e {
            WriteError::NotLeader { group, leader } => self.leader_error(group, leader, ErrorCode::NotLeader, what),
            WriteError::LeaderChanged { group, leader } => {
                let mut err = self.leader_error(group, leader, ErrorCode::LeaderChanged, what);
                err.message = format!(
                    "leadership of {what} changed while the write was in flight; it may or may not have been applied"
                );
                err
            }
            WriteError::Unavailable { group, reason } => {
                ApiError::new(ErrorCode::Unavailable, format!("{what} (group {group}) is unavailable: {reason}"))
            }
            WriteError::Timeout { group } => ApiError::new(
                ErrorCode::Timeout,
                format!("{what} (group {group}) did not commit in time; the write may or may not have been applied"),
            ),
        }
    }

    /// The partition's group on this node, or why it cannot serve it.
    fn partition_group(&self, topic: &str, partition: PartitionId) -> Result<PartitionGroup, ApiError> {
        let assignment = self.with_metadata(|m| {
            let t = m
                .topic(topic)
                .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")))?;
            t.partitions.get(partition as usize).cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPartition,
                    format!("topic '{topic}' has {} partitions; {partition} does not exist", t.partitions.len()),
                )
            })
        })?;
        let what = format!("{topic}/{partition}");
        match self.groups().partition(assignment.group) {
            Some(g) => Ok(g),
            None if assignment.replicas.contains(&self.id()) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{what}: the replica on node {} is starting", self.id()),
            )),
            None => Err(self.leader_error(assignment.group, None, ErrorCode::NotLeader, &what)),
        }
    }

    /// Appends a batch (checked at the edge: checksum, structure, limits); answers once a
    /// quorum has it durable and it is applied.
    pub async fn produce(&self, topic: &str, partition: PartitionId, batch: RecordBatch) -> Result<Produced, ApiError> {
        self.produce_with(topic, partition, batch, Acks::All).await
    }

    /// [`Node::produce`] answered at `acks`: with `Acks::Leader`, as soon as this leader
    /// has the batch durably in its own log (or once applied, if that comes first), with
    /// the offsets the batch gets when it is committed.
    pub async fn produce_with(
        &self,
        topic: &str,
        partition: PartitionId,
        batch: RecordBatch,
        acks: Acks,
    ) -> Result<Produced, ApiError> {
        let what = format!("{topic}/{partition}");
        let group = self.partition_group(topic, partition)?;
        if let Some(why) = self.disk_full() {
            return Err(ApiError::new(
                ErrorCode::DiskFull,
                format!("{what}: node {} refuses writes: {why}; retry once retention has freed space", self.id()),
            ));
        }
        let cmd = flotilla_partition::produce_command_with(
            &batch,
            self.inner.clock.now_ms(),
            self.config().producer_settings(),
        );
        let written = match acks {
            Acks::All => group.write(cmd, self.produce_timeout()).await,
            Acks::Leader => group.write_leader_durable(cmd, self.produce_timeout()).await,
        };
        match written {
            Ok(PartResponse::Produced { base_offset, records, duplicate }) => {
                assert_eq!(records, batch.len(), "applied a different batch than proposed");
                if !duplicate {
                    self.inner.metrics.count_in(topic, u64::from(records), batch.bytes().len() as u64);
                }
                Ok(Produced { base_offset, records, duplicate, acks })
            }
            Ok(PartResponse::Refused(r)) => {
                let code = match r {
                    flotilla_partition::Refusal::Fenced { .. } => ErrorCode::ProducerFenced,
                    flotilla_partition::Refusal::OutOfOrder { .. } => ErrorCode::OutOfOrderSequence,
                };
                Err(ApiError::new(code, format!("{what}: {r}")))
            }
            Ok(other) => Err(ApiError::new(ErrorCode::Internal, format!("{what}: unexpected response {other:?}"))),
            Err(e) => Err(self.write_error(e, &what)),
        }
    }

    /// Reads committed batches from `offset`, waiting up to `max_wait` for data. With
    /// `from_follower`, a replica that does not lead serves what it has applied: never
    /// past the committed high watermark, since entries are applied only once committed
    /// (follower fetching, for consumers reading in their own zone).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
        from_follower: bool,
    ) -> Result<Fetched, ApiError> {
        let what = format!("{topic}/{partition}");
        let max_bytes = max_bytes.clamp(1, limits::FETCH_BYTES_MAX);
        let max_wait = max_wait.min(Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
        let group = self.partition_group(topic, partition)?;
        // A follower serves only while it knows a leader on a node the metadata group
        // holds alive; otherwise the consumer is sent to the leader (a follower cut off
        // from its leader would answer long polls with nothing new).
        let leader_alive = |g: &Group| {
            g.leader().is_some_and(|l| {
                self.with_metadata(|m| {
                    m.brokers().get(&l).is_some_and(|b| b.liveness == flotilla_metadata::Liveness::Alive)
                })
            })
        };
        let serves =
            |g: &Group| g.is_leader() || (from_follower && g.membership().contains(self.id()) && leader_alive(g));
        if let Some(why) = group.stopped() {
            return Err(self.stopped_replica(&what, &why));
        }
        if !serves(&group) {
            return Err(self.leader_error(group.id(), group.leader(), ErrorCode::NotLeader, &what));
        }
        let mut applied = group.state().subscribe();
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut waited = Duration::ZERO;
        // A new leader serves reads only once it has applied an entry of its own term
        // (everything committed before it is then applied): until then its high
        // watermark can be behind what the old leader answered.
        if group.is_leader() && !group.wait_applied_own_term(max_wait).await {
            if !serves(&group) {
                return Err(self.leader_error(group.id(), group.leader(), ErrorCode::NotLeader, &what));
            }
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{what}: the new leader on node {} is still applying its log; retry", self.id()),
            ));
        }
        loop {
            let (hw, start) = group.read(|p| (p.high_watermark(), p.log_start_offset()));
            let located = if (start..=hw).contains(&offset) {
                Some(group.batches_from(offset, hw, max_bytes).map_err(|e| self.storage_error(&what, e))?)
            } else {
                None
            };
            let Some(locations) = located else {
                // Past this replica's high watermark while it may be behind the
                // partition's (a follower, or a leader that is no longer one): retriable.
                if offset > hw && !group.applied_own_term() {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "{what}: offset {offset} is past the high watermark {hw} node {} has applied; retry",
                            self.id()
                        ),
                    ));
                }
                return Err(Self::out_of_range(&what, offset, start, hw));
            };
            if locations.is_empty() && offset < hw {
                // Deleted between reading the log start and reading the index; otherwise
                // the index lacks a batch it should hold: retriable, at another replica.
                let (hw, start) = group.read(|p| (p.high_watermark(), p.log_start_offset()));
                if offset < start {
                    return Err(Self::out_of_range(&what, offset, start, hw));
                }
                return Err(
                    self.storage_error(&what, std::io::Error::other(format!("no batch indexed at offset {offset}")))
                );
            }
            if planted::armed(Bug::FetchPastCommit) && locations.is_empty() && offset == hw {
                let uncommitted = Self::planted_uncommitted(&group, hw);
                if !uncommitted.is_empty() {
                    return Ok(Fetched { high_watermark: hw, log_start_offset: start, batches: uncommitted, waited });
                }
            }
            if !locations.is_empty() || tokio::time::Instant::now() >= deadline {
                let mut batches = Vec::with_capacity(locations.len());
                let (mut records, mut bytes_out) = (0u64, 0u64);
                for loc in locations {
                    let bytes = match group.read_batch(loc.log_index).map_err(|e| self.storage_error(&what, e))? {
                        Some(bytes) => bytes,
                        None => {
                            // Purged by retention since the index was read: what was
                            // read before it is still an answer.
                            let (hw, start) = group.read(|p| (p.high_watermark(), p.log_start_offset()));
                            if loc.base_offset < start {
                                if !batches.is_empty() {
                                    break;
                                }
                                return Err(Self::out_of_range(&what, offset, start, hw));
                            }
                            return Err(ApiError::new(
                                ErrorCode::StorageError,
                                format!(
                                    "{what}: log entry {} for offset {} is missing",
                                    loc.log_index, loc.base_offset
                                ),
                            ));
                        }
                    };
                    // Verified on read as on write: a corrupt batch is never served.
                    let decoded = RecordBatch::decode(bytes.clone()).map_err(|e| {
                        tracing::error!(%what, offset = loc.base_offset, error = %e, "corrupt batch in the log");
                        ApiError::new(
                            ErrorCode::CorruptBatch,
                            format!("{what}: stored batch at {}: {e}", loc.base_offset),
                        )
                    })?;
                    records += u64::from(decoded.len());
                    bytes_out += bytes.len() as u64;
                    batches.push(FetchedBatch { base_offset: loc.base_offset, batch: bytes });
                }
                self.inner.metrics.count_out(topic, records, bytes_out);
                self.inner.metrics.observe_fetch_wait(waited);
                return Ok(Fetched { high_watermark: hw, log_start_offset: start, batches, waited });
            }
            // Wake at least twice a second to notice a replica that stopped (its state
            // never changes again) or a leader that moved.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
            let slept = tokio::time::Instant::now();
            let changed = tokio::time::timeout_at(wake, applied.changed()).await;
            waited += slept.elapsed();
            if let Ok(Err(_)) = changed {
                return Err(self.stopped_replica(&what, "its state machine is gone"));
            }
            if let Some(why) = group.stopped() {
                return Err(self.stopped_replica(&what, &why));
            }
            if !serves(&group) {
                return Err(self.leader_error(group.id(), group.leader(), ErrorCode::NotLeader, &what));
            }
        }
    }

    /// OFFSET_OUT_OF_RANGE, naming the readable range: below the log start the records
    /// were deleted (retention, delete-records), past the high watermark they do not
    /// exist yet. The consumer applies its reset policy.
    fn out_of_range(what: &str, offset: Offset, start: Offset, hw: Offset) -> ApiError {
        let why = if offset < start { "deleted: below the log start" } else { "past the high watermark" };
        ApiError::new(
            ErrorCode::OffsetOutOfRange,
            format!("{what}: offset {offset} is outside [{start}, {hw}] ({why}); log start {start}"),
        )
    }

    fn storage_error(&self, what: &str, e: std::io::Error) -> ApiError {
        ApiError::new(ErrorCode::StorageError, format!("{what} on node {}: {e}", self.id()))
    }

    /// The answer of a replica that stopped after a fatal error: retriable, so the client
    /// goes to the leader (or waits for a new one).
    fn stopped_replica(&self, what: &str, why: &str) -> ApiError {
        ApiError::new(
            ErrorCode::StorageError,
            format!("{what}: the replica on node {} stopped ({why}); another replica serves it", self.id()),
        )
    }

    /// The planted bug `FetchPastCommit`: the leader's log entries past the commit
    /// index, served as if they were committed from offset `hw` on.
    fn planted_uncommitted(group: &Group, hw: Offset) -> Vec<FetchedBatch> {
        let mut out = Vec::new();
        let mut base_offset = hw;
        let applied = group.state().last_applied_index();
        for index in applied + 1..applied + 64 {
            let Ok(Some(bytes)) = group.read_batch(index) else { continue };
            let Ok(batch) = RecordBatch::decode(bytes.clone()) else { continue };
            let records = u64::from(batch.len());
            out.push(FetchedBatch { base_offset, batch: bytes });
            base_offset += records;
        }
        out
    }

    /// The earliest and latest offsets, linearizable: confirmed by a quorum first.
    pub async fn list_offsets(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset), ApiError> {
        let what = format!("{topic}/{partition}");
        let group = self.partition_group(topic, partition)?;
        group.linearizable_barrier().await.map_err(|e| self.write_error(e, &what))?;
        Ok(group.read(|p| (p.log_start_offset(), p.high_watermark())))
    }

    /// The first offset whose record's timestamp is at or after `time_ms` (Kafka's
    /// `offsetsForTimes`), linearizable like `list_offsets`. A time past every record
    /// answers the high watermark (where the next record will be); a time before the log
    /// start answers the log start. Found with one seek in the time index and a read of
    /// one batch.
    pub async fn offset_for_time(&self, topic: &str, partition: PartitionId, time_ms: u64) -> Result<Offset, ApiError> {
        let what = format!("{topic}/{partition}");
        let group = self.partition_group(topic, partition)?;
        group.linearizable_barrier().await.map_err(|e| self.write_error(e, &what))?;
        let (start, hw) = group.read(|p| (p.log_start_offset(), p.high_watermark()));
        let Some(base) = group.first_offset_at_or_after(start, time_ms).map_err(|e| self.storage_error(&what, e))?
        else {
            return Ok(hw);
        };
        let Some(loc) = group.batch_at(base).map_err(|e| self.storage_error(&what, e))? else {
            return Ok(start.max(base).min(hw));
        };
        // Within the batch: the first record at or after the time (a batch's time is
        // its latest record's, so one is; without record timestamps, the batch's start).
        let mut offset = loc.base_offset;
        if let Some(bytes) = group.read_batch(loc.log_index).map_err(|e| self.storage_error(&what, e))?
            && let Ok(batch) = RecordBatch::decode(bytes)
            && let Some(i) = batch.records().iter().position(|r| r.timestamp_ms >= time_ms)
        {
            offset += i as u64;
        }
        Ok(offset.max(start).min(hw))
    }

    /// Moves the partition's log start up to `before` (Kafka's DeleteRecords): every
    /// replica deletes the records below it, and their space is given back. `before`
    /// past the high watermark is OFFSET_OUT_OF_RANGE. Returns the new log start.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: PartitionId,
        before: Offset,
    ) -> Result<Offset, ApiError> {
        let what = format!("{topic}/{partition}");
        let group = self.partition_group(topic, partition)?;
        group.linearizable_barrier().await.map_err(|e| self.write_error(e, &what))?;
        let (start, hw) = group.read(|p| (p.log_start_offset(), p.high_watermark()));
        if before > hw {
            return Err(ApiError::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "{what}: cannot delete records before {before}: the high watermark is {hw} (log start {start})"
                ),
            ));
        }
        let cmd = flotilla_partition::Command::DeleteRecords { before };
        match group.write(cmd, self.produce_timeout()).await {
            Ok(PartResponse::LogStart { log_start }) => Ok(log_start),
            Ok(other) => Err(ApiError::new(ErrorCode::Internal, format!("{what}: unexpected response {other:?}"))),
            Err(e) => Err(self.write_error(e, &what)),
        }
    }

    fn topic_view(&self, t: &Topic) -> TopicInfo {
        let alive: BTreeSet<NodeId> = self
            .with_metadata(|m| m.brokers().values().filter(|b| b.liveness == Liveness::Alive).map(|b| b.id).collect());
        TopicInfo {
            name: t.name.clone(),
            replication_factor: t.replication_factor,
            partitions: t
                .partitions
                .iter()
                .map(|p| {
                    let local = self.groups().partition(p.group);
                    // A partition not hosted here: its leader's own report, while the
                    // metadata group holds that node alive.
                    let leader = match &local {
                        Some(g) => g.leader(),
                        None => self.groups().reported_leader(p.group).filter(|n| alive.contains(n)),
                    };
                    PartitionInfo {
                        partition: p.partition,
                        group_id: p.group,
                        leader,
                        replicas: p.replicas.clone(),
                        high_watermark: local.as_ref().map(|g| g.read(|s| s.high_watermark())),
                    }
                })
                .collect(),
        }
    }

    /// Brokers and the named topics (all when `topics` is empty). Unknown names are
    /// returned as errors per topic.
    pub fn metadata(&self, topics: &[String]) -> (Vec<BrokerInfo>, Vec<Result<TopicInfo, ApiError>>, Option<NodeId>) {
        let all: Vec<Topic> = self.with_metadata(|m| m.topics().values().cloned().collect());
        let views = if topics.is_empty() {
            all.iter().map(|t| Ok(self.topic_view(t))).collect()
        } else {
            topics
                .iter()
                .map(|name| match all.iter().find(|t| &t.name == name) {
                    Some(t) => Ok(self.topic_view(t)),
                    None => Err(ApiError::new(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist"))),
                })
                .collect()
        };
        (self.broker_views(), views, self.metadata_group().leader())
    }

    fn broker_views(&self) -> Vec<BrokerInfo> {
        let members = self.metadata_group().membership();
        let voters = members.voters();
        self.with_metadata(|m| {
            let load = m.replica_load();
            m.brokers()
                .values()
                .map(|b| {
                    let role = if voters.contains(&b.id) {
                        "voter"
                    } else if members.learners.contains(&b.id) {
                        "learner"
                    } else {
                        "none"
                    };
                    let l = load.get(&b.id).copied().unwrap_or_default();
                    BrokerInfo {
                        id: b.id,
                        addr: b.addr.clone(),
                        region: b.labels.region.clone(),
                        zone: b.labels.zone.clone(),
                        rack: b.labels.rack.clone(),
                        state: b.state_name().to_string(),
                        role: role.to_string(),
                        replicas: l.replicas,
                        preferred_leaders: l.leaders,
                        rpc_addr: b.rpc_address().to_string(),
                    }
                })
                .collect()
        })
    }

    /// Issues an idempotent producer its id and epoch through the metadata group; with a
    /// `name`, the name's id at its next epoch (fencing earlier instances).
    pub async fn init_producer(&self, name: Option<String>) -> Result<(u64, u16), ApiError> {
        match self.metadata_write(MetaCommand::InitProducer { name }).await? {
            MetaResponse::Producer { id, epoch } => Ok((id, epoch)),
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }

    pub(crate) async fn metadata_write(&self, cmd: MetaCommand) -> Result<MetaResponse, ApiError> {
        let group = self.metadata_group();
        match group.write_or_forward(self.groups().router(), cmd, self.produce_timeout()).await {
            Ok(MetaResponse::Error { code, message }) => Err(ApiError::new(code, message)),
            Ok(r) => Ok(r),
            Err(e) => Err(self.write_error(e, "the metadata group")),
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        policy: TopicPolicy,
    ) -> Result<TopicInfo, ApiError> {
        // The name, counts and policy are checked where the command is applied (the
        // metadata state machine), so every way in gets the same answer.
        let cmd = MetaCommand::CreateTopic { name: name.to_string(), partitions, replication_factor, policy };
        let deadline = tokio::time::Instant::now() + CREATE_TOPIC_FORMING_WAIT;
        loop {
            let e = match self.metadata_write(cmd.clone()).await {
                Ok(MetaResponse::TopicCreated(t)) => return Ok(self.topic_view(&t)),
                Ok(other) => return Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
                Err(e) => e,
            };
            // Too few brokers while the cluster is still forming: wait for the next
            // registration and try again, up to the deadline.
            let missing = self.unregistered_members();
            if e.code != ErrorCode::PolicyViolation || missing.is_empty() {
                return Err(e);
            }
            loop {
                if tokio::time::Instant::now() >= deadline {
                    let ids = missing.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ");
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the cluster is still forming: node(s) {ids} of the metadata group have not registered \
                             yet, and {} (retry shortly)",
                            e.message
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.unregistered_members().len() < missing.len() {
                    break;
                }
            }
        }
    }

    /// Members of the metadata group (voters and learners) that have not registered as
    /// brokers yet: while there are any, the cluster is still forming.
    fn unregistered_members(&self) -> Vec<NodeId> {
        let members = self.metadata_group().membership();
        let mut all = members.voters();
        all.extend(members.learners.iter().copied());
        self.with_metadata(|m| all.into_iter().filter(|id| !m.brokers().contains_key(id)).collect())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        self.metadata_write(MetaCommand::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    pub fn list_topics(&self) -> Vec<(String, u32, u32)> {
        self.with_metadata(|m| {
            m.topics().values().map(|t| (t.name.clone(), t.partitions.len() as u32, t.replication_factor)).collect()
        })
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, ApiError> {
        let t = self.with_metadata(|m| m.topic(name).cloned());
        t.map(|t| self.topic_view(&t))
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist")))
    }

    pub fn describe_cluster(&self) -> ClusterView {
        let topics: Vec<Topic> = self.with_metadata(|m| m.topics().values().cloned().collect());
        ClusterView {
            brokers: self.broker_views(),
            metadata_leader: self.metadata_group().leader(),
            topics: topics.iter().map(|t| self.topic_view(t)).collect(),
            answered_by: self.id(),
            now_ms: self.inner.clock.now_ms(),
        }
    }
}
