//! Consumer groups in the metadata state (RFC 0005): members, their subscriptions, the
//! assignment the coordinator computes, and committed offsets. Pure and deterministic,
//! like the rest of the metadata state machine: the coordinator (the metadata leader's
//! node) keeps the heartbeats and session clocks and writes only what changes.
//!
//! Assignment is incremental, in the model of Kafka's KIP-848. Each member has a
//! **target** (what the assignor gives it) and an **assigned** set (what it may read and
//! commit now). A partition is in at most one member's assigned set; it moves to its
//! target owner only once the previous owner released it (or left, or was evicted). A
//! member whose target did not change keeps reading throughout: nothing stops the world.
//!
//! Epochs fence stale members: the group's epoch rises with every change, a member's
//! epoch is the group epoch at which its assigned set last changed, and each assigned
//! partition remembers the member epoch it was granted at. A commit names the member and
//! the epoch it knows; it is refused for a partition the member does not hold, or was
//! granted again (an online offset reset) after that epoch.

use std::collections::{BTreeMap, BTreeSet};

pub use flotilla_types::Assignor;
use flotilla_types::{ErrorCode, NodeId, Offset, PartitionId, limits};
use serde::{Deserialize, Serialize};

use crate::{Broker, Response, Topic};

/// A topic and one of its partitions.
pub type TopicPartition = (String, PartitionId);

/// A member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The client's own name for itself (shown by `group describe`).
    pub client: String,
    /// The member's zone; the uniform assignor prefers partitions with a replica there.
    pub zone: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u32,
    /// The group epoch at which its assigned set last changed.
    pub epoch: u64,
    /// Partitions it may read and commit, each with the member epoch it was granted at.
    pub assigned: BTreeMap<TopicPartition, u64>,
    /// Partitions the assignor gives it.
    pub target: BTreeSet<TopicPartition>,
}

impl Member {
    /// Assigned partitions it must give up (no longer in its target).
    pub fn revoking(&self) -> impl Iterator<Item = &TopicPartition> {
        self.assigned.keys().filter(|tp| !self.target.contains(*tp))
    }
}

/// A committed offset: the next offset the group reads in the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: Offset,
    pub metadata: String,
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub assignor: Assignor,
    /// Rises with every change of membership, assignment or grants.
    pub epoch: u64,
    pub members: BTreeMap<String, Member>,
    pub offsets: BTreeMap<TopicPartition, Committed>,
}

/// A change to one consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOp {
    /// Adds a member, or updates its subscription, zone and session timeout. The group is
    /// created by its first member; the first member's assignor is the group's.
    Join {
        member: String,
        client: String,
        zone: String,
        topics: BTreeSet<String>,
        session_timeout_ms: u32,
        assignor: Assignor,
    },
    /// The member stopped reading these partitions (they were being revoked); they go to
    /// their new owners.
    Release { member: String, partitions: Vec<TopicPartition> },
    /// The member leaves (it said so, or its session timed out); its partitions go to
    /// the others.
    Leave { member: String, reason: String },
    /// Commits offsets. From a member (`Some((id, epoch))`): only for partitions it holds,
    /// granted at or before that epoch. From outside (`None`): only while the group has
    /// no members. An offset below the committed one is ignored: committed offsets never
    /// go down but by `Reset`.
    Commit { member: Option<(String, u64)>, offsets: Vec<(TopicPartition, Offset, String)> },
    /// Sets committed offsets (they may go down), also while members read: each reset
    /// partition's holder has it granted again at a new epoch, so it seeks to the new
    /// offset and its commits of the old position are refused.
    Reset { offsets: Vec<(TopicPartition, Offset)> },
    /// Deletes a group with no members, with its offsets.
    Delete,
}

/// What a group command answers besides `Ok` and errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupResponse {
    /// The member's epoch after a join.
    Joined { epoch: u64 },
    /// The committed offsets after a commit, for the partitions it named.
    Committed(Vec<(TopicPartition, Offset)>),
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

