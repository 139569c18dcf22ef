//! Consumer groups (RFC 0005): a [`GroupConsumer`] reads the partitions its group's
//! coordinator assigns it, and the admin calls that list, describe, delete and reset
//! groups.
//!
//! A group consumer runs two kinds of background tasks: one heartbeat task, which tells
//! the coordinator what the member reads and brings back its assignment, and one fetch
//! task per partition it reads, which long-polls the partition and queues what it gets.
//! Everything that changes what the member reads happens in [`GroupConsumer::poll`], on
//! the caller's task: partitions being revoked are committed (with auto-commit) and
//! stopped there, and only then does the next heartbeat release them to their new owner;
//! new partitions start at their committed offset. A member that does not call `poll`
//! for `max_poll_interval` leaves the group, as in Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::{request, v1};
use flotilla_types::{Assignor, ErrorCode, Offset, PartitionId, Record, limits};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::config::ConsumerConfig;
use crate::consumer::OffsetReset;
use crate::error::Result;
use crate::router::Kind;
use crate::wire::{admin, answered, flotilla, refused, rpc_err};

/// A topic and one of its partitions.
pub type TopicPartition = (String, PartitionId);

/// How a [`GroupConsumer`] takes part in its group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The coordinator evicts the member when it has not heard from it for this long
    /// (1 s to 5 min; default 10 s).
    pub session_timeout: Duration,
    /// Commit the positions of what `poll` returned this often, and before a partition is
    /// given up or the consumer closes; `None`: only by [`GroupConsumer::commit`].
    pub auto_commit_interval: Option<Duration>,
    /// Where a partition without a committed offset starts, and where a position no
    /// longer in the partition goes: `Earliest` (the default) or `Latest`. `None` fails
    /// the poll with `OFFSET_OUT_OF_RANGE` instead.
    pub auto_offset_reset: OffsetReset,
    /// Chosen by the group's first member.
    pub assignor: Assignor,
    /// The member's zone; defaults to [`crate::ClientConfig::zone`]. The uniform
    /// assignor prefers partitions with a replica in it.
    pub zone: Option<String>,
    /// Shown by `flotilla group describe`.
    pub client_id: String,
    /// A member that does not call `poll` for this long leaves the group (its partitions
    /// go to the others) and joins again at its next poll. Default 5 min.
    pub max_poll_interval: Duration,
    /// How a partition is fetched.
    pub fetch: ConsumerConfig,
    /// How long one fetch waits for new records (long poll). Default 500 ms.
    pub fetch_max_wait: Duration,
    /// Fetched answers queued per member before fetch tasks wait for `poll`. Default 64.
    pub queued_fetches: usize,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            session_timeout: Duration::from_millis(u64::from(limits::SESSION_TIMEOUT_MS_DEFAULT)),
            auto_commit_interval: Some(Duration::from_secs(5)),
            auto_offset_reset: OffsetReset::Earliest,
            assignor: Assignor::Uniform,
            zone: None,
            client_id: "flotilla-rust".into(),
            max_poll_interval: Duration::from_secs(300),
            fetch: ConsumerConfig::default(),
            fetch_max_wait: Duration::from_millis(500),
            queued_fetches: 64,
        }
    }
}

/// A record read by a group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    pub record: Record,
}

/// A change of what the member reads, as [`GroupConsumer::on_assignment`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AssignmentEvent {
    /// The member starts reading these, each from the offset given.
    Assigned(Vec<(TopicPartition, Offset)>),
    /// The member gives these up (their positions were committed with auto-commit).
    Revoked(Vec<TopicPartition>),
    /// These were taken from the member without a hand-over (its session timed out, or
    /// an offset reset moved them); nothing was committed for them.
    Lost(Vec<TopicPartition>),
}

/// The coordinator's last answer, waiting for `poll` to act on it.
#[derive(Debug, Clone, Default)]
struct Answer {
    epoch: u64,
    /// Partition → (granted epoch, committed offset).
    assigned: BTreeMap<TopicPartition, (u64, Option<Offset>)>,
    revoking: BTreeSet<TopicPartition>,
}

