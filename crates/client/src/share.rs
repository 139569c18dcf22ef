//! Share groups (RFC 0007): a [`ShareConsumer`] reads a topic like a queue. Every member
//! may be given any record; each record is acknowledged on its own (accepted, released
//! for another try, or rejected); a record not acknowledged within the group's lock
//! timeout is given again, and after `max_deliveries`, or when rejected, it goes to the
//! group's dead-letter topic (`<topic>.<group>.dlq`) with headers saying where it came
//! from and why.
//!
//! A poll fetches the partitions itself (from where the coordinator said the next free
//! records are), asks the coordinator to acquire what it fetched, writes the dead-letter
//! tasks it was given to the dead-letter topic, and hands out the rest. Acknowledgements
//! are sent at the next poll, or at once by [`ShareConsumer::commit`]. With
//! [`AckMode::Implicit`] (the default, as Kafka's) a record handed out and not
//! acknowledged by the next poll is accepted then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::{request, v1};
use flotilla_types::group::{ShareAckKind, ShareConfig, ShareStart, key_hash};
use flotilla_types::{ErrorCode, Offset, PartitionId, Record, limits};
use rand::Rng;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::Client;
use crate::config::{ConsumerConfig, ProducerConfig};
use crate::consumer::{Consumer, OffsetReset};
use crate::error::{ClientError, Result};
use crate::group::TopicPartition;
use crate::producer::Producer;
use crate::router::Kind;
use crate::wire::{flotilla, refused};

/// The headers a dead-lettered record carries besides its own.
pub mod dlq_headers {
    pub const TOPIC: &str = "flotilla.dlq.topic";
    pub const PARTITION: &str = "flotilla.dlq.partition";
    pub const OFFSET: &str = "flotilla.dlq.offset";
    pub const DELIVERIES: &str = "flotilla.dlq.deliveries";
    pub const ERROR: &str = "flotilla.dlq.error";
    pub const GROUP: &str = "flotilla.dlq.group";
    /// Every header of the dead-letter topic starts so; `group dlq replay` drops them.
    pub const PREFIX: &str = "flotilla.dlq.";
}

/// When records handed out count as processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// A record not acknowledged by the next poll is accepted then (Kafka's implicit
    /// acknowledgement).
    #[default]
    Implicit,
    /// Only what the application acknowledges is; anything else is given again after
    /// the lock timeout.
    Explicit,
}

/// How a [`ShareConsumer`] takes part in its share group.
#[derive(Debug, Clone)]
pub struct ShareGroupConfig {
    /// Shown by `flotilla group describe`.
    pub client_id: String,
    /// The coordinator evicts the member (and frees what it holds) when it has not heard
    /// from it for this long (1 s to 5 min; default 10 s).
    pub session_timeout: Duration,
    /// The group's configuration, when this member creates the group (later members
    /// take the group's): deliveries before the dead-letter topic, lock timeout, key
    /// order, and where partitions the group never read start.
    pub group: ShareConfig,
    /// Records one poll hands out at most (1 to 1,000; default 500).
    pub max_records: u32,
    /// The dead-letter topic of records of topic T; default `T.<group>.dlq`. It is
    /// created (one partition) when it does not exist.
    pub dead_letter_topic: Option<String>,
    pub ack_mode: AckMode,
    /// How long one poll waits for records. Default 500 ms.
    pub fetch_max_wait: Duration,
}

impl Default for ShareGroupConfig {
    fn default() -> ShareGroupConfig {
        ShareGroupConfig {
            client_id: "flotilla-rust".into(),
            session_timeout: Duration::from_millis(u64::from(limits::SESSION_TIMEOUT_MS_DEFAULT)),
            group: ShareConfig::default(),
            max_records: 500,
            dead_letter_topic: None,
            ack_mode: AckMode::Implicit,
            fetch_max_wait: Duration::from_millis(500),
        }
    }
}

/// A record given to a share group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    pub record: Record,
    /// Times the group gave it out, this time included.
    pub deliveries: u32,
}

/// Acknowledgements the coordinator did not apply (the member's lock had timed out and
/// the record was, or will be, given again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    pub applied: usize,
    pub refused: Vec<(TopicPartition, Offset, String)>,
}