/// Applies `op` to group `name` in `groups`; `topics` and `brokers` are the cluster's.
pub(crate) fn apply(
    groups: &mut BTreeMap<String, ConsumerGroup>,
    name: &str,
    op: &GroupOp,
    topics: &BTreeMap<String, Topic>,
    brokers: &BTreeMap<NodeId, Broker>,
) -> Response {
    if let Err(e) = limits::check_group_name(name) {
        return error(ErrorCode::InvalidRequest, e);
    }
    if let GroupOp::Join { member, client, zone, topics: subscribed, session_timeout_ms, .. } = op {
        if let Err(e) = check_join(member, client, zone, subscribed, *session_timeout_ms) {
            return error(ErrorCode::InvalidRequest, e);
        }
        if !groups.contains_key(name) && groups.len() >= limits::GROUPS_MAX {
            return error(
                ErrorCode::PolicyViolation,
                format!("the cluster has {} groups, the limit", limits::GROUPS_MAX),
            );
        }
    }
    let checked = match op {
        GroupOp::Commit { offsets, .. } => check_offsets(offsets.iter().map(|(tp, _, m)| (tp, m.len())), topics),
        GroupOp::Reset { offsets } => check_offsets(offsets.iter().map(|(tp, _)| (tp, 0)), topics),
        _ => Ok(()),
    };
    if let Err((code, message)) = checked {
        return error(code, message);
    }
    // Offsets the command would add, against the cluster's limit.
    let adding = match op {
        GroupOp::Commit { offsets, .. } => {
            let have = groups.get(name);
            offsets.iter().filter(|(tp, ..)| have.is_none_or(|g| !g.offsets.contains_key(tp))).count()
        }
        GroupOp::Reset { offsets } => {
            let have = groups.get(name);
            offsets.iter().filter(|(tp, _)| have.is_none_or(|g| !g.offsets.contains_key(tp))).count()
        }
        _ => 0,
    };
    if adding > 0 {
        let stored: usize = groups.values().map(|g| g.offsets.len()).sum();
        if stored + adding > limits::GROUP_OFFSETS_MAX {
            return error(
                ErrorCode::PolicyViolation,
                format!(
                    "the cluster holds {stored} committed offsets and the limit is {}: delete unused groups \
                     (`flotilla group delete`)",
                    limits::GROUP_OFFSETS_MAX
                ),
            );
        }
    }
    let unknown_group = || error(ErrorCode::UnknownGroup, format!("group '{name}' does not exist"));
    let group = match op {
        GroupOp::Join { assignor, .. } => groups
            .entry(name.to_string())
            .or_insert_with(|| ConsumerGroup { assignor: *assignor, ..ConsumerGroup::default() }),
        GroupOp::Commit { member: None, .. } | GroupOp::Reset { .. } => groups.entry(name.to_string()).or_default(),
        _ => match groups.get_mut(name) {
            Some(g) => g,
            None => return unknown_group(),
        },
    };
    let response = match op {
        GroupOp::Join { member, client, zone, topics: subscribed, session_timeout_ms, .. } => {
            if !group.members.contains_key(member) && group.members.len() >= limits::GROUP_MEMBERS_MAX {
                return error(
                    ErrorCode::PolicyViolation,
                    format!("group '{name}' has {} members, the limit", limits::GROUP_MEMBERS_MAX),
                );
            }
            let m = group.members.entry(member.clone()).or_insert_with(|| Member {
                client: String::new(),
                zone: String::new(),
                topics: BTreeSet::new(),
                session_timeout_ms: 0,
                epoch: 0,
                assigned: BTreeMap::new(),
                target: BTreeSet::new(),
            });
            m.client = client.clone();
            m.zone = zone.clone();
            m.topics = subscribed.clone();
            m.session_timeout_ms = *session_timeout_ms;
            Response::Ok
        }
        GroupOp::Release { member, partitions } => {
            let Some(m) = group.members.get_mut(member) else { return unknown_member(name, member) };
            for tp in partitions {
                // Only what is being revoked: a partition still in its target stays.
                if !m.target.contains(tp) {
                    m.assigned.remove(tp);
                }
            }
            Response::Ok
        }
        GroupOp::Leave { member, .. } => {
            if group.members.remove(member).is_none() {
                return unknown_member(name, member);
            }
            Response::Ok
        }
        GroupOp::Commit { member, offsets } => {
            match member {
                // The planted bug: no fencing at all (docs/simulation.md).
                Some(_) if flotilla_types::planted::armed(flotilla_types::planted::Bug::StaleGroupCommit) => {}
                Some((id, epoch)) => {
                    let Some(m) = group.members.get(id) else { return unknown_member(name, id) };
                    for (tp, _, _) in offsets {
                        match m.assigned.get(tp) {
                            Some(granted) if granted <= epoch => {}
                            Some(granted) => {
                                return error(
                                    ErrorCode::StaleMemberEpoch,
                                    format!(
                                        "{}/{} was granted to member '{id}' again at epoch {granted}, after the \
                                         epoch {epoch} it committed at (an offset reset)",
                                        tp.0, tp.1
                                    ),
                                );
                            }
                            None => {
                                return error(
                                    ErrorCode::StaleMemberEpoch,
                                    format!(
                                        "{}/{} is not assigned to member '{id}' of group '{name}' (its epoch is {}, \
                                         it sent {epoch})",
                                        tp.0, tp.1, m.epoch
                                    ),
                                );
                            }
                        }
                    }
                }
                None if !group.members.is_empty() => {
                    return error(
                        ErrorCode::GroupNotEmpty,
                        format!(
                            "group '{name}' has {} members: only they commit its offsets (or reset them)",
                            group.members.len()
                        ),
                    );
                }
                None => {}
            }
            let mut out = Vec::with_capacity(offsets.len());
            for (tp, offset, metadata) in offsets {
                let c = group.offsets.entry(tp.clone()).or_insert(Committed { offset: 0, metadata: String::new() });
                if *offset >= c.offset {
                    c.offset = *offset;
                    c.metadata = metadata.clone();
                }
                out.push((tp.clone(), c.offset));
            }
            return Response::Group(GroupResponse::Committed(out));
        }
        GroupOp::Reset { offsets } => {
            group.epoch += 1;
            let epoch = group.epoch;
            for (tp, offset) in offsets {
                group.offsets.insert(tp.clone(), Committed { offset: *offset, metadata: String::new() });
                for m in group.members.values_mut() {
                    if let Some(granted) = m.assigned.get_mut(tp) {
                        *granted = epoch;
                        m.epoch = epoch;
                    }
                }
            }
            Response::Ok
        }
        GroupOp::Delete => {
            if !group.members.is_empty() {
                return error(
                    ErrorCode::GroupNotEmpty,
                    format!("group '{name}' has {} members; they must leave first", group.members.len()),
                );
            }
            groups.remove(name);
            return Response::Ok;
        }
    };
    settle(group, topics, brokers);
    match (op, response) {
        (GroupOp::Join { member, .. }, Response::Ok) => {
            Response::Group(GroupResponse::Joined { epoch: group.members[member].epoch })
        }
        (_, r) => r,
    }
}