/// What the heartbeat task and `poll` share.
#[derive(Default)]
struct Shared {
    member_epoch: u64,
    /// What the member reads: the heartbeat reports it as `owned`.
    owned: BTreeSet<TopicPartition>,
    /// The latest answer not yet acted on.
    pending: Option<Answer>,
    /// The coordinator no longer knows the member (or it left for being idle): drop
    /// everything and join again.
    fenced: bool,
    /// The last `poll`.
    last_poll: Option<Instant>,
    /// Why the heartbeat failed last, for `poll` to report when nothing else works.
    last_error: Option<String>,
    leaving: bool,
}

/// One partition the member reads.
struct Reading {
    granted_epoch: u64,
    /// The next offset `poll` hands out.
    position: Offset,
    /// The last committed offset this member knows of.
    committed: Option<Offset>,
    /// Numbers the fetch task: records of an earlier task of the same partition are dropped.
    generation: u64,
    paused: bool,
    task: Option<JoinHandle<()>>,
}

/// The application's assignment callback.
type Listener = Box<dyn FnMut(&AssignmentEvent) + Send>;

/// What a fetch task queues.
struct Fetched {
    partition: TopicPartition,
    generation: u64,
    records: Result<Vec<(Offset, Record)>>,
}

/// A member of a consumer group: reads the partitions its coordinator assigns it.
/// Create it with [`Client::group_consumer`]; call [`GroupConsumer::poll`] in a loop.
pub struct GroupConsumer {
    client: Client,
    group: String,
    member: String,
    topics: Vec<String>,
    config: GroupConfig,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the heartbeat task for an immediate heartbeat.
    kick: Arc<Notify>,
    heartbeat: JoinHandle<()>,
    reading: BTreeMap<TopicPartition, Reading>,
    /// The member epoch of the last answer acted on: commits are made at it, never at a
    /// newer one whose changes (a partition taken away, an offset reset) `poll` has not
    /// applied yet.
    epoch: u64,
    generation: u64,
    tx: mpsc::Sender<Fetched>,
    rx: mpsc::Receiver<Fetched>,
    last_commit: Instant,
    listener: Option<Listener>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("reading", &self.reading.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Client {
    /// Joins consumer group `group` as a new member reading `topics`, and returns it once
    /// the coordinator answered the join. Records come from [`GroupConsumer::poll`].
    pub async fn group_consumer(&self, group: &str, topics: &[&str], config: GroupConfig) -> Result<GroupConsumer> {
        let member = format!("{}-{:016x}", config.client_id.chars().take(40).collect::<String>(), {
            let mut rng = self.inner.rng.lock().expect("rng poisoned");
            rng.random::<u64>()
        });
        let mut config = config;
        if config.zone.is_none() {
            config.zone = self.config().zone.clone();
        }
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let probe = heartbeat_request(group, &member, 0, &topics, &config, Vec::new(), false);
        request::GroupHeartbeat::try_from(probe).map_err(refused)?;
        let shared = Arc::new(Mutex::new(Shared { last_poll: Some(Instant::now()), ..Shared::default() }));
        // The join itself, before returning: a bad subscription fails here.
        let answer = self.heartbeat(heartbeat_request(group, &member, 0, &topics, &config, Vec::new(), false)).await?;
        {
            let mut s = shared.lock().expect("group state poisoned");
            s.member_epoch = answer.0.epoch;
            s.pending = Some(answer.0);
        }
        let kick = Arc::new(Notify::new());
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.clone(),
            group.to_string(),
            member.clone(),
            topics.clone(),
            config.clone(),
            shared.clone(),
            kick.clone(),
            Duration::from_millis(u64::from(answer.1)),
        ));
        let (tx, rx) = mpsc::channel(config.queued_fetches.max(1));
        Ok(GroupConsumer {
            client: self.clone(),
            group: group.to_string(),
            member,
            topics,
            config,
            shared,
            kick,
            heartbeat,
            reading: BTreeMap::new(),
            epoch: 0,
            generation: 0,
            tx,
            rx,
            last_commit: Instant::now(),
            listener: None,
        })
    }

    /// One heartbeat at the coordinator: the answer and the heartbeat interval (ms).
    async fn heartbeat(&self, req: v1::GroupHeartbeatRequest) -> Result<(Answer, u32)> {
        let kind = Kind::Write { retry_indeterminate: true };
        let r =
            self.inner.to_coordinator(kind, req, |ch, r| async move { flotilla(ch).group_heartbeat(r).await }).await?;
        let revoking = r.revoking.into_iter().map(|tp| (tp.topic, tp.partition)).collect();
        let assigned = r
            .assigned
            .into_iter()
            .map(|a| ((a.topic, a.partition), (a.granted_epoch, a.has_committed.then_some(a.committed_offset))))
            .collect();
        let interval = r.heartbeat_interval_ms.clamp(100, limits::GROUP_HEARTBEAT_MS * 10);
        Ok((Answer { epoch: r.member_epoch, assigned, revoking }, interval))
    }