/// A member of a share group. Create it with [`Client::share_consumer`]; call
/// [`ShareConsumer::poll`] in a loop and acknowledge what it returns.
pub struct ShareConsumer {
    client: Client,
    group: String,
    member: String,
    topics: Vec<String>,
    config: ShareGroupConfig,
    /// The group's configuration, as the coordinator last said.
    group_config: Arc<Mutex<ShareConfig>>,
    heartbeat: JoinHandle<()>,
    /// Where to fetch each partition next, as the coordinator said (after an acquire, or
    /// in a heartbeat naming records to give again).
    next: Arc<Mutex<BTreeMap<TopicPartition, Offset>>>,
    /// Handed out and not acknowledged yet.
    outstanding: BTreeSet<(TopicPartition, Offset)>,
    pending: Vec<(TopicPartition, Offset, ShareAckKind)>,
    /// Where the poll before started looking, so partitions take turns.
    turn: usize,
    dead_letters: BTreeMap<String, Producer>,
    /// Every acknowledgement refused so far.
    refused_total: u64,
    /// The number of the member's last acquisition or acknowledgement request. A
    /// request's retries keep its number, so the coordinator answers them as it answered
    /// the first attempt instead of applying them again.
    seq: u64,
    /// The acknowledgement request whose outcome is unknown (its number and how many of
    /// `pending` it carried): the next commit sends it again, unchanged.
    unanswered: Option<(u64, usize)>,
}

impl std::fmt::Debug for ShareConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareConsumer").field("group", &self.group).field("member", &self.member).finish()
    }
}

fn heartbeat_request(
    group: &str,
    member: &str,
    topics: &[String],
    config: &ShareGroupConfig,
    leave: bool,
) -> v1::ShareHeartbeatRequest {
    v1::ShareHeartbeatRequest {
        group: group.to_string(),
        member_id: member.to_string(),
        leave,
        topics: topics.to_vec(),
        client_id: config.client_id.clone(),
        session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
        config: Some(request::share_config_to_wire(&config.group)),
    }
}

/// The dead-letter topic of `topic`'s records in `group`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.dlq")
}