fn unknown_member(group: &str, member: &str) -> Response {
    error(
        ErrorCode::UnknownMember,
        format!("group '{group}' has no member '{member}' (it left or its session timed out): join again"),
    )
}

fn check_join(
    member: &str,
    client: &str,
    zone: &str,
    topics: &BTreeSet<String>,
    session_timeout_ms: u32,
) -> Result<(), String> {
    if member.is_empty() || member.len() > limits::MEMBER_ID_BYTES_MAX {
        return Err(format!("a member id has 1..={} bytes", limits::MEMBER_ID_BYTES_MAX));
    }
    if client.len() > limits::MEMBER_ID_BYTES_MAX || zone.len() > limits::MEMBER_ZONE_BYTES_MAX {
        return Err(format!(
            "a client id has at most {} bytes and a zone {}",
            limits::MEMBER_ID_BYTES_MAX,
            limits::MEMBER_ZONE_BYTES_MAX
        ));
    }
    if topics.is_empty() || topics.len() > limits::GROUP_SUBSCRIPTION_TOPICS_MAX {
        return Err(format!("a member subscribes to 1..={} topics", limits::GROUP_SUBSCRIPTION_TOPICS_MAX));
    }
    for t in topics {
        limits::check_topic_name(t)?;
    }
    if !(limits::SESSION_TIMEOUT_MS_MIN..=limits::SESSION_TIMEOUT_MS_MAX).contains(&session_timeout_ms) {
        return Err(format!(
            "session timeout {session_timeout_ms} ms is outside {}..={} ms",
            limits::SESSION_TIMEOUT_MS_MIN,
            limits::SESSION_TIMEOUT_MS_MAX
        ));
    }
    Ok(())
}

