//! Share groups in the metadata state (RFC 0007): a topic read like a queue. Any member
//! may be given any record; each record is acknowledged on its own (accepted, released
//! for redelivery, or rejected); a record not acknowledged within the lock timeout is
//! given again; and each record's delivery count is kept here, in Raft, so a new
//! coordinator continues it. After `max_deliveries`, or when rejected, a record is
//! *dead*: the next member to reach it gets it as a dead-letter task, writes it to the
//! group's dead-letter topic and acknowledges that (`DeadLettered`).
//!
//! Per partition the group keeps a window `[start, end)`: every offset below `start` is
//! done, offsets from `end` on were never handed out, and `records` holds the offsets in
//! between that are not done yet. Members fetch records themselves and ask to *acquire*
//! the ones they fetched; the coordinator grants those that are free. Time enters only
//! through the `now_ms` the coordinator writes into each command, so applying the log is
//! deterministic; a lock's expiry is noticed by the next command that touches its record.
//!
//! With `key_ordered`, at most one record of a key is in flight in the group at a time,
//! and records of a key are given in offset order (Pulsar's Key_Shared).

use std::collections::{BTreeMap, BTreeSet};

pub use flotilla_types::group::{ShareAckKind as AckKind, ShareConfig, key_hash};
use flotilla_types::{ErrorCode, Offset, limits};
use serde::{Deserialize, Serialize};

use crate::groups::TopicPartition;
use crate::{Response, Topic};

/// A member of a share group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMember {
    pub client: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u32,
    /// The member's latest acquisitions (oldest first; bounded by
    /// `limits::SHARE_REMEMBERED_ACQUIRES` and `SHARE_ACQUIRE_MAX` offsets in all) and
    /// its last acknowledgement, kept so that a request the client sends again after an
    /// unknown outcome (the same request number) is answered as it was the first time
    /// instead of applied twice.
    pub recent_acquires: Vec<LastAcquire>,
    pub last_ack: Option<LastAck>,
}

/// One of a member's latest acquisitions: its request number, the partition, the
/// offsets granted and where the member was told to fetch next. A retry is granted those
/// of the offsets the member still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAcquire {
    pub seq: u64,
    pub partition: TopicPartition,
    pub granted: Vec<Offset>,
    pub next: Offset,
}

/// A member's last acknowledgement: its request number, how many acknowledgements it
/// carried, and which of them (by position) were refused and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAck {
    pub seq: u64,
    pub count: u32,
    pub refused: Vec<(u32, Refusal)>,
}

/// Why an acknowledgement was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The group tracks nothing of the record's partition.
    NoPartition,
    /// Done already, or never given.
    NotInFlight,
    /// The member's lock ran out now; the record is given again.
    LockTimedOut,
    /// Another member holds it (this member's lock ran out earlier).
    HeldByAnother,
    /// Nobody holds it (this member's lock ran out earlier).
    NotHeld,
    /// A dead-letter task acknowledged with `Accept`.
    AcceptedDeadLetterTask,
    /// `DeadLettered` for a record that is not a dead-letter task.
    NotDeadLetterTask,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoPartition => "the group holds no record of the partition",
            Refusal::NotInFlight => "not in flight (already done, or never given)",
            Refusal::LockTimedOut => "the lock timed out; the record is given again",
            Refusal::HeldByAnother => "held by another member (this member's lock timed out)",
            Refusal::NotHeld => "not held (the lock timed out)",
            Refusal::AcceptedDeadLetterTask => "a dead-letter task is acknowledged with DeadLettered",
            Refusal::NotDeadLetterTask => "not a dead-letter task",
        }
    }
}

/// Who may have a tracked record now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lock {
    /// Nobody: the next member to ask gets it.
    Free,
    /// `member` until `until_ms` (the coordinator's clock).
    Held { member: String, until_ms: u64 },
}

/// A record of the window that is not done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// Times it was given to a member (dead-letter tasks not counted).
    pub deliveries: u32,
    /// The hash of its key (`key_hash`), when it has one.
    pub key: Option<u64>,
    pub lock: Lock,
    /// It goes to the dead-letter topic instead of to the application.
    pub dead: bool,
    /// Why it was last released or rejected.
    pub error: String,
}

/// One partition of a share group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePartition {
    /// Every offset below is done.
    pub start: Offset,
    /// The first offset never handed out.
    pub end: Offset,
    /// The offsets of `[start, end)` that are not done.
    pub records: BTreeMap<Offset, Tracked>,
}

/// A share group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareGroup {
    pub config: ShareConfig,
    pub members: BTreeMap<String, ShareMember>,
    pub partitions: BTreeMap<TopicPartition, SharePartition>,
    /// Records accepted, and records written to the dead-letter topic, since creation.
    pub accepted: u64,
    pub dead_lettered: u64,
}