impl Client {
    /// Joins share group `group` as a new member reading `topics`, and returns it once the
    /// coordinator answered the join.
    pub async fn share_consumer(
        &self,
        group: &str,
        topics: &[&str],
        config: ShareGroupConfig,
    ) -> Result<ShareConsumer> {
        let member = format!("{}-{:016x}", config.client_id.chars().take(40).collect::<String>(), {
            let mut rng = self.inner.rng.lock().expect("rng poisoned");
            rng.random::<u64>()
        });
        if !(1..=limits::SHARE_ACQUIRE_MAX as u32).contains(&config.max_records) {
            return Err(invalid(format!(
                "max_records {} is outside 1..={}",
                config.max_records,
                limits::SHARE_ACQUIRE_MAX
            )));
        }
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        for t in &topics {
            let dlq = config.dead_letter_topic.clone().unwrap_or_else(|| dead_letter_topic(t, group));
            limits::check_topic_name(&dlq).map_err(|e| invalid(format!("dead-letter topic: {e}")))?;
        }
        let req = heartbeat_request(group, &member, &topics, &config, false);
        request::ShareHeartbeat::try_from(req.clone()).map_err(refused)?;
        let beat = self.share_heartbeat(req).await?;
        let group_config = Arc::new(Mutex::new(beat.config));
        let next = Arc::new(Mutex::new(BTreeMap::new()));
        let heartbeat = {
            let (client, group, member, topics, config, shared, next) = (
                self.clone(),
                group.to_string(),
                member.clone(),
                topics.clone(),
                config.clone(),
                group_config.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut every = Duration::from_millis(u64::from(beat.interval_ms));
                loop {
                    tokio::time::sleep(every).await;
                    match client.share_heartbeat(heartbeat_request(&group, &member, &topics, &config, false)).await {
                        Ok(beat) => {
                            *shared.lock().expect("share config poisoned") = beat.config;
                            lower(&next, beat.redeliver);
                            let ms = beat.interval_ms.clamp(100, 10 * limits::GROUP_HEARTBEAT_MS);
                            every = Duration::from_millis(u64::from(ms));
                        }
                        Err(e) => tracing::debug!(group, member, error = %e, "share group heartbeat failed"),
                    }
                }
            })
        };
        Ok(ShareConsumer {
            client: self.clone(),
            group: group.to_string(),
            member,
            topics,
            config,
            group_config,
            heartbeat,
            next,
            outstanding: BTreeSet::new(),
            pending: Vec::new(),
            turn: 0,
            dead_letters: BTreeMap::new(),
            refused_total: 0,
            seq: 0,
            unanswered: None,
        })
    }

    /// One share heartbeat (or join, or leave): the group's configuration and the
    /// heartbeat interval (ms).
    async fn share_heartbeat(&self, req: v1::ShareHeartbeatRequest) -> Result<Beat> {
        let kind = Kind::Write { retry_indeterminate: true };
        let r =
            self.inner.to_coordinator(kind, req, |ch, r| async move { flotilla(ch).share_heartbeat(r).await }).await?;
        let config = request::share_config(r.config).map_err(refused)?;
        let redeliver = r.redeliver.into_iter().map(|n| ((n.topic, n.partition), n.offset)).collect();
        Ok(Beat { config, interval_ms: r.heartbeat_interval_ms.max(100), redeliver })
    }

    async fn share_acquire(&self, req: v1::ShareAcquireRequest) -> Result<v1::ShareAcquireResponse> {
        // A retry after an unknown outcome carries the request's number: the coordinator
        // answers it with what the first attempt granted.
        let kind = Kind::Write { retry_indeterminate: true };
        self.inner.to_coordinator(kind, req, |ch, r| async move { flotilla(ch).share_acquire(r).await }).await
    }

    async fn share_ack(&self, req: v1::ShareAckRequest) -> Result<v1::ShareAckResponse> {
        // A retry carries the request's number: the coordinator answers it as the first
        // attempt, never applies it twice.
        let kind = Kind::Write { retry_indeterminate: true };
        self.inner.to_coordinator(kind, req, |ch, r| async move { flotilla(ch).share_ack(r).await }).await
    }
}

/// The coordinator's answer to a share heartbeat.
struct Beat {
    config: ShareConfig,
    interval_ms: u32,
    /// Partitions with records to give again, and the first of them.
    redeliver: Vec<(TopicPartition, Offset)>,
}

/// Moves the fetch positions back to records the coordinator will give again.
fn lower(next: &Mutex<BTreeMap<TopicPartition, Offset>>, redeliver: Vec<(TopicPartition, Offset)>) {
    let mut next = next.lock().expect("share positions poisoned");
    for (tp, o) in redeliver {
        let at = next.entry(tp).or_insert(o);
        *at = (*at).min(o);
    }
}

/// Whether a lock asked for at `asked` may have run out by `now`: the coordinator starts
/// it later than `asked`, so one not `lock` old by the member's clock still holds.
fn lock_ran_out(asked: Instant, lock: Duration, now: Instant) -> bool {
    now.saturating_duration_since(asked) >= lock
}

/// Records fetched from one partition, to acquire.
struct ToAcquire {
    partition: TopicPartition,
    from: Offset,
    log_start: Offset,
    records: Vec<(Offset, Record)>,
}

/// What one partition's fetch brought.
struct Fetched {
    partition: TopicPartition,
    from: Offset,
    log_start: Offset,
    /// Where the fetch left the position when it was out of the log and was reset.
    reset_to: Option<Offset>,
    records: Result<Vec<(Offset, Record)>>,
}

impl ShareConsumer {
    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn member_id(&self) -> &str {
        &self.member
    }

    /// The group's configuration (its creator's), as the coordinator last said.
    pub fn group_config(&self) -> ShareConfig {
        *self.group_config.lock().expect("share config poisoned")
    }

    /// Acknowledgements the coordinator refused so far (locks that had timed out).
    pub fn refused(&self) -> u64 {
        self.refused_total
    }

    /// Processed: the record is done (sent at the next poll or commit).
    pub fn accept(&mut self, r: &ShareRecord) {
        self.ack(r, ShareAckKind::Accept);
    }