/// Every partition named exists, at most once; metadata within its limit.
fn check_offsets<'a>(
    offsets: impl ExactSizeIterator<Item = (&'a TopicPartition, usize)>,
    topics: &BTreeMap<String, Topic>,
) -> Result<(), (ErrorCode, String)> {
    if offsets.len() == 0 || offsets.len() > limits::GROUP_COMMIT_PARTITIONS_MAX {
        return Err((
            ErrorCode::InvalidRequest,
            format!("a commit or reset names 1..={} partitions", limits::GROUP_COMMIT_PARTITIONS_MAX),
        ));
    }
    let mut seen = BTreeSet::new();
    for ((topic, partition), metadata) in offsets {
        let Some(t) = topics.get(topic) else {
            return Err((ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")));
        };
        if *partition as usize >= t.partitions.len() {
            return Err((
                ErrorCode::UnknownPartition,
                format!("topic '{topic}' has {} partitions, not {partition}", t.partitions.len()),
            ));
        }
        if !seen.insert((topic, partition)) {
            return Err((ErrorCode::InvalidRequest, format!("{topic}/{partition} is named twice")));
        }
        if metadata > limits::COMMIT_METADATA_BYTES_MAX {
            return Err((
                ErrorCode::InvalidRequest,
                format!("commit metadata is {metadata} bytes, the limit is {}", limits::COMMIT_METADATA_BYTES_MAX),
            ));
        }
    }
    Ok(())
}

/// Recomputes every member's target and grants free partitions to their target owners;
/// drops partitions that no longer exist. Raises the group epoch, and the epoch of each
/// member whose assigned set changed, when anything changed.
pub(crate) fn settle(group: &mut ConsumerGroup, topics: &BTreeMap<String, Topic>, brokers: &BTreeMap<NodeId, Broker>) {
    let exists = |(t, p): &TopicPartition| topics.get(t).is_some_and(|t| (*p as usize) < t.partitions.len());
    let targets = match group.assignor {
        Assignor::Uniform => uniform(group, topics, brokers),
        Assignor::Range => range(group, topics),
    };
    let before: BTreeMap<&String, (&BTreeMap<TopicPartition, u64>, &BTreeSet<TopicPartition>)> =
        group.members.iter().map(|(id, m)| (id, (&m.assigned, &m.target))).collect();
    let mut next: BTreeMap<String, (BTreeMap<TopicPartition, u64>, BTreeSet<TopicPartition>)> = BTreeMap::new();
    let mut held: BTreeSet<TopicPartition> = BTreeSet::new();
    for (id, (assigned, _)) in &before {
        let kept: BTreeMap<TopicPartition, u64> =
            assigned.iter().filter(|(tp, _)| exists(tp)).map(|(tp, e)| (tp.clone(), *e)).collect();
        held.extend(kept.keys().cloned());
        let target = targets.get(*id).cloned().unwrap_or_default();
        next.insert((*id).clone(), (kept, target));
    }
    let epoch = group.epoch + 1;
    for (assigned, target) in next.values_mut() {
        for tp in target.iter() {
            if !held.contains(tp) {
                held.insert(tp.clone());
                assigned.insert(tp.clone(), epoch);
            }
        }
    }
    let changed = next.iter().any(|(id, (a, t))| before.get(id).is_none_or(|(ba, bt)| *ba != a || *bt != t))
        || group.members.values().any(|m| m.epoch == 0);
    if !changed {
        return;
    }
    group.epoch = epoch;
    for (id, (assigned, target)) in next {
        let m = group.members.get_mut(&id).expect("from the members");
        if m.assigned != assigned || m.epoch == 0 {
            m.epoch = epoch;
        }
        m.assigned = assigned;
        m.target = target;
    }
}

/// Every partition some member subscribes to, in order, with the zones of its replicas.
fn subscribed_partitions(
    group: &ConsumerGroup,
    topics: &BTreeMap<String, Topic>,
    brokers: &BTreeMap<NodeId, Broker>,
) -> Vec<(TopicPartition, BTreeSet<String>)> {
    let names: BTreeSet<&String> = group.members.values().flat_map(|m| &m.topics).collect();
    let mut out = Vec::new();
    for name in names {
        let Some(t) = topics.get(name) else { continue };
        for p in &t.partitions {
            let zones = p.replicas.iter().filter_map(|n| brokers.get(n)).map(|b| b.labels.zone.clone()).collect();
            out.push(((name.clone(), p.partition), zones));
        }
    }
    out
}

/// The uniform, sticky assignor (see [`Assignor::Uniform`]).
fn uniform(
    group: &ConsumerGroup,
    topics: &BTreeMap<String, Topic>,
    brokers: &BTreeMap<NodeId, Broker>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let partitions = subscribed_partitions(group, topics, brokers);
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> =
        group.members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    if group.members.is_empty() {
        return out;
    }
    let ceiling = partitions.len().div_ceil(group.members.len());
    let wants = |id: &str, tp: &TopicPartition| group.members[id].topics.contains(&tp.0);
    // Sticky: keep what each member had (its target), up to the ceiling.
    let mut free = Vec::new();
    for (tp, zones) in &partitions {
        let keeper = group.members.iter().find(|(id, m)| m.target.contains(tp) && wants(id, tp)).map(|(id, _)| id);
        match keeper {
            Some(id) if out[id].len() < ceiling => {
                out.get_mut(id).expect("a member").insert(tp.clone());
            }
            _ => free.push((tp, zones)),
        }
    }
    // The rest to the least loaded member that wants it, one in a replica's zone first.
    for (tp, zones) in free {
        let best = out
            .iter()
            .filter(|(id, _)| wants(id, tp))
            .min_by_key(|(id, set)| (set.len(), !zones.contains(&group.members[*id].zone), *id))
            .map(|(id, _)| id.clone());
        if let Some(id) = best {
            out.get_mut(&id).expect("a member").insert(tp.clone());
        }
    }
    // Even out: move one partition from the most to the least loaded member that can
    // take it, until no member holds two more than another that could take one of its.
    loop {
        let mut moved = false;
        let order: Vec<String> = out.keys().cloned().collect();
        'search: for from in &order {
            for to in &order {
                if out[from].len() < out[to].len() + 2 {
                    continue;
                }
                if let Some(tp) = out[from].iter().rev().find(|tp| wants(to, tp)).cloned() {
                    out.get_mut(from).expect("a member").remove(&tp);
                    out.get_mut(to).expect("a member").insert(tp);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            return out;
        }
    }
}

/// The range assignor (see [`Assignor::Range`]).
fn range(group: &ConsumerGroup, topics: &BTreeMap<String, Topic>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> =
        group.members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    let names: BTreeSet<&String> = group.members.values().flat_map(|m| &m.topics).collect();
    for name in names {
        let Some(t) = topics.get(name) else { continue };
        let members: Vec<&String> =
            group.members.iter().filter(|(_, m)| m.topics.contains(name)).map(|(id, _)| id).collect();
        let (n, k) = (t.partitions.len(), members.len());
        let mut next = 0;
        for (i, id) in members.into_iter().enumerate() {
            let count = n / k + usize::from(i < n % k);
            for p in next..next + count {
                out.get_mut(id).expect("a member").insert((name.clone(), p as PartitionId));
            }
            next += count;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Labels, MetadataState};

    /// Three brokers in zones a, b, c and a topic `t` of `partitions` partitions (RF 1, so
    /// each partition's one replica names one zone).
    struct World {
        state: MetadataState,
        index: u64,
    }

    impl World {
        fn new(partitions: u32) -> World {
            let mut w = World { state: MetadataState::new(), index: 0 };
            for (id, zone) in [(1, "a"), (2, "b"), (3, "c")] {
                let b = Broker::new(
                    id,
                    format!("n{id}:1"),
                    Labels { region: "r".into(), zone: zone.into(), rack: "".into() },
                );
                w.run(Command::RegisterBroker(b));
            }
            let r = w.run(Command::CreateTopic {
                name: "t".into(),
                partitions,
                replication_factor: 1,
                policy: Default::default(),
            });
            assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
            w
        }

        fn run(&mut self, c: Command) -> Response {
            self.index += 1;
            self.state.apply(self.index, &c)
        }

        fn op(&mut self, op: GroupOp) -> Response {
            self.run(Command::Group { name: "g".into(), op })
        }

        fn join_in(&mut self, member: &str, zone: &str, assignor: Assignor) -> u64 {
            match self.op(GroupOp::Join {
                member: member.into(),
                client: "test".into(),
                zone: zone.into(),
                topics: ["t".to_string()].into(),
                session_timeout_ms: 10_000,
                assignor,
            }) {
                Response::Group(GroupResponse::Joined { epoch }) => epoch,
                r => panic!("{r:?}"),
            }
        }

        fn join(&mut self, member: &str) -> u64 {
            self.join_in(member, "", Assignor::Uniform)
        }

        fn group(&self) -> &ConsumerGroup {
            self.state.group("g").expect("the group")
        }

        fn member(&self, id: &str) -> &Member {
            &self.group().members[id]
        }

        fn assigned(&self, id: &str) -> BTreeSet<PartitionId> {
            self.member(id).assigned.keys().map(|(_, p)| *p).collect()
        }

        fn release_revoked(&mut self, id: &str) {
            let partitions: Vec<TopicPartition> = self.member(id).revoking().cloned().collect();
            assert_eq!(self.op(GroupOp::Release { member: id.into(), partitions }), Response::Ok);
        }

        /// No partition is assigned to two members.
        fn check_exclusive(&self) {
            let mut seen = BTreeSet::new();
            for (id, m) in &self.group().members {
                for tp in m.assigned.keys() {
                    assert!(seen.insert(tp.clone()), "{tp:?} assigned twice (also to {id})");
                }
            }
        }

        fn commit(&mut self, member: &str, epoch: u64, partition: PartitionId, offset: Offset) -> Response {
            self.op(GroupOp::Commit {
                member: Some((member.into(), epoch)),
                offsets: vec![(("t".into(), partition), offset, String::new())],
            })
        }
    }

    #[test]
    fn a_member_joining_takes_partitions_only_after_their_owners_release_them() {
        let mut w = World::new(12);
        w.join("m1");
        w.join("m2");
        w.join("m3");
        // The first member took all 12 on joining; each later join moved some, released.
        for id in ["m1", "m2"] {
            w.release_revoked(id);
        }
        w.check_exclusive();
        assert_eq!([w.assigned("m1").len(), w.assigned("m2").len(), w.assigned("m3").len()], [4, 4, 4]);
        let before: Vec<BTreeSet<PartitionId>> = ["m1", "m2", "m3"].iter().map(|m| w.assigned(m)).collect();

        w.join("m4");
        w.check_exclusive();
        // Nothing moved yet: the new member's share is still held by its owners, which
        // keep reading everything they hold.
        assert!(w.assigned("m4").is_empty());
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            assert_eq!(w.assigned(id), before[i]);
            assert_eq!(w.member(id).target.len(), 3, "{id} keeps 3 of its 4");
            assert!(w.member(id).target.iter().all(|(_, p)| before[i].contains(p)), "sticky");
        }
        // Each owner releases its one revoked partition; the new member gets it at once.
        let epoch = w.group().epoch;
        w.release_revoked("m1");
        w.check_exclusive();
        assert_eq!(w.assigned("m4").len(), 1);
        assert!(w.group().epoch > epoch);
        w.release_revoked("m2");
        w.release_revoked("m3");
        w.check_exclusive();
        for id in ["m1", "m2", "m3", "m4"] {
            assert_eq!(w.assigned(id).len(), 3, "{id}");
            assert_eq!(w.member(id).revoking().count(), 0);
        }
        // The members not involved kept their epoch's grants: each kept 3 partitions
        // granted before m4 joined.
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            assert!(w.assigned(id).is_subset(&before[i]));
        }
    }

    #[test]
    fn a_member_leaving_hands_its_partitions_over_at_once_and_the_others_keep_theirs() {
        let mut w = World::new(12);
        for id in ["m1", "m2", "m3"] {
            w.join(id);
        }
        for id in ["m1", "m2"] {
            w.release_revoked(id);
        }
        let (a1, a2) = (w.assigned("m1"), w.assigned("m2"));
        assert_eq!(w.op(GroupOp::Leave { member: "m3".into(), reason: "session timed out".into() }), Response::Ok);
        w.check_exclusive();
        assert_eq!(w.assigned("m1").len() + w.assigned("m2").len(), 12);
        assert!(a1.is_subset(&w.assigned("m1")) && a2.is_subset(&w.assigned("m2")));
        assert!(matches!(
            w.op(GroupOp::Leave { member: "m3".into(), reason: "again".into() }),
            Response::Error { code: ErrorCode::UnknownMember, .. }
        ));
    }

    #[test]
    fn commits_are_fenced_by_member_and_epoch_and_never_go_down() {
        let mut w = World::new(4);
        let e1 = w.join("m1");
        w.join("m2");
        w.release_revoked("m1");
        let m1 = w.member("m1").clone();
        let mine = *m1.assigned.keys().next().map(|(_, p)| p).unwrap();
        let theirs = *w.assigned("m2").iter().next().unwrap();
        // m1 commits what it holds, at the epoch it knows.
        assert!(matches!(w.commit("m1", m1.epoch, mine, 10), Response::Group(GroupResponse::Committed(_))));
        // Below the committed offset: ignored, the answer says where it is.
        match w.commit("m1", m1.epoch, mine, 5) {
            Response::Group(GroupResponse::Committed(c)) => assert_eq!(c, vec![(("t".into(), mine), 10)]),
            r => panic!("{r:?}"),
        }
        // A partition it gave up (held by m2 now): refused.
        assert!(matches!(w.commit("m1", e1, theirs, 3), Response::Error { code: ErrorCode::StaleMemberEpoch, .. }));
        assert!(matches!(w.commit("nobody", 9, mine, 3), Response::Error { code: ErrorCode::UnknownMember, .. }));
        // From outside the group while it has members: refused.
        let outside = w.op(GroupOp::Commit { member: None, offsets: vec![(("t".into(), mine), 1, String::new())] });
        assert!(matches!(outside, Response::Error { code: ErrorCode::GroupNotEmpty, .. }));
        // Unknown topic or partition: refused, nothing created.
        let r = w.op(GroupOp::Commit { member: None, offsets: vec![(("t".into(), 99), 1, String::new())] });
        assert!(matches!(r, Response::Error { code: ErrorCode::UnknownPartition, .. }));
        assert_eq!(w.group().offsets[&("t".to_string(), mine)].offset, 10);
    }

    #[test]
    fn an_online_reset_moves_offsets_back_and_fences_commits_of_the_old_position() {
        let mut w = World::new(2);
        let e = w.join("m1");
        assert!(matches!(w.commit("m1", e, 0, 100), Response::Group(_)));
        assert_eq!(w.op(GroupOp::Reset { offsets: vec![(("t".into(), 0), 40)] }), Response::Ok);
        assert_eq!(w.group().offsets[&("t".to_string(), 0)].offset, 40);
        let m = w.member("m1").clone();
        assert!(m.epoch > e);
        assert_eq!(m.assigned[&("t".to_string(), 0)], m.epoch, "partition 0 granted again");
        // The member's commit of its old position, at the old epoch: refused.
        assert!(matches!(w.commit("m1", e, 0, 101), Response::Error { code: ErrorCode::StaleMemberEpoch, .. }));
        // Partition 1 was not reset: its commits at the old epoch still go through.
        assert!(matches!(w.commit("m1", e, 1, 7), Response::Group(_)));
        // Once the member took the new epoch, it commits from the new position.
        assert!(matches!(w.commit("m1", m.epoch, 0, 41), Response::Group(_)));
        assert_eq!(w.group().offsets[&("t".to_string(), 0)].offset, 41);
    }

    #[test]
    fn the_range_assignor_gives_contiguous_ranges() {
        let mut w = World::new(5);
        w.join_in("a", "", Assignor::Range);
        w.join_in("b", "", Assignor::Range);
        assert_eq!(w.member("a").target.iter().map(|(_, p)| *p).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(w.member("b").target.iter().map(|(_, p)| *p).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(w.group().assignor, Assignor::Range);
    }

    #[test]
    fn the_uniform_assignor_prefers_a_member_in_a_replicas_zone() {
        let w = World::new(6);
        // Partition p's one replica is on some node; record each partition's zone.
        let zone_of: BTreeMap<PartitionId, String> = w
            .state
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| (p.partition, w.state.brokers()[&p.replicas[0]].labels.zone.clone()))
            .collect();
        // Three members that join together (no earlier targets to stick to), in zones
        // a, b and c.
        let (topics, brokers) = (w.state.topics().clone(), w.state.brokers().clone());
        let mut g = ConsumerGroup::default();
        for (id, zone) in [("ma", "a"), ("mb", "b"), ("mc", "c")] {
            g.members.insert(
                id.into(),
                Member {
                    client: String::new(),
                    zone: zone.into(),
                    topics: ["t".to_string()].into(),
                    session_timeout_ms: 10_000,
                    epoch: 0,
                    assigned: BTreeMap::new(),
                    target: BTreeSet::new(),
                },
            );
        }
        settle(&mut g, &topics, &brokers);
        for (id, m) in &g.members {
            assert_eq!(m.assigned.len(), 2, "{id}");
            for (_, p) in m.assigned.keys() {
                assert_eq!(zone_of[p], m.zone, "{id} got {p}, whose replica is in zone {}", zone_of[p]);
            }
        }
    }

    #[test]
    fn a_group_with_members_is_not_deleted_and_a_deleted_topic_takes_its_offsets() {
        let mut w = World::new(3);
        let e = w.join("m1");
        assert!(matches!(w.commit("m1", e, 2, 9), Response::Group(_)));
        assert!(matches!(w.op(GroupOp::Delete), Response::Error { code: ErrorCode::GroupNotEmpty, .. }));
        assert_eq!(w.run(Command::DeleteTopic { name: "t".into() }), Response::Ok);
        assert!(w.group().offsets.is_empty());
        assert!(w.member("m1").assigned.is_empty(), "nothing left to read");
        w.op(GroupOp::Leave { member: "m1".into(), reason: "done".into() });
        assert_eq!(w.op(GroupOp::Delete), Response::Ok);
        assert!(w.state.group("g").is_none());
        assert!(matches!(w.op(GroupOp::Delete), Response::Error { code: ErrorCode::UnknownGroup, .. }));
    }

    #[test]
    fn committed_offsets_are_bounded_in_the_cluster() {
        let mut w = World::new(4);
        // Fill the cluster's offsets up to one short of the limit with stand-in groups.
        let filler: BTreeMap<TopicPartition, Committed> = (0..limits::GROUP_OFFSETS_MAX as u32 - 1)
            .map(|i| (("t".to_string(), i), Committed { offset: 0, metadata: String::new() }))
            .collect();
        w.state.groups.insert("filler".into(), ConsumerGroup { offsets: filler, ..ConsumerGroup::default() });
        let commit = |p| GroupOp::Commit { member: None, offsets: vec![(("t".into(), p), 1, String::new())] };
        assert!(matches!(w.op(commit(0)), Response::Group(_)), "the last one fits");
        assert!(matches!(w.op(commit(0)), Response::Group(_)), "an existing offset is no new one");
        let r = w.op(commit(1));
        assert!(matches!(r, Response::Error { code: ErrorCode::PolicyViolation, .. }), "{r:?}");
    }

    #[test]
    fn joins_are_checked() {
        let mut w = World::new(1);
        let r = w.op(GroupOp::Join {
            member: "m".into(),
            client: "c".into(),
            zone: "".into(),
            topics: ["t".to_string()].into(),
            session_timeout_ms: 10,
            assignor: Assignor::Uniform,
        });
        assert!(matches!(r, Response::Error { code: ErrorCode::InvalidRequest, .. }), "{r:?}");
        assert!(w.state.group("g").is_none(), "a refused join creates nothing");
        let r = w.run(Command::Group { name: "bad name".into(), op: GroupOp::Delete });
        assert!(matches!(r, Response::Error { code: ErrorCode::InvalidRequest, .. }));
    }
}