    /// Commits offsets of `group`: as member `member` at its epoch, or with `None` from
    /// outside the group (refused while it has members). Answers the committed offsets
    /// after the commit (a partition's committed offset never goes down: a lower one is
    /// ignored).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<Vec<(TopicPartition, Offset)>> {
        let req = v1::CommitOffsetsRequest {
            group: group.to_string(),
            member_id: member.map(|m| m.0.to_string()).unwrap_or_default(),
            member_epoch: member.map_or(0, |m| m.1),
            offsets: offsets_to_wire(offsets),
        };
        request::CommitOffsets::try_from(req.clone()).map_err(refused)?;
        // Committing the same offsets again changes nothing: safe to retry.
        let kind = Kind::Write { retry_indeterminate: true };
        let r =
            self.inner.to_coordinator(kind, req, |ch, r| async move { flotilla(ch).commit_offsets(r).await }).await?;
        Ok(r.committed.into_iter().map(|c| ((c.topic, c.partition), c.offset)).collect())
    }

    /// Every consumer group, from the coordinator.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let r = self
            .inner
            .to_coordinator(Kind::Read, v1::ListGroupsRequest {}, |ch, r| async move { admin(ch).list_groups(r).await })
            .await?;
        Ok(r.groups
            .into_iter()
            .map(|g| GroupSummary {
                name: g.name,
                members: g.members,
                epoch: g.epoch,
                assignor: g.assignor,
                kind: g.kind,
            })
            .collect())
    }

    /// A group's members, assignments and committed offsets, with each partition's lag
    /// behind its high watermark (records, and seconds behind the newest record).
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo> {
        let req = v1::DescribeGroupRequest { group: group.to_string() };
        request::GroupName::try_from(req.clone()).map_err(refused)?;
        let r = self
            .inner
            .to_coordinator(Kind::Read, req, |ch, r| async move { admin(ch).describe_group(r).await })
            .await?;
        let tp = |v: Vec<v1::TopicPartition>| v.into_iter().map(|t| (t.topic, t.partition)).collect::<Vec<_>>();
        let members: Vec<MemberInfo> = r
            .members
            .into_iter()
            .map(|m| MemberInfo {
                member_id: m.member_id,
                client_id: m.client_id,
                zone: m.zone,
                epoch: m.member_epoch,
                topics: m.topics,
                assigned: tp(m.assigned),
                revoking: tp(m.revoking),
                session_timeout_ms: m.session_timeout_ms,
                heard_ms_ago: m.heard_ms_ago,
            })
            .collect();
        let owner: BTreeMap<TopicPartition, String> =
            members.iter().flat_map(|m| m.assigned.iter().map(|tp| (tp.clone(), m.member_id.clone()))).collect();
        // A share group's partitions are done below their `start`: that is its
        // committed offset.
        let committed: BTreeMap<TopicPartition, Offset> = r
            .offsets
            .into_iter()
            .map(|c| ((c.topic, c.partition), c.offset))
            .chain(r.share_partitions.iter().map(|p| ((p.topic.clone(), p.partition), p.start)))
            .collect();
        let share = (r.kind == "share").then(|| ShareInfo {
            config: r.share_config.and_then(|c| request::share_config(Some(c)).ok()).unwrap_or_default(),
            accepted: r.accepted,
            dead_lettered: r.dead_lettered,
            partitions: r
                .share_partitions
                .iter()
                .map(|p| SharePartitionInfo {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    start: p.start,
                    end: p.end,
                    held: p.held,
                    free: p.free,
                    dead: p.dead,
                })
                .collect(),
        });
        // Every partition of the subscribed topics, and every partition with an offset.
        let mut partitions: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
        let topics: BTreeSet<&String> = members.iter().flat_map(|m| &m.topics).collect();
        for t in topics {
            if let Ok(info) = self.describe_topic(t).await {
                partitions.extend(info.partitions.iter().map(|p| (t.clone(), p.partition)));
            }
        }
        let mut lags = Vec::with_capacity(partitions.len());
        for tp in partitions {
            let committed = committed.get(&tp).copied();
            let (end, lag_seconds) = match self.list_offsets(&tp.0, tp.1).await {
                Ok((start, end)) => {
                    let next = committed.unwrap_or(start).max(start);
                    (Some(end), self.seconds_behind(&tp, next, end).await)
                }
                Err(_) => (None, None),
            };
            lags.push(PartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                member: owner.get(&tp).cloned(),
                committed,
                high_watermark: end,
                lag: end.map(|e| e.saturating_sub(committed.unwrap_or(0))),
                lag_seconds,
            });
        }
        let kind = if r.kind.is_empty() { "consumer".to_string() } else { r.kind };
        Ok(GroupInfo { group: r.group, kind, epoch: r.epoch, assignor: r.assignor, members, partitions: lags, share })
    }

    /// How far the first record not yet read (at `next`) is behind now, in seconds: 0 when
    /// everything is read; `None` when it cannot be read.
    async fn seconds_behind(&self, tp: &TopicPartition, next: Offset, end: Offset) -> Option<f64> {
        if next >= end {
            return Some(0.0);
        }
        let resp = self.inner.fetch(&tp.0, tp.1, next, 1, Duration::ZERO).await.ok()?;
        let fetched = resp.batches.first()?;
        let batch = fetched.decode().ok()?;
        let skip = next.saturating_sub(fetched.base_offset) as usize;
        let ts = batch.records().into_iter().nth(skip).map(|r| r.timestamp_ms)?;
        let now = self.inner.now_ms();
        Some(now.saturating_sub(ts) as f64 / 1000.0)
    }

    /// Deletes a group without members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = v1::DeleteGroupRequest { group: group.to_string() };
        request::GroupName::try_from(req.clone()).map_err(refused)?;
        self.admin_write(false, move |ch, addr| {
            let req = req.clone();
            async move { answered(&addr, &admin(ch).delete_group(req).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }

    /// Sets a group's committed offsets, also while its members read: each member holding
    /// a reset partition seeks to the new offset at its next heartbeat (within a second),
    /// and its commits of the old position are refused.
    pub async fn reset_offsets(&self, group: &str, offsets: &[(TopicPartition, Offset)]) -> Result<()> {
        let req = v1::ResetOffsetsRequest { group: group.to_string(), offsets: offsets_to_wire(offsets) };
        request::ResetOffsets::try_from(req.clone()).map_err(refused)?;
        self.admin_write(true, move |ch, addr| {
            let req = req.clone();
            async move { answered(&addr, &admin(ch).reset_offsets(req).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }
}

/// A group in `list_groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    pub name: String,
    pub members: u32,
    pub epoch: u64,
    pub assignor: String,
    /// "consumer" or "share".
    pub kind: String,
}

/// A member in [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub member_id: String,
    pub client_id: String,
    pub zone: String,
    pub epoch: u64,
    pub topics: Vec<String>,
    pub assigned: Vec<TopicPartition>,
    pub revoking: Vec<TopicPartition>,
    pub session_timeout_ms: u32,
    /// Since the coordinator last heard from it.
    pub heard_ms_ago: u64,
}

/// A partition's committed offset and lag in [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: PartitionId,
    /// The member reading it, if any.
    pub member: Option<String>,
    pub committed: Option<Offset>,
    pub high_watermark: Option<Offset>,
    /// Records between the committed offset and the high watermark.
    pub lag: Option<u64>,
    /// How old the first record not committed is (0 when none is left).
    pub lag_seconds: Option<f64>,
}

/// A group as `describe_group` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupInfo {
    pub group: String,
    /// "consumer" or "share".
    pub kind: String,
    pub epoch: u64,
    pub assignor: String,
    pub members: Vec<MemberInfo>,
    /// For a share group, `committed` is the offset below which every record is done.
    pub partitions: Vec<PartitionLag>,
    /// A share group's configuration and records in flight.
    pub share: Option<ShareInfo>,
}

/// A share group's state in [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareInfo {
    pub config: flotilla_types::group::ShareConfig,
    /// Records accepted, and written to the dead-letter topic, since the group was created.
    pub accepted: u64,
    pub dead_lettered: u64,
    pub partitions: Vec<SharePartitionInfo>,
}

/// One partition of a share group: every offset below `start` is done, offsets from
/// `end` were never handed out; in between, records held by a member, free to be given
/// (again), and dead (waiting for the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharePartitionInfo {
    pub topic: String,
    pub partition: PartitionId,
    pub start: Offset,
    pub end: Offset,
    pub held: u32,
    pub free: u32,
    pub dead: u32,
}