    /// Give the record to a member again (to the dead-letter topic once it was given
    /// `max_deliveries` times), with why.
    pub fn release(&mut self, r: &ShareRecord, error: &str) {
        self.ack(r, ShareAckKind::Release { error: truncate(error) });
    }

    /// Never process the record: it goes to the dead-letter topic, with why.
    pub fn reject(&mut self, r: &ShareRecord, error: &str) {
        self.ack(r, ShareAckKind::Reject { error: truncate(error) });
    }

    fn ack(&mut self, r: &ShareRecord, kind: ShareAckKind) {
        let tp = (r.topic.clone(), r.partition);
        if self.outstanding.remove(&(tp.clone(), r.offset)) {
            self.pending.push((tp, r.offset, kind));
        }
    }

    /// Sends the acknowledgements made so far and waits for the coordinator's answer.
    pub async fn commit(&mut self) -> Result<AckOutcome> {
        if self.config.ack_mode == AckMode::Implicit {
            for (tp, o) in std::mem::take(&mut self.outstanding) {
                self.pending.push((tp, o, ShareAckKind::Accept));
            }
        }
        let mut outcome = AckOutcome::default();
        while !self.pending.is_empty() {
            let (seq, n) = match self.unanswered.take() {
                Some((seq, n)) if n <= self.pending.len() => (seq, n),
                _ => (self.next_seq(), self.pending.len().min(limits::SHARE_ACKS_MAX)),
            };
            let chunk: Vec<_> = self.pending[..n].to_vec();
            let req = v1::ShareAckRequest {
                group: self.group.clone(),
                member_id: self.member.clone(),
                acks: chunk.iter().map(|(tp, o, k)| request::share_ack_to_wire(tp, *o, k)).collect(),
                request_seq: seq,
            };
            match self.client.share_ack(req).await {
                Ok(r) => {
                    self.pending.drain(..n);
                    outcome.applied += n - r.refused.len();
                    self.refused_total += r.refused.len() as u64;
                    outcome.refused.extend(r.refused.into_iter().map(|f| ((f.topic, f.partition), f.offset, f.reason)));
                }
                Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                    // Evicted: what it held was freed and will be given again.
                    self.refused_total += self.pending.len() as u64;
                    outcome.refused.extend(self.pending.drain(..).map(|(tp, o, _)| (tp, o, e.to_string())));
                    self.rejoin().await?;
                }
                Err(e) => {
                    // Perhaps applied: the same request goes again, so that it is not
                    // refused as a whole ("not in flight") for having been applied.
                    self.unanswered = Some((seq, n));
                    return Err(e);
                }
            }
        }
        Ok(outcome)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn rejoin(&mut self) -> Result<()> {
        let req = heartbeat_request(&self.group, &self.member, &self.topics, &self.config, false);
        let beat = self.client.share_heartbeat(req).await?;
        *self.group_config.lock().expect("share config poisoned") = beat.config;
        lower(&self.next, beat.redeliver);
        Ok(())
    }

    /// Every partition of the subscribed topics.
    async fn partitions(&self) -> Result<Vec<TopicPartition>> {
        let mut out = Vec::new();
        for t in &self.topics {
            let n = self.client.partition_count(t).await?;
            out.extend((0..n).map(|p| (t.clone(), p)));
        }
        Ok(out)
    }