/// A change to one share group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareOp {
    /// Adds a member or updates it. The group is created by its first member, whose
    /// configuration is the group's.
    Join { member: String, client: String, topics: BTreeSet<String>, session_timeout_ms: u32, config: ShareConfig },
    /// The member leaves (it said so, or its session timed out): what it holds is free.
    Leave { member: String, reason: String },
    /// The member fetched `records` (offset and key hash), every record of `[from, to)`
    /// that exists, and asks for at most `max` of them. `log_start` is the partition's
    /// first offset: tracked records below it were deleted and are dropped. `seq` numbers
    /// the member's requests (0: not numbered); a request numbered as one of the member's
    /// latest acquisitions of the partition is a retry and is answered as that was.
    Acquire {
        member: String,
        seq: u64,
        partition: TopicPartition,
        now_ms: u64,
        log_start: Offset,
        from: Offset,
        to: Offset,
        records: Vec<(Offset, Option<u64>)>,
        max: u32,
    },
    /// Acknowledges records the member holds; `seq` as for `Acquire`.
    Ack { member: String, seq: u64, now_ms: u64, acks: Vec<(TopicPartition, Offset, AckKind)> },
    /// Deletes a share group with no members.
    Delete,
}

/// A record given to a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub offset: Offset,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
    /// A dead-letter task: write the record to the dead-letter topic, then acknowledge
    /// `DeadLettered`.
    pub dead: bool,
    /// Why it was last released or rejected.
    pub error: String,
}

/// What a share command answers besides `Ok` and errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareResponse {
    /// The records given, and where the member should fetch next in the partition.
    Acquired { granted: Vec<Grant>, next: Offset },
    /// Acknowledgements refused (the lock expired, or another member holds the record),
    /// with the reason; the others were applied.
    Acked { refused: Vec<(TopicPartition, Offset, String)> },
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

/// Applies `op` to share group `name`. `consumer_groups` is how many consumer groups
/// there are and whether `name` is one of them (one name is one kind of group); `topics`
/// are the cluster's.
pub(crate) fn apply(
    groups: &mut BTreeMap<String, ShareGroup>,
    name: &str,
    op: &ShareOp,
    consumer_groups: (usize, bool),
    topics: &BTreeMap<String, Topic>,
) -> Response {
    if let Err(e) = limits::check_group_name(name) {
        return error(ErrorCode::InvalidRequest, e);
    }
    if consumer_groups.1 {
        return error(ErrorCode::InvalidRequest, format!("'{name}' is a consumer group, not a share group"));
    }
    let tracked_in_cluster = || groups.values().flat_map(|g| g.partitions.values()).map(|p| p.records.len()).sum();
    if let ShareOp::Acquire { .. } = op {
        let tracked: usize = tracked_in_cluster();
        if tracked >= limits::SHARE_RECORDS_CLUSTER_MAX {
            return error(
                ErrorCode::PolicyViolation,
                format!(
                    "share groups track {tracked} records in flight, the cluster's limit: acknowledge records or \
                     delete unused share groups"
                ),
            );
        }
    }
    if let ShareOp::Join { config, .. } = op {
        if let Err(e) = config.check() {
            return error(ErrorCode::InvalidRequest, e);
        }
        if !groups.contains_key(name) && groups.len() + consumer_groups.0 >= limits::GROUPS_MAX {
            return error(
                ErrorCode::PolicyViolation,
                format!("the cluster has {} groups, the limit", limits::GROUPS_MAX),
            );
        }
    }
    let group = match op {
        ShareOp::Join { config, .. } => {
            groups.entry(name.to_string()).or_insert_with(|| ShareGroup { config: *config, ..ShareGroup::default() })
        }
        _ => match groups.get_mut(name) {
            Some(g) => g,
            None => return error(ErrorCode::UnknownGroup, format!("share group '{name}' does not exist")),
        },
    };
    let unknown_member =
        |m: &str| error(ErrorCode::UnknownMember, format!("share group '{name}' has no member '{m}': join again"));
    match op {
        ShareOp::Join { member, client, topics: subscribed, session_timeout_ms, .. } => {
            if subscribed.is_empty() || subscribed.len() > limits::GROUP_SUBSCRIPTION_TOPICS_MAX {
                return error(ErrorCode::InvalidRequest, "a member subscribes to 1 to 100 topics");
            }
            if !group.members.contains_key(member) && group.members.len() >= limits::GROUP_MEMBERS_MAX {
                return error(
                    ErrorCode::PolicyViolation,
                    format!("group '{name}' has {} members, the limit", limits::GROUP_MEMBERS_MAX),
                );
            }
            let last = group.members.remove(member).map(|m| (m.recent_acquires, m.last_ack));
            let (recent_acquires, last_ack) = last.unwrap_or_default();
            group.members.insert(
                member.clone(),
                ShareMember {
                    client: client.clone(),
                    topics: subscribed.clone(),
                    session_timeout_ms: *session_timeout_ms,
                    recent_acquires,
                    last_ack,
                },
            );
            Response::Ok
        }
        ShareOp::Leave { member, .. } => {
            if group.members.remove(member).is_none() {
                return unknown_member(member);
            }
            let max = group.config.max_deliveries;
            for p in group.partitions.values_mut() {
                for t in p.records.values_mut() {
                    if matches!(&t.lock, Lock::Held { member: m, .. } if m == member) {
                        free(t, max, "its member left the group");
                    }
                }
            }
            Response::Ok
        }
        ShareOp::Acquire { member, seq, partition, now_ms, log_start, from, to, records, max } => {
            let Some(m) = group.members.get(member) else { return unknown_member(member) };
            if let Some(last) =
                m.recent_acquires.iter().find(|l| *seq != 0 && l.seq == *seq && &l.partition == partition)
            {
                return Response::Share(again(group, member, last));
            }
            let (topic, p) = partition;
            if !m.topics.contains(topic) {
                return error(ErrorCode::InvalidRequest, format!("member '{member}' does not subscribe to '{topic}'"));
            }
            match topics.get(topic) {
                Some(t) if (*p as usize) < t.partitions.len() => {}
                Some(_) => return error(ErrorCode::UnknownPartition, format!("topic '{topic}' has no partition {p}")),
                None => return error(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")),
            }
            if let Err(e) = check_fetched(*from, *to, records, *max) {
                return error(ErrorCode::InvalidRequest, e);
            }
            let (config, key_held) = (group.config, held_keys(group));
            let sp = group.partitions.entry(partition.clone()).or_insert_with(|| SharePartition {
                start: *from,
                end: *from,
                records: BTreeMap::new(),
            });
            let (granted, next) =
                acquire(sp, &config, key_held, member, *now_ms, *log_start, *from, *to, records, *max);
            if *seq != 0 {
                let last = LastAcquire {
                    seq: *seq,
                    partition: partition.clone(),
                    granted: granted.iter().map(|g| g.offset).collect(),
                    next,
                };
                remember(&mut group.members.get_mut(member).expect("checked above").recent_acquires, last);
            }
            Response::Share(ShareResponse::Acquired { granted, next })
        }
        ShareOp::Ack { member, seq, now_ms, acks } => {
            let Some(m) = group.members.get(member) else { return unknown_member(member) };
            if let Some(last) =
                m.last_ack.as_ref().filter(|l| *seq != 0 && l.seq == *seq && l.count as usize == acks.len())
            {
                // A retry of what was applied: the same answer, nothing applied again.
                let refused = last
                    .refused
                    .iter()
                    .filter_map(|(i, why)| {
                        acks.get(*i as usize).map(|(tp, o, _)| (tp.clone(), *o, why.reason().into()))
                    })
                    .collect();
                return Response::Share(ShareResponse::Acked { refused });
            }
            if acks.len() > limits::SHARE_ACKS_MAX {
                return error(
                    ErrorCode::InvalidRequest,
                    format!("{} acknowledgements, the limit is {}", acks.len(), limits::SHARE_ACKS_MAX),
                );
            }
            let mut refused = Vec::new();
            let max = group.config.max_deliveries;
            for (i, (tp, offset, kind)) in acks.iter().enumerate() {
                let Some(sp) = group.partitions.get_mut(tp) else {
                    refused.push((i as u32, Refusal::NoPartition));
                    continue;
                };
                match ack(sp, max, member, *now_ms, *offset, kind) {
                    Ok(Some(done)) => match done {
                        Done::Accepted => group.accepted += 1,
                        Done::DeadLettered => group.dead_lettered += 1,
                    },
                    Ok(None) => {}
                    Err(why) => refused.push((i as u32, why)),
                }
            }
            let answer = refused
                .iter()
                .map(|(i, why)| {
                    let (tp, o, _) = &acks[*i as usize];
                    (tp.clone(), *o, why.reason().to_string())
                })
                .collect();
            if *seq != 0 {
                let last = (refused.len() <= limits::SHARE_REMEMBERED_REFUSALS).then_some(LastAck {
                    seq: *seq,
                    count: acks.len() as u32,
                    refused,
                });
                group.members.get_mut(member).expect("checked above").last_ack = last;
            }
            Response::Share(ShareResponse::Acked { refused: answer })
        }
        ShareOp::Delete => {
            if !group.members.is_empty() {
                return error(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "share group '{name}' has {} members; it can be deleted once they left",
                        group.members.len()
                    ),
                );
            }
            groups.remove(name);
            Response::Ok
        }
    }
}