/// Offsets as the commit and reset requests carry them (no metadata).
fn offsets_to_wire(offsets: &[(TopicPartition, Offset)]) -> Vec<v1::OffsetCommit> {
    offsets
        .iter()
        .map(|((topic, partition), offset)| v1::OffsetCommit {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            metadata: String::new(),
        })
        .collect()
}

fn heartbeat_request(
    group: &str,
    member: &str,
    epoch: u64,
    topics: &[String],
    config: &GroupConfig,
    owned: Vec<TopicPartition>,
    leave: bool,
) -> v1::GroupHeartbeatRequest {
    v1::GroupHeartbeatRequest {
        group: group.to_string(),
        member_id: member.to_string(),
        member_epoch: epoch,
        leave,
        topics: topics.to_vec(),
        client_id: config.client_id.chars().take(limits::MEMBER_ID_BYTES_MAX).collect(),
        zone: config.zone.clone().unwrap_or_default(),
        session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
        assignor: config.assignor.name().to_string(),
        owned: owned.into_iter().map(|(topic, partition)| v1::TopicPartition { topic, partition }).collect(),
    }
}

/// Heartbeats every interval (at once when kicked) with what the member reads; leaves
/// pending answers for `poll`. Leaves the group when `poll` was not called within
/// `max_poll_interval`, and joins again once it is.
#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    client: Client,
    group: String,
    member: String,
    topics: Vec<String>,
    config: GroupConfig,
    shared: Arc<Mutex<Shared>>,
    kick: Arc<Notify>,
    mut interval: Duration,
) {
    let mut last_ok = Instant::now();
    let mut idle_left = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = kick.notified() => {}
        }
        let (epoch, owned, fenced, idle, leaving) = {
            let s = shared.lock().expect("group state poisoned");
            let idle = s.last_poll.is_some_and(|t| t.elapsed() > config.max_poll_interval);
            (s.member_epoch, s.owned.iter().cloned().collect::<Vec<_>>(), s.fenced, idle, s.leaving)
        };
        if leaving {
            return;
        }
        if idle {
            if !idle_left {
                let req = heartbeat_request(&group, &member, epoch, &topics, &config, Vec::new(), true);
                let _ = client.heartbeat(req).await;
                tracing::warn!(group, member, "left the group: poll not called within max_poll_interval");
                let mut s = shared.lock().expect("group state poisoned");
                s.fenced = true;
                s.member_epoch = 0;
                idle_left = true;
            }
            continue;
        }
        idle_left = false;
        // A fenced member joins again only once `poll` dropped what it read.
        let epoch = if fenced { 0 } else { epoch };
        if fenced && !owned.is_empty() {
            continue;
        }
        let req = heartbeat_request(&group, &member, epoch, &topics, &config, owned, false);
        // One heartbeat (with its retries) for at most a session: past it the member is
        // evicted anyway, and must stop reading.
        let answered = tokio::time::timeout(config.session_timeout, client.heartbeat(req)).await.unwrap_or_else(|_| {
            Err(crate::error::ClientError::Timeout {
                addr: "the group coordinator".into(),
                after: config.session_timeout,
            })
        });
        match answered {
            Ok((answer, ms)) => {
                interval = Duration::from_millis(u64::from(ms));
                last_ok = Instant::now();
                let mut s = shared.lock().expect("group state poisoned");
                if s.fenced && epoch != 0 {
                    continue;
                }
                s.fenced = false;
                s.member_epoch = answer.epoch;
                s.pending = Some(answer);
                s.last_error = None;
            }
            Err(e) => {
                let mut s = shared.lock().expect("group state poisoned");
                if e.code() == Some(ErrorCode::UnknownMember) {
                    s.fenced = true;
                    s.member_epoch = 0;
                } else if last_ok.elapsed() > config.session_timeout {
                    // The coordinator has surely evicted us: stop reading, join again.
                    s.fenced = true;
                    s.member_epoch = 0;
                }
                s.last_error = Some(e.to_string());
                interval = Duration::from_millis(200);
            }
        }
    }
}