    /// Learns where to fetch each of `partitions` this member has no position in yet:
    /// asks the coordinator to acquire nothing at the group's start (the log start or the
    /// high watermark), and the coordinator answers with the group's position. The first
    /// member to reach a partition so fixes where the group starts it, and every member
    /// reads on from there.
    async fn learn_positions(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let unknown: Vec<TopicPartition> = {
            let next = self.next.lock().expect("share positions poisoned");
            partitions.iter().filter(|tp| !next.contains_key(*tp)).cloned().collect()
        };
        let start = self.group_config().start;
        let mut calls = JoinSet::new();
        for tp in unknown {
            let (client, seq) = (self.client.clone(), self.next_seq());
            let (group, member) = (self.group.clone(), self.member.clone());
            calls.spawn(async move {
                let (earliest, latest) = client.list_offsets(&tp.0, tp.1).await?;
                let at = match start {
                    ShareStart::Earliest => earliest,
                    ShareStart::Latest => latest,
                };
                let req = v1::ShareAcquireRequest {
                    group,
                    member_id: member,
                    topic: tp.0.clone(),
                    partition: tp.1,
                    log_start: earliest,
                    from: at,
                    to: at,
                    records: Vec::new(),
                    max_records: 0,
                    request_seq: seq,
                };
                let answer = client.share_acquire(req).await?;
                Ok::<_, ClientError>((tp, answer.next_offset))
            });
        }
        let (mut first_error, mut rejoin) = (None, false);
        while let Some(done) = calls.join_next().await {
            match done {
                Ok(Ok((tp, next))) => lower(&self.next, vec![(tp, next)]),
                Ok(Err(e)) if e.code() == Some(ErrorCode::UnknownMember) => rejoin = true,
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => {}
            }
        }
        if rejoin {
            self.rejoin().await?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records given to this member, waiting up to `max_wait` for some. Sends the
    /// acknowledgements made since the last poll first (with implicit acknowledgement,
    /// accepting what was handed out and not acknowledged).
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ShareRecord>> {
        let acked = self.commit().await?;
        for (tp, o, why) in &acked.refused {
            tracing::debug!(
                group = self.group,
                topic = tp.0,
                partition = tp.1,
                offset = o,
                why,
                "acknowledgement refused"
            );
        }
        let deadline = Instant::now() + max_wait;
        let partitions = self.partitions().await?;
        if partitions.is_empty() {
            tokio::time::sleep(max_wait).await;
            return Ok(Vec::new());
        }
        self.learn_positions(&partitions).await?;
        // The first pass asks every partition for what it has now and waits for every
        // answer, so that a partition with records never loses to another; the passes
        // after it long-poll, and the first answer with records ends the wait.
        let mut first_pass = true;
        loop {
            let wait = match first_pass {
                true => Duration::ZERO,
                false => deadline.saturating_duration_since(Instant::now()).min(self.config.fetch_max_wait),
            };
            let mut fetches = JoinSet::new();
            let n = partitions.len();
            for i in 0..n {
                let tp = partitions[(self.turn + i) % n].clone();
                let Some(from) = self.next.lock().expect("share positions poisoned").get(&tp).copied() else {
                    continue;
                };
                let config = ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
                let mut consumer = Consumer::new(self.client.inner.clone(), tp.0.clone(), tp.1, from, config);
                fetches.spawn(async move {
                    let records = consumer.poll(wait).await;
                    let log_start = consumer.log_start_offset().unwrap_or(0);
                    let reset_to = (consumer.resets() > 0).then(|| consumer.position());
                    // A position below the log start was moved up to it.
                    let from = from.max(log_start);
                    let records = records.map(|rs| rs.into_iter().map(|r| (r.offset, r.record)).collect::<Vec<_>>());
                    Fetched { partition: tp, from, log_start, reset_to, records }
                });
            }
            self.turn = (self.turn + 1) % n;
            // In a long-poll pass, the first fetch with records and every other that has
            // answered by then are acquired together; the fetches still waiting are
            // dropped.
            let mut ready = Vec::new();
            let mut first_error = None;
            loop {
                let done = match ready.is_empty() || first_pass {
                    true => fetches.join_next().await,
                    false => fetches.try_join_next(),
                };
                let Some(done) = done else { break };
                let Ok(f) = done else { continue };
                if let Some(o) = f.reset_to {
                    // The records there are gone: the coordinator drops them at the next
                    // acquire, which names the log start.
                    self.next.lock().expect("share positions poisoned").insert(f.partition.clone(), o);
                }
                match f.records {
                    Ok(records) if records.is_empty() => {}
                    Ok(records) => {
                        ready.push(ToAcquire { partition: f.partition, from: f.from, log_start: f.log_start, records })
                    }
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            drop(fetches);
            // Rounds of acquisitions until some records are given: a round may find every
            // record held by other members.
            let mut out = Vec::new();
            while out.is_empty() && !ready.is_empty() {
                let (got, error) = self.acquire(&mut ready).await?;
                out = got;
                first_error = first_error.or(error);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if std::mem::take(&mut first_pass) && first_error.is_none() {
                continue;
            }
            if Instant::now() >= deadline {
                return match first_error {
                    Some(e) => Err(e),
                    None => Ok(out),
                };
            }
            if first_error.is_some() {
                tokio::time::sleep(Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
    }

    /// Asks the coordinator for the records fetched from the first partitions of
    /// `fetched`, as many partitions at once as `max_records` covers (at least one), and
    /// removes those from `fetched`; writes the dead-letter tasks it gives to the
    /// dead-letter topic, and answers the records for the application and the first
    /// error.
    async fn acquire(&mut self, fetched: &mut Vec<ToAcquire>) -> Result<(Vec<ShareRecord>, Option<ClientError>)> {
        let mut budget = self.config.max_records as usize;
        let mut asks = Vec::new();
        while budget > 0 && !fetched.is_empty() {
            let ToAcquire { partition: tp, from, log_start, mut records } = fetched.remove(0);
            records.retain(|(o, _)| *o >= from);
            records.truncate(limits::SHARE_ACQUIRE_MAX);
            let Some(last) = records.last().map(|(o, _)| *o) else { continue };
            // At most what was fetched, so that the partitions after it get the rest.
            let max = records.len().min(budget);
            budget -= max;
            let req = v1::ShareAcquireRequest {
                group: self.group.clone(),
                member_id: self.member.clone(),
                topic: tp.0.clone(),
                partition: tp.1,
                log_start,
                from,
                to: last + 1,
                records: records
                    .iter()
                    .map(|(o, r)| v1::FetchedRecord {
                        offset: *o,
                        has_key: r.key.is_some(),
                        key_hash: r.key.as_deref().map_or(0, key_hash),
                    })
                    .collect(),
                max_records: max as u32,
                request_seq: self.next_seq(),
            };
            asks.push((tp, records, req));
        }
        // The coordinator stamps each lock after this: a lock runs out no sooner than
        // the lock timeout from now, whatever the two clocks read.
        let asked = Instant::now();
        let mut calls = JoinSet::new();
        for (i, (_, _, req)) in asks.iter().enumerate() {
            let (client, req) = (self.client.clone(), req.clone());
            calls.spawn(async move { (i, client.share_acquire(req).await) });
        }
        let mut answers: Vec<Option<Result<v1::ShareAcquireResponse>>> = (0..asks.len()).map(|_| None).collect();
        while let Some(done) = calls.join_next().await {
            if let Ok((i, answer)) = done {
                answers[i] = Some(answer);
            }
        }
        let (mut out, mut first_error, mut rejoin) = (Vec::new(), None, false);
        for ((tp, records, _), answer) in asks.into_iter().zip(answers) {
            let answer = match answer {
                Some(Ok(a)) => a,
                Some(Err(e)) if e.code() == Some(ErrorCode::UnknownMember) => {
                    rejoin = true;
                    continue;
                }
                Some(Err(e)) => {
                    first_error = first_error.or(Some(e));
                    continue;
                }
                None => continue,
            };
            self.next.lock().expect("share positions poisoned").insert(tp.clone(), answer.next_offset);
            let by_offset: BTreeMap<Offset, Record> = records.into_iter().collect();
            for g in answer.granted {
                let Some(record) = by_offset.get(&g.offset) else { continue };
                if g.dead_letter {
                    match self.dead_letter(&tp, g.offset, g.deliveries, &g.error, record.clone()).await {
                        Ok(()) => self.pending.push((tp.clone(), g.offset, ShareAckKind::DeadLettered)),
                        // Not acknowledged: the lock times out and another member tries.
                        Err(e) => {
                            tracing::warn!(group = self.group, error = %e, "writing to the dead-letter topic failed")
                        }
                    }
                    continue;
                }
                self.outstanding.insert((tp.clone(), g.offset));
                out.push(ShareRecord {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: g.offset,
                    record: record.clone(),
                    deliveries: g.deliveries,
                });
            }
        }
        // Writing dead letters (creating their topic first) may take longer than a lock:
        // a record whose lock may have run out meanwhile is not handed out, for another
        // member may hold it by now. It is free at the coordinator, and fetched again.
        let lock = Duration::from_millis(u64::from(self.group_config().lock_timeout_ms));
        if lock_ran_out(asked, lock, Instant::now()) && !out.is_empty() {
            tracing::debug!(
                group = self.group,
                records = out.len(),
                "locks ran out before the records were handed out"
            );
            let again: Vec<(TopicPartition, Offset)> = out
                .drain(..)
                .map(|r| ((r.topic, r.partition), r.offset))
                .inspect(|at| {
                    self.outstanding.remove(at);
                })
                .collect();
            lower(&self.next, again);
        }
        if rejoin {
            self.rejoin().await?;
        }
        Ok((out, first_error))
    }

    /// Writes one record to its dead-letter topic (created on first use), with headers
    /// naming where it came from, how often it was given and why it failed last.
    async fn dead_letter(
        &mut self,
        tp: &TopicPartition,
        offset: Offset,
        deliveries: u32,
        error: &str,
        record: Record,
    ) -> Result<()> {
        let topic = self.config.dead_letter_topic.clone().unwrap_or_else(|| dead_letter_topic(&tp.0, &self.group));
        if !self.dead_letters.contains_key(&topic) {
            let brokers = self.client.metadata().await?.brokers.len().max(1) as u32;
            match self.client.create_topic(&topic, 1, brokers.min(3)).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
                Err(e) => return Err(e),
            }
            self.dead_letters.insert(topic.clone(), self.client.producer(topic.clone(), ProducerConfig::default()));
        }
        let mut record = record;
        record.headers.retain(|(k, _)| !k.starts_with(dlq_headers::PREFIX));
        let text = |s: String| Bytes::from(s.into_bytes());
        record.headers.extend([
            (dlq_headers::TOPIC.to_string(), text(tp.0.clone())),
            (dlq_headers::PARTITION.to_string(), text(tp.1.to_string())),
            (dlq_headers::OFFSET.to_string(), text(offset.to_string())),
            (dlq_headers::DELIVERIES.to_string(), text(deliveries.to_string())),
            (dlq_headers::ERROR.to_string(), text(error.to_string())),
            (dlq_headers::GROUP.to_string(), text(self.group.clone())),
        ]);
        record.headers.truncate(limits::RECORD_HEADERS_MAX);
        let producer = self.dead_letters.get(&topic).expect("inserted above");
        producer.send(record).await.map(drop)
    }

    /// Sends what is acknowledged (with implicit acknowledgement, everything handed out)
    /// and leaves the group: what it still holds is given to the others at once.
    pub async fn close(mut self) -> Result<()> {
        let acked = self.commit().await.map(drop);
        for p in self.dead_letters.values() {
            let _ = p.flush().await;
        }
        self.heartbeat.abort();
        let req = heartbeat_request(&self.group, &self.member, &self.topics, &self.config, true);
        let left = self.client.share_heartbeat(req).await.map(drop);
        acked.and(left)
    }
}

impl Drop for ShareConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::Refused { code: ErrorCode::InvalidRequest, message }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(limits::SHARE_ERROR_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_heartbeat_is_what_the_server_accepts() {
        let config = ShareGroupConfig::default();
        let req = heartbeat_request("q", "m-1", &["t".into()], &config, false);
        let checked = request::ShareHeartbeat::try_from(req).unwrap();
        assert_eq!(checked.config, ShareConfig::default());
        assert_eq!(checked.session_timeout_ms, limits::SESSION_TIMEOUT_MS_DEFAULT);
    }

    #[test]
    fn a_record_is_handed_out_only_while_its_lock_surely_holds() {
        let asked = Instant::now();
        let lock = Duration::from_millis(2_000);
        assert!(!lock_ran_out(asked, lock, asked));
        assert!(!lock_ran_out(asked, lock, asked + Duration::from_millis(1_999)));
        assert!(lock_ran_out(asked, lock, asked + lock));
        assert!(lock_ran_out(asked, lock, asked + Duration::from_secs(5)));
    }

    #[test]
    fn error_texts_are_cut_at_a_char_boundary() {
        let long = "é".repeat(limits::SHARE_ERROR_BYTES_MAX);
        let cut = truncate(&long);
        assert!(cut.len() <= limits::SHARE_ERROR_BYTES_MAX && cut.chars().all(|c| c == 'é'));
    }
}