/// The first record to give again in each partition of `topics` that has one: a free
/// record, or one whose lock ran out by `now_ms`, that key order lets go. Members fetch
/// from there: an acquisition is where a lock's expiry is applied, so without it a
/// record whose holder died would wait for new records to arrive behind it.
pub fn redeliverable(group: &ShareGroup, topics: &BTreeSet<String>, now_ms: u64) -> Vec<(TopicPartition, Offset)> {
    let free = |t: &Tracked| match &t.lock {
        Lock::Free => true,
        Lock::Held { until_ms, .. } => *until_ms <= now_ms,
    };
    let held: BTreeSet<u64> = match group.config.key_ordered {
        true => group
            .partitions
            .values()
            .flat_map(|p| p.records.values())
            .filter(|t| !t.dead && !free(t))
            .filter_map(|t| t.key)
            .collect(),
        false => BTreeSet::new(),
    };
    let mut out = Vec::new();
    for (tp, sp) in group.partitions.iter().filter(|(tp, _)| topics.contains(&tp.0)) {
        let mut waiting = BTreeSet::new();
        for (o, t) in sp.records.iter().filter(|(_, t)| free(t)) {
            match t.key.filter(|_| group.config.key_ordered && !t.dead) {
                Some(k) if held.contains(&k) || !waiting.insert(k) => {}
                _ => {
                    out.push((tp.clone(), *o));
                    break;
                }
            }
        }
    }
    out
}

/// Adds `last` to a member's latest acquisitions, forgetting the oldest past the bounds.
fn remember(recent: &mut Vec<LastAcquire>, last: LastAcquire) {
    recent.push(last);
    let offsets = |r: &[LastAcquire]| r.iter().map(|l| l.granted.len()).sum::<usize>();
    while recent.len() > 1
        && (recent.len() > limits::SHARE_REMEMBERED_ACQUIRES || offsets(recent) > limits::SHARE_ACQUIRE_MAX)
    {
        recent.remove(0);
    }
}