impl GroupConsumer {
    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This member's id (chosen at creation, kept across rejoins).
    pub fn member_id(&self) -> &str {
        &self.member
    }

    /// The member epoch of the assignment the member reads under (the last answer `poll`
    /// acted on): the epoch its commits are made at.
    pub fn member_epoch(&self) -> u64 {
        self.epoch
    }

    /// The partitions the member reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.reading.keys().cloned().collect()
    }

    /// The epoch each partition read was granted at (it rises when the partition is
    /// granted to this member again, as after an offset reset).
    pub fn grants(&self) -> BTreeMap<TopicPartition, u64> {
        self.reading.iter().map(|(tp, r)| (tp.clone(), r.granted_epoch)).collect()
    }

    /// The next offset `poll` returns of each partition read.
    pub fn positions(&self) -> BTreeMap<TopicPartition, Offset> {
        self.reading.iter().map(|(tp, r)| (tp.clone(), r.position)).collect()
    }

    /// Called, on the task that calls `poll`, each time partitions are assigned, revoked
    /// or lost, before `poll` returns records of a newly assigned partition and after a
    /// revoked one's position was committed.
    pub fn on_assignment(&mut self, listener: impl FnMut(&AssignmentEvent) + Send + 'static) {
        self.listener = Some(Box::new(listener));
    }

    /// Moves the position of a partition the member reads: the next `poll` returns its
    /// records from `offset` (what was fetched beyond is dropped), and the next commit
    /// commits `offset`. For records `poll` returned that the application did not process.
    /// False when the member does not read the partition.
    pub fn seek(&mut self, topic: &str, partition: PartitionId, offset: Offset) -> bool {
        let tp = (topic.to_string(), partition);
        let Some(r) = self.reading.get_mut(&tp) else { return false };
        r.position = offset;
        if !r.paused {
            self.start_fetching(&tp);
        }
        true
    }

    /// Stops fetching a partition (it stays assigned); `resume` goes on from its position.
    pub fn pause(&mut self, topic: &str, partition: PartitionId) {
        if let Some(r) = self.reading.get_mut(&(topic.to_string(), partition)) {
            r.paused = true;
            if let Some(t) = r.task.take() {
                t.abort();
            }
        }
    }

    pub fn resume(&mut self, topic: &str, partition: PartitionId) {
        let tp = (topic.to_string(), partition);
        if self.reading.get(&tp).is_some_and(|r| r.paused) {
            self.reading.get_mut(&tp).expect("checked").paused = false;
            self.start_fetching(&tp);
        }
    }

    fn emit(&mut self, event: AssignmentEvent) {
        if let Some(l) = self.listener.as_mut() {
            l(&event);
        }
    }

    fn start_fetching(&mut self, tp: &TopicPartition) {
        self.generation += 1;
        let generation = self.generation;
        let Some(r) = self.reading.get_mut(tp) else { return };
        if let Some(t) = r.task.take() {
            t.abort();
        }
        r.generation = generation;
        let mut config = self.config.fetch.clone();
        config.offset_reset = self.config.auto_offset_reset;
        let consumer =
            crate::consumer::Consumer::new(self.client.inner.clone(), tp.0.clone(), tp.1, r.position, config);
        let (tx, wait, partition) = (self.tx.clone(), self.config.fetch_max_wait, tp.clone());
        r.task = Some(tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let records = consumer
                    .poll(wait)
                    .await
                    .map(|rs| rs.into_iter().map(|r| (r.offset, r.record)).collect::<Vec<_>>());
                let failed = records.is_err();
                let empty = records.as_ref().is_ok_and(|r| r.is_empty());
                if !empty && tx.send(Fetched { partition: partition.clone(), generation, records }).await.is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }

    /// Acts on the coordinator's latest answer: drops what was taken away, commits and
    /// stops what is being revoked, starts what is new. Kicks a heartbeat when the
    /// member released something, so the next owner gets it at once.
    async fn reconcile(&mut self) -> Result<()> {
        let (pending, fenced) = {
            let mut s = self.shared.lock().expect("group state poisoned");
            s.last_poll = Some(Instant::now());
            (s.pending.take(), s.fenced)
        };
        if fenced {
            let lost: Vec<TopicPartition> = self.reading.keys().cloned().collect();
            self.stop(&lost);
            if !lost.is_empty() {
                self.emit(AssignmentEvent::Lost(lost));
                self.kick.notify_one();
            }
            return Ok(());
        }
        let Some(answer) = pending else { return Ok(()) };
        self.epoch = answer.epoch;
        // Taken away without a hand-over, or granted again (an offset reset): stop now.
        let lost: Vec<TopicPartition> = self
            .reading
            .iter()
            .filter(|(tp, r)| answer.assigned.get(*tp).is_none_or(|(granted, _)| *granted != r.granted_epoch))
            .map(|(tp, _)| tp.clone())
            .collect();
        self.stop(&lost);
        if !lost.is_empty() {
            self.emit(AssignmentEvent::Lost(lost.clone()));
        }
        // Revoked: commit what was read, stop, and release at the next heartbeat.
        let revoked: Vec<TopicPartition> =
            self.reading.keys().filter(|tp| answer.revoking.contains(*tp)).cloned().collect();
        if !revoked.is_empty() {
            if self.config.auto_commit_interval.is_some() {
                let epoch = answer.epoch;
                if let Err(e) = self.commit_partitions(&revoked, epoch).await {
                    tracing::warn!(group = self.group, error = %e, "commit of revoked partitions failed");
                }
            }
            self.stop(&revoked);
            self.emit(AssignmentEvent::Revoked(revoked));
        }
        // New: from the committed offset, or by the reset policy.
        let mut assigned = Vec::new();
        for (tp, (granted, committed)) in &answer.assigned {
            if answer.revoking.contains(tp) || self.reading.contains_key(tp) {
                continue;
            }
            let position = match committed {
                Some(o) => *o,
                None => match self.config.auto_offset_reset {
                    OffsetReset::Latest => self.client.list_offsets(&tp.0, tp.1).await?.1,
                    _ => self.client.list_offsets(&tp.0, tp.1).await?.0,
                },
            };
            self.reading.insert(
                tp.clone(),
                Reading {
                    granted_epoch: *granted,
                    position,
                    committed: *committed,
                    generation: 0,
                    paused: false,
                    task: None,
                },
            );
            self.start_fetching(tp);
            assigned.push((tp.clone(), position));
        }
        // Every revoking partition is stopped now: the next heartbeat releases them.
        let released = !answer.revoking.is_empty();
        self.publish_owned();
        if !assigned.is_empty() {
            self.emit(AssignmentEvent::Assigned(assigned));
        }
        if released {
            self.kick.notify_one();
        }
        Ok(())
    }

    fn stop(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(mut r) = self.reading.remove(tp)
                && let Some(t) = r.task.take()
            {
                t.abort();
            }
        }
        self.publish_owned();
    }

    fn publish_owned(&self) {
        self.shared.lock().expect("group state poisoned").owned = self.reading.keys().cloned().collect();
    }

    /// Records of the assigned partitions, waiting up to `max_wait` for some. Acts on
    /// assignment changes first (see the module's doc), and commits on the auto-commit
    /// interval.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<GroupRecord>> {
        self.reconcile().await?;
        if let Some(every) = self.config.auto_commit_interval
            && self.last_commit.elapsed() >= every
        {
            self.last_commit = Instant::now();
            match self.commit().await {
                Ok(()) => {}
                Err(e)
                    if e.code() == Some(ErrorCode::StaleMemberEpoch) || e.code() == Some(ErrorCode::UnknownMember) =>
                {
                    // The assignment changed: the next reconcile takes the new one.
                }
                Err(e) => tracing::warn!(group = self.group, error = %e, "auto-commit failed"),
            }
        }
        let deadline = Instant::now() + max_wait;
        let mut out = Vec::new();
        loop {
            let next = match out.is_empty() {
                true => tokio::time::timeout_at(deadline, self.rx.recv()).await.ok().flatten(),
                false => self.rx.try_recv().ok(),
            };
            let Some(f) = next else { break };
            let Some(r) = self.reading.get_mut(&f.partition) else { continue };
            if r.generation != f.generation || r.paused {
                continue;
            }
            match f.records {
                Ok(records) => {
                    for (offset, record) in records {
                        if offset < r.position {
                            continue;
                        }
                        r.position = offset + 1;
                        out.push(GroupRecord {
                            topic: f.partition.0.clone(),
                            partition: f.partition.1,
                            offset,
                            record,
                        });
                    }
                }
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
            // Something changed meanwhile: act on it before handing out more.
            if self.shared.lock().expect("group state poisoned").pending.is_some() {
                break;
            }
        }
        if out.is_empty() && self.reading.is_empty() {
            let error = self.shared.lock().expect("group state poisoned").last_error.clone();
            if let Some(e) = error {
                tracing::debug!(group = self.group, error = e, "no assignment; the coordinator is not answering");
            }
        }
        Ok(out)
    }

    /// Commits the position of every partition read (what `poll` returned), waiting for
    /// the coordinator's answer. After `STALE_MEMBER_EPOCH` (the assignment changed) it
    /// takes the new assignment and commits again what is still held.
    pub async fn commit(&mut self) -> Result<()> {
        let all: Vec<TopicPartition> = self.reading.keys().cloned().collect();
        let epoch = self.member_epoch();
        match self.commit_partitions(&all, epoch).await {
            Err(e) if e.code() == Some(ErrorCode::StaleMemberEpoch) => {
                // Take the assignment that made it stale: heartbeat now, wait for the
                // answer (up to two heartbeat intervals), act on it.
                self.kick.notify_one();
                let deadline = Instant::now() + Duration::from_millis(2 * u64::from(limits::GROUP_HEARTBEAT_MS));
                while Instant::now() < deadline && self.shared.lock().expect("group state poisoned").pending.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.reconcile().await?;
                let all: Vec<TopicPartition> = self.reading.keys().cloned().collect();
                let epoch = self.member_epoch();
                self.commit_partitions(&all, epoch).await
            }
            other => other,
        }
    }

    /// Starts committing the current positions and returns at once; the handle answers
    /// how it went.
    pub fn commit_async(&mut self) -> JoinHandle<Result<()>> {
        let offsets = self.uncommitted(&self.reading.keys().cloned().collect::<Vec<_>>());
        let (client, group, member, epoch) =
            (self.client.clone(), self.group.clone(), self.member.clone(), self.member_epoch());
        for (tp, o) in &offsets {
            if let Some(r) = self.reading.get_mut(tp) {
                r.committed = Some(*o);
            }
        }
        tokio::spawn(async move {
            if offsets.is_empty() {
                return Ok(());
            }
            client.commit_offsets(&group, Some((&member, epoch)), &offsets).await.map(drop)
        })
    }

    /// Positions not committed yet.
    fn uncommitted(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, Offset)> {
        partitions
            .iter()
            .filter_map(|tp| self.reading.get(tp).map(|r| (tp, r)))
            .filter(|(_, r)| r.committed != Some(r.position))
            .map(|(tp, r)| (tp.clone(), r.position))
            .collect()
    }

    async fn commit_partitions(&mut self, partitions: &[TopicPartition], epoch: u64) -> Result<()> {
        let offsets = self.uncommitted(partitions);
        if offsets.is_empty() {
            return Ok(());
        }
        let committed = self.client.commit_offsets(&self.group, Some((&self.member, epoch)), &offsets).await?;
        for (tp, o) in committed {
            if let Some(r) = self.reading.get_mut(&tp) {
                // Where a later commit won, our position is behind the group's: keep ours.
                r.committed = Some(o.min(r.position));
            }
        }
        Ok(())
    }

    /// Commits (with auto-commit), stops fetching and leaves the group: its partitions go
    /// to the other members at once.
    pub async fn close(mut self) -> Result<()> {
        let committed = match self.config.auto_commit_interval {
            Some(_) => self.commit().await,
            None => Ok(()),
        };
        let all: Vec<TopicPartition> = self.reading.keys().cloned().collect();
        self.stop(&all);
        self.shared.lock().expect("group state poisoned").leaving = true;
        self.heartbeat.abort();
        let req = heartbeat_request(&self.group, &self.member, 0, &self.topics, &self.config, Vec::new(), true);
        let left = self.client.heartbeat(req).await.map(drop);
        committed.and(left)
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
        for r in self.reading.values_mut() {
            if let Some(t) = r.task.take() {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_request_is_what_the_server_accepts() {
        let config = GroupConfig { zone: Some("z1".into()), ..GroupConfig::default() };
        let req = heartbeat_request("g", "m-1", 0, &["t".into()], &config, vec![("t".into(), 3)], false);
        let checked = request::GroupHeartbeat::try_from(req).unwrap();
        assert_eq!(checked.session_timeout_ms, limits::SESSION_TIMEOUT_MS_DEFAULT);
        assert_eq!(checked.owned, vec![("t".to_string(), 3)]);
        assert_eq!(checked.zone, "z1");
    }
}