/// The answer to a retried acquisition: what the first attempt granted that `member`
/// still holds, as it stands now, and where it was told to fetch next.
fn again(group: &ShareGroup, member: &str, last: &LastAcquire) -> ShareResponse {
    let held = |t: &&Tracked| matches!(&t.lock, Lock::Held { member: m, .. } if m == member);
    let granted = match group.partitions.get(&last.partition) {
        Some(sp) => last
            .granted
            .iter()
            .filter_map(|o| sp.records.get(o).filter(held).map(|t| (o, t)))
            .map(|(o, t)| Grant { offset: *o, deliveries: t.deliveries, dead: t.dead, error: t.error.clone() })
            .collect(),
        None => Vec::new(),
    };
    ShareResponse::Acquired { granted, next: last.next }
}

/// Drops the partitions of topics that no longer exist (a topic created again under the
/// name starts afresh).
pub(crate) fn forget_topic(groups: &mut BTreeMap<String, ShareGroup>, topic: &str) {
    for g in groups.values_mut() {
        g.partitions.retain(|(t, _), _| t != topic);
    }
}

fn check_fetched(from: Offset, to: Offset, records: &[(Offset, Option<u64>)], max: u32) -> Result<(), String> {
    if from > to {
        return Err(format!("fetched range [{from}, {to}) is empty backwards"));
    }
    if records.len() > limits::SHARE_ACQUIRE_MAX || max as usize > limits::SHARE_ACQUIRE_MAX || max == 0 {
        return Err(format!(
            "{} records fetched and {max} asked for; 1 to {} may be asked for",
            records.len(),
            limits::SHARE_ACQUIRE_MAX
        ));
    }
    let mut last = None;
    for (o, _) in records {
        if *o < from || *o >= to || last.is_some_and(|l| l >= *o) {
            return Err(format!("fetched offset {o} is out of order or outside [{from}, {to})"));
        }
        last = Some(*o);
    }
    Ok(())
}

/// The keys held by a member anywhere in the group (only key-ordered groups look).
fn held_keys(group: &ShareGroup) -> BTreeSet<u64> {
    if !group.config.key_ordered {
        return BTreeSet::new();
    }
    group
        .partitions
        .values()
        .flat_map(|p| p.records.values())
        .filter(|t| !t.dead && matches!(t.lock, Lock::Held { .. }))
        .filter_map(|t| t.key)
        .collect()
}

/// Frees a record whose holder let it go: dead once it was given `max` times. A dead
/// record keeps the reason it died: a dead-letter task let go means its writer failed,
/// not the record.
fn free(t: &mut Tracked, max: u32, why: &str) {
    t.lock = Lock::Free;
    if t.dead {
        return;
    }
    if t.deliveries >= max {
        t.dead = true;
    }
    t.error = truncate(why);
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(limits::SHARE_ERROR_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Frees every record of `sp` whose lock ran out by `now_ms`.
fn expire(sp: &mut SharePartition, max: u32, now_ms: u64) {
    for t in sp.records.values_mut() {
        if let Lock::Held { until_ms, .. } = t.lock
            && until_ms <= now_ms
        {
            let why = format!("not acknowledged within the lock timeout (delivery {})", t.deliveries);
            free(t, max, &why);
        }
    }
}

/// `start` after records were done: the first one not done, or `end`.
fn settle(sp: &mut SharePartition) {
    sp.start = sp.records.keys().next().copied().unwrap_or(sp.end);
}

#[allow(clippy::too_many_arguments)]
fn acquire(
    sp: &mut SharePartition,
    config: &ShareConfig,
    mut key_held: BTreeSet<u64>,
    member: &str,
    now_ms: u64,
    log_start: Offset,
    from: Offset,
    to: Offset,
    fetched: &[(Offset, Option<u64>)],
    max: u32,
) -> (Vec<Grant>, Offset) {
    // Deleted by retention or `delete-records`: nothing to deliver there any more.
    sp.records.retain(|o, _| *o >= log_start);
    sp.end = sp.end.max(log_start);
    expire(sp, config.max_deliveries, now_ms);
    // New records join the window, up to its size; offsets of `[end, to)` that were not
    // fetched do not exist (compacted away, or control records) and are done. A fetch
    // that starts past `end` says nothing of the offsets before it: it adds nothing.
    if to > sp.end && from <= sp.end {
        let mut end = to;
        for (o, key) in fetched.iter().filter(|(o, _)| *o >= sp.end) {
            if sp.records.len() >= limits::SHARE_RECORDS_MAX {
                end = *o;
                break;
            }
            sp.records
                .insert(*o, Tracked { deliveries: 0, key: *key, lock: Lock::Free, dead: false, error: String::new() });
        }
        sp.end = end.max(sp.end);
    }
    let until_ms = now_ms.saturating_add(u64::from(config.lock_timeout_ms));
    let mut granted = Vec::new();
    // In key order, an earlier record of a key that was not given now holds back the
    // later ones.
    let mut waiting_keys = BTreeSet::new();
    let fetched_offsets: BTreeSet<Offset> = fetched.iter().map(|(o, _)| *o).collect();
    for (o, t) in sp.records.range_mut(..to) {
        let ordered_key = if config.key_ordered && !t.dead { t.key } else { None };
        let give = granted.len() < max as usize
            && *o >= from
            && fetched_offsets.contains(o)
            && t.lock == Lock::Free
            && ordered_key.is_none_or(|k| !key_held.contains(&k) && !waiting_keys.contains(&k));
        if give {
            if !t.dead {
                t.deliveries += 1;
            }
            t.lock = Lock::Held { member: member.to_string(), until_ms };
            if let Some(k) = ordered_key {
                key_held.insert(k);
            }
            granted.push(Grant { offset: *o, deliveries: t.deliveries, dead: t.dead, error: t.error.clone() });
        } else if let Some(k) = ordered_key
            && t.lock == Lock::Free
        {
            waiting_keys.insert(k);
        }
    }
    settle(sp);
    (granted, next_fetch(sp, config, &key_held))
}

/// Where a member should fetch next: the first free record it could be given, or `end`.
fn next_fetch(sp: &SharePartition, config: &ShareConfig, key_held: &BTreeSet<u64>) -> Offset {
    let mut waiting = BTreeSet::new();
    for (o, t) in &sp.records {
        if t.lock != Lock::Free {
            continue;
        }
        match t.key.filter(|_| config.key_ordered && !t.dead) {
            Some(k) if key_held.contains(&k) || !waiting.insert(k) => {}
            _ => return *o,
        }
    }
    sp.end
}

enum Done {
    Accepted,
    DeadLettered,
}

fn ack(
    sp: &mut SharePartition,
    max: u32,
    member: &str,
    now_ms: u64,
    offset: Offset,
    kind: &AckKind,
) -> Result<Option<Done>, Refusal> {
    let Some(t) = sp.records.get_mut(&offset) else {
        return Err(Refusal::NotInFlight);
    };
    match &t.lock {
        Lock::Held { member: m, until_ms } if m == member => {
            if *until_ms <= now_ms {
                let why = format!("not acknowledged within the lock timeout (delivery {})", t.deliveries);
                free(t, max, &why);
                return Err(Refusal::LockTimedOut);
            }
        }
        Lock::Held { .. } => return Err(Refusal::HeldByAnother),
        Lock::Free => return Err(Refusal::NotHeld),
    }
    let done = match kind {
        AckKind::Accept if t.dead => return Err(Refusal::AcceptedDeadLetterTask),
        AckKind::DeadLettered if !t.dead => return Err(Refusal::NotDeadLetterTask),
        AckKind::Accept => Some(Done::Accepted),
        AckKind::DeadLettered => Some(Done::DeadLettered),
        AckKind::Release { error } => {
            free(t, max, error);
            None
        }
        AckKind::Reject { error } => {
            free(t, max, error);
            t.dead = true;
            None
        }
    };
    if done.is_some() {
        sp.records.remove(&offset);
        settle(sp);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: u64 = 1_000;

    fn config(key_ordered: bool) -> ShareConfig {
        ShareConfig { max_deliveries: 2, lock_timeout_ms: LOCK as u32, key_ordered, ..ShareConfig::default() }
    }

    fn fetched(from: Offset, to: Offset, key: impl Fn(Offset) -> Option<u64>) -> Vec<(Offset, Option<u64>)> {
        (from..to).map(|o| (o, key(o))).collect()
    }

    /// Acquires (all it may) of the fetched `f`, `[0, to)`, for `m` at `now`.
    fn take(
        sp: &mut SharePartition,
        c: &ShareConfig,
        held: &BTreeSet<u64>,
        m: &str,
        now: u64,
        to: Offset,
        f: &[(Offset, Option<u64>)],
    ) -> (Vec<Offset>, Offset) {
        let (g, next) = acquire(sp, c, held.clone(), m, now, 0, 0, to, f, 1_000);
        (g.iter().map(|g| g.offset).collect(), next)
    }

    #[test]
    fn a_record_is_given_to_one_member_at_a_time_and_again_after_its_lock_times_out() {
        let c = config(false);
        let mut sp = SharePartition::default();
        let none = BTreeSet::new();
        let f = fetched(0, 4, |_| None);
        assert_eq!(take(&mut sp, &c, &none, "a", 0, 4, &f), (vec![0, 1, 2, 3], 4));
        assert_eq!(take(&mut sp, &c, &none, "b", 10, 4, &f).0, Vec::<Offset>::new(), "all held by a");
        assert!(ack(&mut sp, 2, "a", 20, 0, &AckKind::Accept).unwrap().is_some());
        assert_eq!(sp.start, 1);
        // a's lock on 1..4 runs out: b gets them, as their second delivery.
        let (g, _) = acquire(&mut sp, &c, none.clone(), "b", LOCK, 0, 0, 4, &f, 10);
        assert_eq!(g.iter().map(|g| (g.offset, g.deliveries)).collect::<Vec<_>>(), vec![(1, 2), (2, 2), (3, 2)]);
        // a's late acknowledgement is refused: b holds the record now.
        assert!(ack(&mut sp, 2, "a", LOCK + 1, 1, &AckKind::Accept).is_err());
        // After the second delivery times out the records are dead: dead-letter tasks.
        let (g, _) = acquire(&mut sp, &c, none.clone(), "c", 2 * LOCK, 0, 0, 4, &f, 10);
        assert!(g.iter().all(|g| g.dead && g.deliveries == 2), "{g:?}");
        assert!(ack(&mut sp, 2, "c", 2 * LOCK + 1, 1, &AckKind::Accept).is_err(), "a dead record is not accepted");
        for o in 1..4 {
            assert!(matches!(
                ack(&mut sp, 2, "c", 2 * LOCK + 1, o, &AckKind::DeadLettered),
                Ok(Some(Done::DeadLettered))
            ));
        }
        assert_eq!((sp.start, sp.end, sp.records.len()), (4, 4, 0));
    }

    #[test]
    fn a_dead_letter_task_that_times_out_keeps_the_reason_its_record_died() {
        let c = config(false);
        let mut sp = SharePartition::default();
        let f = fetched(0, 1, |_| None);
        take(&mut sp, &c, &BTreeSet::new(), "a", 0, 1, &f);
        ack(&mut sp, 2, "a", 1, 0, &AckKind::Reject { error: "bad json".into() }).unwrap();
        // b gets the dead-letter task and dies before acknowledging it.
        let (g, _) = acquire(&mut sp, &c, BTreeSet::new(), "b", 2, 0, 0, 1, &f, 10);
        assert!(g[0].dead);
        let (g, _) = acquire(&mut sp, &c, BTreeSet::new(), "c", 2 + LOCK, 0, 0, 1, &f, 10);
        assert_eq!(g, vec![Grant { offset: 0, deliveries: 1, dead: true, error: "bad json".into() }]);
    }

    #[test]
    fn release_gives_again_and_reject_dead_letters_at_once() {
        let c = config(false);
        let mut sp = SharePartition::default();
        let none = BTreeSet::new();
        let f = fetched(0, 2, |_| None);
        take(&mut sp, &c, &none, "a", 0, 2, &f);
        ack(&mut sp, 2, "a", 1, 0, &AckKind::Release { error: "busy".into() }).unwrap();
        ack(&mut sp, 2, "a", 1, 1, &AckKind::Reject { error: "bad json".into() }).unwrap();
        let (g, next) = acquire(&mut sp, &c, none, "b", 2, 0, 0, 2, &f, 10);
        assert_eq!(g[0], Grant { offset: 0, deliveries: 2, dead: false, error: "busy".into() });
        assert_eq!(g[1], Grant { offset: 1, deliveries: 1, dead: true, error: "bad json".into() });
        assert_eq!(next, 2);
    }

    #[test]
    fn offsets_not_fetched_past_the_end_are_done_and_the_window_is_bounded() {
        let c = config(false);
        let mut sp = SharePartition::default();
        let none = BTreeSet::new();
        // Offsets 1 and 3 were compacted away.
        let f = vec![(0, None), (2, None), (4, None)];
        assert_eq!(take(&mut sp, &c, &none, "a", 0, 5, &f).0, vec![0, 2, 4]);
        assert_eq!(sp.end, 5);
        let many = fetched(5, 5 + limits::SHARE_RECORDS_MAX as u64 + 10, |_| None);
        acquire(&mut sp, &c, none, "a", 0, 0, 5, 5 + many.len() as u64, &many, 1_000);
        assert_eq!(sp.records.len(), limits::SHARE_RECORDS_MAX);
        assert_eq!(sp.end, 5 + limits::SHARE_RECORDS_MAX as u64 - 3, "the window stops at its size");
    }

    #[test]
    fn a_fetch_past_the_end_does_not_skip_what_lies_between() {
        let c = config(false);
        let mut sp = SharePartition::default();
        take(&mut sp, &c, &BTreeSet::new(), "a", 0, 3, &fetched(0, 3, |_| None));
        // A new member starting at the partition's end (100) must not make 3..100 done.
        let (g, next) = acquire(&mut sp, &c, BTreeSet::new(), "b", 1, 0, 100, 105, &fetched(100, 105, |_| None), 10);
        assert!(g.is_empty());
        assert_eq!((next, sp.end), (3, 3));
    }

    #[test]
    fn retention_drops_records_below_the_log_start() {
        let c = config(false);
        let mut sp = SharePartition::default();
        let f = fetched(0, 10, |_| None);
        acquire(&mut sp, &c, BTreeSet::new(), "a", 0, 0, 0, 10, &f, 3);
        let f = fetched(7, 12, |_| None);
        let (g, _) = acquire(&mut sp, &c, BTreeSet::new(), "b", 1, 7, 7, 12, &f, 100);
        assert_eq!(sp.start, 7);
        assert_eq!(g.iter().map(|g| g.offset).collect::<Vec<_>>(), vec![7, 8, 9, 10, 11]);
    }

    #[test]
    fn key_order_holds_one_record_of_a_key_and_keeps_offset_order() {
        let c = config(true);
        let mut sp = SharePartition::default();
        // Keys: 0→k1, 1→k2, 2→k1, 3→k3.
        let key = |o: Offset| Some([1, 2, 1, 3][o as usize]);
        let f = fetched(0, 4, key);
        assert_eq!(take(&mut sp, &c, &BTreeSet::new(), "a", 0, 4, &f).0, vec![0, 1, 3]);
        // 2 waits for 0; the next fetch for a member with nothing held elsewhere is 2,
        // but k1 is held, so it is the end.
        assert_eq!(next_fetch(&sp, &c, &[1, 2, 3].into()), 4);
        // a releases 0: it comes before 2 again, and 2 still waits.
        ack(&mut sp, 2, "a", 1, 0, &AckKind::Release { error: String::new() }).unwrap();
        let held: BTreeSet<u64> = [2, 3].into();
        let (g, next) = acquire(&mut sp, &c, held.clone(), "b", 2, 0, 2, 4, &fetched(2, 4, key), 10);
        assert!(g.is_empty(), "2 must not overtake 0: {g:?}");
        assert_eq!(next, 0);
        assert_eq!(take(&mut sp, &c, &held, "b", 3, 4, &f).0, vec![0]);
        ack(&mut sp, 2, "b", 4, 0, &AckKind::Accept).unwrap();
        assert_eq!(take(&mut sp, &c, &[2, 3].into(), "b", 5, 4, &f).0, vec![2]);
    }

    /// The cluster's topics for `apply`: "t" with `partitions` partitions.
    fn topic_t(partitions: u32) -> BTreeMap<String, Topic> {
        let partitions = (0..partitions)
            .map(|p| crate::PartitionAssignment {
                partition: p,
                group: 1 + u64::from(p),
                replicas: vec![1],
                epoch: 0,
                moving: None,
            })
            .collect();
        let topic = Topic { name: "t".into(), replication_factor: 1, policy: Default::default(), partitions };
        BTreeMap::from([("t".to_string(), topic)])
    }

    /// Member `m` joining to read "t".
    fn join(m: &str) -> ShareOp {
        ShareOp::Join {
            member: m.into(),
            client: "c".into(),
            topics: ["t".to_string()].into(),
            session_timeout_ms: 10_000,
            config: ShareConfig::default(),
        }
    }

    #[test]
    fn leaving_frees_what_the_member_held() {
        let mut groups = BTreeMap::new();
        let topics = topic_t(1);
        let cg = (0, false);
        assert_eq!(apply(&mut groups, "q", &join("a"), cg, &topics), Response::Ok);
        assert_eq!(apply(&mut groups, "q", &join("b"), cg, &topics), Response::Ok);
        let acquire = |m: &str| ShareOp::Acquire {
            member: m.into(),
            seq: 0,
            partition: ("t".into(), 0),
            now_ms: 0,
            log_start: 0,
            from: 0,
            to: 2,
            records: vec![(0, None), (1, None)],
            max: 10,
        };
        let r = apply(&mut groups, "q", &acquire("a"), cg, &topics);
        assert!(matches!(&r, Response::Share(ShareResponse::Acquired { granted, .. }) if granted.len() == 2), "{r:?}");
        apply(&mut groups, "q", &ShareOp::Leave { member: "a".into(), reason: "left".into() }, cg, &topics);
        let r = apply(&mut groups, "q", &acquire("b"), cg, &topics);
        assert!(matches!(&r, Response::Share(ShareResponse::Acquired { granted, .. }) if granted.len() == 2), "{r:?}");
        let r = apply(&mut groups, "q", &acquire("a"), cg, &topics);
        assert!(matches!(r, Response::Error { code: ErrorCode::UnknownMember, .. }));
        assert!(matches!(
            apply(&mut groups, "q", &ShareOp::Delete, cg, &topics),
            Response::Error { code: ErrorCode::GroupNotEmpty, .. }
        ));
        assert!(matches!(apply(&mut groups, "q", &join("c"), (1, true), &topics), Response::Error { .. }));
    }

    /// Regression (share bench with 4 members): a client retries an acquisition or an
    /// acknowledgement whose answer it lost. Applied twice, the retried acquisition
    /// found the records held (by this very member) and granted none, so they sat
    /// locked, never handed out, until the lock timed out; the retried acknowledgement
    /// was refused "not in flight" as a whole. The request number makes both answer as
    /// the first time.
    #[test]
    fn an_acquisition_of_nothing_fixes_where_the_group_reads_a_partition_it_never_reached() {
        let mut groups = BTreeMap::new();
        let topics = topic_t(1);
        let cg = (0, false);
        assert_eq!(apply(&mut groups, "q", &join("a"), cg, &topics), Response::Ok);
        assert_eq!(apply(&mut groups, "q", &join("b"), cg, &topics), Response::Ok);
        let at = |member: &str, seq: u64, offset: Offset, fetched: Vec<(Offset, Option<u64>)>| ShareOp::Acquire {
            member: member.into(),
            seq,
            partition: ("t".into(), 0),
            now_ms: 0,
            log_start: 0,
            from: offset,
            to: fetched.last().map_or(offset, |(o, _)| o + 1),
            records: fetched,
            max: 1_000,
        };
        let answer = |r: Response| match r {
            Response::Share(ShareResponse::Acquired { granted, next }) => (granted.len(), next),
            other => panic!("{other:?}"),
        };
        // a reaches the partition at its end, 10, and takes nothing: the group starts there.
        assert_eq!(answer(apply(&mut groups, "q", &at("a", 1, 10, vec![]), cg, &topics)), (0, 10));
        let sp = &groups["q"].partitions[&("t".to_string(), 0)];
        assert_eq!((sp.start, sp.end), (10, 10));
        // b reaches it later, at the end 15 or at the log start: it is told the group's
        // position, and nothing changes.
        assert_eq!(answer(apply(&mut groups, "q", &at("b", 1, 15, vec![]), cg, &topics)), (0, 10));
        assert_eq!(answer(apply(&mut groups, "q", &at("b", 2, 0, vec![]), cg, &topics)), (0, 10));
        // Records 10..15 are the group's: b fetches them from there and gets them all.
        let f = fetched(10, 15, |_| None);
        assert_eq!(answer(apply(&mut groups, "q", &at("b", 3, 10, f), cg, &topics)), (5, 15));
    }

    #[test]
    fn a_retried_acquisition_or_acknowledgement_is_answered_as_the_first_time() {
        let mut groups = BTreeMap::new();
        let topics = topic_t(2);
        let cg = (0, false);
        let join = join("a");
        assert_eq!(apply(&mut groups, "q", &join, cg, &topics), Response::Ok);
        let acquire_in = |p: u32, seq: u64| ShareOp::Acquire {
            member: "a".into(),
            seq,
            partition: ("t".into(), p),
            now_ms: 0,
            log_start: 0,
            from: 0,
            to: 3,
            records: vec![(0, None), (1, None), (2, None)],
            max: 2,
        };
        let acquire = |seq: u64| acquire_in(0, seq);
        let granted = |r: Response| match r {
            Response::Share(ShareResponse::Acquired { granted, next }) => {
                (granted.iter().map(|g| (g.offset, g.deliveries)).collect::<Vec<_>>(), next)
            }
            other => panic!("{other:?}"),
        };
        let first = granted(apply(&mut groups, "q", &acquire(1), cg, &topics));
        assert_eq!(first, (vec![(0, 1), (1, 1)], 2));
        assert_eq!(granted(apply(&mut groups, "q", &acquire(1), cg, &topics)), first, "the retry");
        // A new request is a new acquisition: 0 and 1 are held, 2 is given.
        assert_eq!(granted(apply(&mut groups, "q", &acquire(2), cg, &topics)), (vec![(2, 1)], 3));
        // One poll acquires partitions concurrently: a retry of the earlier one is still
        // answered after the later one was applied.
        let other = granted(apply(&mut groups, "q", &acquire_in(1, 4), cg, &topics));
        assert_eq!(other, (vec![(0, 1), (1, 1)], 2));
        assert_eq!(granted(apply(&mut groups, "q", &acquire(2), cg, &topics)), (vec![(2, 1)], 3));
        assert_eq!(granted(apply(&mut groups, "q", &acquire_in(1, 4), cg, &topics)), other);
        // The member rejoining (a changed subscription) keeps its request history.
        assert_eq!(apply(&mut groups, "q", &join, cg, &topics), Response::Ok);
        assert_eq!(granted(apply(&mut groups, "q", &acquire(2), cg, &topics)), (vec![(2, 1)], 3));

        let tp = ("t".to_string(), 0);
        let acks = |seq: u64| ShareOp::Ack {
            member: "a".into(),
            seq,
            now_ms: 1,
            acks: vec![(tp.clone(), 0, AckKind::Accept), (tp.clone(), 7, AckKind::Accept)],
        };
        let refused = |r: Response| match r {
            Response::Share(ShareResponse::Acked { refused }) => {
                refused.into_iter().map(|(_, o, why)| (o, why)).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        let not_in_flight = Refusal::NotInFlight.reason().to_string();
        let first = refused(apply(&mut groups, "q", &acks(3), cg, &topics));
        assert_eq!(first, vec![(7, not_in_flight.clone())]);
        assert_eq!(refused(apply(&mut groups, "q", &acks(3), cg, &topics)), first, "the retry");
        assert_eq!(groups["q"].accepted, 1, "accepted once");
        // Unnumbered requests are applied each time.
        assert_eq!(refused(apply(&mut groups, "q", &acks(0), cg, &topics)).len(), 2);
    }

    #[test]
    fn a_member_remembers_a_bounded_number_of_acquisitions() {
        let last =
            |seq: u64, n: u64| LastAcquire { seq, partition: ("t".into(), 0), granted: (0..n).collect(), next: n };
        let mut recent = Vec::new();
        for seq in 1..=40 {
            remember(&mut recent, last(seq, 1));
        }
        assert_eq!(recent.len(), limits::SHARE_REMEMBERED_ACQUIRES);
        assert_eq!(recent[0].seq, 40 - limits::SHARE_REMEMBERED_ACQUIRES as u64 + 1, "the oldest are forgotten");
        remember(&mut recent, last(41, limits::SHARE_ACQUIRE_MAX as u64));
        assert_eq!(recent.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![41], "bounded in offsets too");
    }

    #[test]
    fn records_whose_lock_ran_out_are_found_for_redelivery() {
        let c = config(true);
        let mut group = ShareGroup { config: c, ..ShareGroup::default() };
        let mut sp = SharePartition::default();
        // Keys: 0→k1, 1→k2, 2→k1.
        let key = |o: Offset| Some([1, 2, 1][o as usize]);
        take(&mut sp, &c, &BTreeSet::new(), "a", 0, 3, &fetched(0, 3, key));
        ack(&mut sp, 2, "a", 1, 0, &AckKind::Accept).unwrap();
        group.partitions.insert(("t".into(), 0), sp);
        let topics: BTreeSet<String> = ["t".to_string()].into();
        assert_eq!(
            redeliverable(&group, &topics, 10),
            vec![(("t".to_string(), 0), 2)],
            "1 is held; 2's key is free now"
        );
        // 1's and 2's locks run out at LOCK: both may go again, from 1.
        assert_eq!(redeliverable(&group, &topics, LOCK), vec![(("t".to_string(), 0), 1)]);
        assert_eq!(redeliverable(&group, &["u".to_string()].into(), LOCK), vec![]);
    }

    #[test]
    fn key_hashes_are_stable() {
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
