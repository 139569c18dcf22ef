//! The placement planner: which brokers host a partition's replicas and which replica is
//! the preferred leader, for new topics ([`place_topic`]) and for the whole cluster as it
//! changes ([`plan`]).
//!
//! Pure and deterministic: it reads brokers, topics and load and returns a placement or a
//! plan. No clock, randomness, I/O or hash-map iteration; every tie breaks by node id.
//! Failure domains nest region › zone › rack › node (a zone is named by its region and
//! zone label, a rack by its zone and rack label).
//!
//! A broker is *eligible* for a topic's new replicas when it is active and alive
//! ([`Broker::accepts_replicas`]) and the topic's policy allows it: its region is among
//! `allowed_regions` (if any are listed), it is not in `excluded_nodes` and its zone is not
//! in `excluded_zones`. Suspected brokers receive nothing new but keep their replicas.
//!
//! Hard constraints, in order:
//! 1. A partition's replicas are on distinct brokers, new ones on eligible brokers only.
//!    Fewer eligible brokers than the replication factor refuses the topic with a reason
//!    naming why the others are excluded.
//! 2. Replicas are in distinct zones while the eligible brokers span enough zones; beyond
//!    that they spread over zones as evenly as they can (rf 5 over 3 zones: 2, 2, 1). A
//!    balancing move never makes a partition's zone spread worse; only a repair may, when no
//!    broker in another zone can take the replica, and a later plan spreads it again.
//! 3. The preferred leader (`replicas[0]`) is in the topic's `preferred_leader_region`
//!    whenever one of the partition's replicas there is on an eligible broker.
//!
//! Soft goals, in order:
//! 1. Distinct racks within a zone.
//! 2. Preferred leaders on eligible (alive, active, allowed) brokers.
//! 3. Even replica counts per eligible broker (within one where the zone constraint allows).
//! 4. Even preferred-leader counts per broker that can lead (within one where reachable).
//! 5. Least data moved: a repair replaces only the replica that must leave, at most
//!    `max_new_moves` partitions start moving per plan, and a partition already moving is
//!    left alone until its move finishes.
//!
//! [`plan`] works in four steps, each seeing the load left by the ones before: repair
//! replicas on dead, removed, draining or disallowed brokers; fix replication factors and
//! zone spread; balance replica counts (only while no broker is suspected or dead); balance
//! preferred leaders. Every change to one partition merges into one [`Action`], so one plan never
//! starts two moves of the same partition.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_types::{GroupId, NodeId, PartitionId};
use serde::{Deserialize, Serialize};

use crate::{AdminState, Broker, Command, Liveness, MetadataState, PartitionAssignment, Topic, TopicPolicy};

/// How many replicas and preferred leaderships a broker has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Replicas it hosts (move targets count).
    pub replicas: u64,
    /// Partitions whose preferred leader (`replicas[0]`) it is.
    pub leaders: u64,
}

/// Why a topic's partitions cannot be placed. The text is shown to operators as the reason
/// a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer eligible brokers than the replication factor.
    NotEnoughBrokers {
        replication_factor: u32,
        /// How many brokers are eligible.
        eligible: usize,
        /// Why each other broker is not, e.g. "node 4 is draining".
        excluded: Vec<String>,
    },
    /// A replication factor of 0.
    ZeroReplicationFactor,
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NotEnoughBrokers { replication_factor: rf, eligible, excluded } => {
                let verb = if *eligible == 1 { "is" } else { "are" };
                write!(f, "replication factor {rf} needs {rf} eligible brokers; {eligible} {verb} eligible")?;
                if !excluded.is_empty() {
                    write!(f, " ({})", join_capped(excluded, 10))?;
                }
                Ok(())
            }
            PlacementError::ZeroReplicationFactor => write!(f, "replication factor 0: a partition needs a replica"),
        }
    }
}

impl std::error::Error for PlacementError {}

/// Places `partitions` new partitions of `rf` replicas each under `policy`, given the
/// brokers' current `load`; the result lists each partition's replicas, preferred leader
/// first. The load is updated as it goes so the partitions of one topic spread evenly too.
pub fn place_topic(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    partitions: u32,
    rf: u32,
    policy: &TopicPolicy,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    if rf == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    let not_enough = || PlacementError::NotEnoughBrokers {
        replication_factor: rf,
        eligible: brokers.values().filter(|b| eligible(b, policy)).count(),
        excluded: brokers.values().filter_map(|b| why_ineligible(b, policy)).collect(),
    };
    if brokers.values().filter(|b| eligible(b, policy)).count() < rf as usize {
        return Err(not_enough());
    }
    let mut load = working_load(brokers, load);
    let mut plan = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let replicas = place_one(brokers, &load, rf as usize, policy).ok_or_else(not_enough)?;
        add_load(&mut load, &replicas);
        plan.push(replicas);
    }
    Ok(plan)
}

/// Why `broker` may not receive a new replica of a topic with `policy` ("node 4 is
/// draining", "node 6 is outside the allowed regions [eu]"), or `None` if it may.
pub fn why_ineligible(broker: &Broker, policy: &TopicPolicy) -> Option<String> {
    if !broker.accepts_replicas() {
        return Some(format!("node {} is {}", broker.id, broker.state_name()));
    }
    policy_violation(broker, policy)
}

/// Checks an operator's replica set against the hard constraints: every new replica on
/// an eligible node, and as many distinct zones as the eligible nodes allow. `current`
/// replicas may stay where they are.
pub fn check_replica_set(
    brokers: &BTreeMap<NodeId, Broker>,
    policy: &TopicPolicy,
    current: &[NodeId],
    target: &[NodeId],
) -> Result<(), String> {
    for n in target {
        let b = brokers.get(n).ok_or_else(|| format!("node {n} is not registered"))?;
        if !current.contains(n)
            && let Some(why) = why_ineligible(b, policy)
        {
            return Err(why);
        }
    }
    let zones_in_target: std::collections::BTreeSet<&str> =
        target.iter().filter_map(|n| brokers.get(n)).map(|b| b.labels.zone.as_str()).collect();
    let zones_available: std::collections::BTreeSet<&str> = brokers
        .values()
        .filter(|b| why_ineligible(b, policy).is_none() || target.contains(&b.id))
        .map(|b| b.labels.zone.as_str())
        .collect();
    let want = target.len().min(zones_available.len());
    if zones_in_target.len() < want {
        return Err(format!(
            "replicas {target:?} span {} zones {zones_in_target:?}; {want} distinct zones are possible ({zones_available:?})",
            zones_in_target.len()
        ));
    }
    Ok(())
}

/// One partition: the leader first, then the others spread over zones and racks.
fn place_one(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    rf: usize,
    policy: &TopicPolicy,
) -> Option<Vec<NodeId>> {
    let mut chosen = vec![pick_leader(brokers, load, policy)?];
    while chosen.len() < rf {
        chosen.push(pick_replica(brokers, load, policy, &chosen)?);
    }
    Some(chosen)
}

/// The preferred leader of a new partition: an eligible broker in the preferred leader
/// region if there is one, else any eligible broker; fewest leaderships, then fewest
/// replicas, then id.
fn pick_leader(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    policy: &TopicPolicy,
) -> Option<NodeId> {
    let pool: Vec<&Broker> = brokers.values().filter(|b| eligible(b, policy)).collect();
    let in_region: Vec<&Broker> = match &policy.preferred_leader_region {
        Some(r) => pool.iter().copied().filter(|b| &b.labels.region == r).collect(),
        None => Vec::new(),
    };
    let pool = if in_region.is_empty() { pool } else { in_region };
    pool.iter()
        .min_by_key(|b| {
            let l = load_of(load, b.id);
            (l.leaders, l.replicas, b.id)
        })
        .map(|b| b.id)
}

/// One more replica next to `chosen`: an eligible broker not yet chosen, in the zone, then
/// the rack, holding the fewest of `chosen`; then fewest replicas, fewest leaders, id.
fn pick_replica(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    policy: &TopicPolicy,
    chosen: &[NodeId],
) -> Option<NodeId> {
    brokers
        .values()
        .filter(|b| !chosen.contains(&b.id) && eligible(b, policy))
        .min_by_key(|b| {
            let (zone, rack) = overlap(brokers, chosen, b);
            let l = load_of(load, b.id);
            (zone, rack, l.replicas, l.leaders, b.id)
        })
        .map(|b| b.id)
}

/// The position of the replica to drop when a partition has too many: first one on a
/// broker that may not hold it, then one whose zone and rack are most repeated, then the
/// most loaded broker, sparing the preferred leader, then the highest id.
fn pick_removal(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    policy: &TopicPolicy,
    replicas: &[NodeId],
) -> Option<usize> {
    (0..replicas.len()).max_by_key(|&pos| {
        let node = replicas[pos];
        let others: Vec<NodeId> = replicas.iter().copied().filter(|n| *n != node).collect();
        let broker = brokers.get(&node);
        let unfit = broker.is_none_or(|b| !eligible(b, policy));
        let (zone, rack) = broker.map(|b| overlap(brokers, &others, b)).unwrap_or_default();
        (unfit, zone, rack, load_of(load, node).replicas, pos != 0, node)
    })
}

/// May receive a new replica (and lead) for a topic with `policy`.
fn eligible(b: &Broker, policy: &TopicPolicy) -> bool {
    b.accepts_replicas() && policy_allows(b, policy)
}

/// Whether `b` may stay or become a preferred leader: active, not dead, allowed by the
/// policy. A suspected broker keeps its preferred leaderships: a lease that runs out
/// under load must not rewrite thousands of preferences (its partition groups elect
/// other leaders meanwhile, and hand leadership back once it is alive).
fn can_lead(b: &Broker, policy: &TopicPolicy) -> bool {
    b.admin == AdminState::Active && b.liveness != Liveness::Dead && policy_allows(b, policy)
}

/// Whether `policy` allows a replica on `b` (the same test as [`policy_violation`], without
/// building the text).
fn policy_allows(b: &Broker, policy: &TopicPolicy) -> bool {
    !policy.excluded_nodes.contains(&b.id)
        && !policy.excluded_zones.contains(&b.labels.zone)
        && (policy.allowed_regions.is_empty() || policy.allowed_regions.contains(&b.labels.region))
}

/// How `b` breaks `policy`, if it does.
fn policy_violation(b: &Broker, policy: &TopicPolicy) -> Option<String> {
    if policy.excluded_nodes.contains(&b.id) {
        return Some(format!("node {} is excluded by the topic's policy", b.id));
    }
    if policy.excluded_zones.contains(&b.labels.zone) {
        return Some(format!("node {} is in excluded zone {}", b.id, b.labels.zone));
    }
    if !policy.allowed_regions.is_empty() && !policy.allowed_regions.contains(&b.labels.region) {
        return Some(format!("node {} is outside the allowed regions [{}]", b.id, policy.allowed_regions.join(", ")));
    }
    None
}

/// Why a replica on `node` must move elsewhere: its broker is unknown, removed, draining or
/// dead, or breaks the topic's policy. A suspected broker keeps its replicas.
fn leave_reason(brokers: &BTreeMap<NodeId, Broker>, node: NodeId, policy: &TopicPolicy) -> Option<String> {
    let Some(b) = brokers.get(&node) else { return Some(format!("node {node} is not registered")) };
    if b.admin != AdminState::Active || b.liveness == Liveness::Dead {
        return Some(format!("node {node} is {}", b.state_name()));
    }
    policy_violation(b, policy)
}

/// A zone: region and zone label.
fn zone_of(b: &Broker) -> (&str, &str) {
    (&b.labels.region, &b.labels.zone)
}

/// How many of `chosen` share `candidate`'s zone, and how many its rack.
fn overlap(brokers: &BTreeMap<NodeId, Broker>, chosen: &[NodeId], candidate: &Broker) -> (usize, usize) {
    let mut zone = 0;
    let mut rack = 0;
    for b in chosen.iter().filter_map(|id| brokers.get(id)) {
        if zone_of(b) == zone_of(candidate) {
            zone += 1;
            if b.labels.rack == candidate.labels.rack {
                rack += 1;
            }
        }
    }
    (zone, rack)
}

/// Whether replacing `from` by `to` in `replicas` keeps them spread over zones at least as
/// well: the zone `to` joins ends with no more replicas than the zone `from` leaves had. So
/// the number of distinct zones never drops.
fn keeps_spread(brokers: &BTreeMap<NodeId, Broker>, replicas: &[NodeId], from: NodeId, to: &Broker) -> bool {
    let Some(from) = brokers.get(&from) else { return true };
    if zone_of(from) == zone_of(to) {
        return true;
    }
    overlap(brokers, replicas, to).0 < overlap(brokers, replicas, from).0
}

/// Whether replacing `before` by `after` keeps a replica that can lead in the preferred
/// leader region, if `before` had one.
fn keeps_leader_region(
    brokers: &BTreeMap<NodeId, Broker>,
    policy: &TopicPolicy,
    before: &[NodeId],
    after: &[NodeId],
) -> bool {
    let Some(region) = &policy.preferred_leader_region else { return true };
    let in_region = |replicas: &[NodeId]| {
        replicas
            .iter()
            .filter_map(|id| brokers.get(id))
            .filter(|b| &b.labels.region == region && eligible(b, policy))
            .count()
    };
    in_region(before) == 0 || in_region(after) > 0
}

/// Every broker's load, zero for brokers without replicas.
fn working_load(brokers: &BTreeMap<NodeId, Broker>, load: &BTreeMap<NodeId, Load>) -> BTreeMap<NodeId, Load> {
    let mut out: BTreeMap<NodeId, Load> = brokers.keys().map(|id| (*id, Load::default())).collect();
    out.extend(load.iter().map(|(id, l)| (*id, *l)));
    out
}

fn load_of(load: &BTreeMap<NodeId, Load>, node: NodeId) -> Load {
    load.get(&node).copied().unwrap_or_default()
}

fn add_load(load: &mut BTreeMap<NodeId, Load>, replicas: &[NodeId]) {
    for (i, r) in replicas.iter().enumerate() {
        let l = load.entry(*r).or_default();
        l.replicas += 1;
        if i == 0 {
            l.leaders += 1;
        }
    }
}

fn remove_load(load: &mut BTreeMap<NodeId, Load>, replicas: &[NodeId]) {
    for (i, r) in replicas.iter().enumerate() {
        if let Some(l) = load.get_mut(r) {
            l.replicas = l.replicas.saturating_sub(1);
            if i == 0 {
                l.leaders = l.leaders.saturating_sub(1);
            }
        }
    }
}

/// Puts `new` where the replica at `pos` was removed from `rest`; a new replica never
/// becomes preferred leader: if the leader left, the next replica leads and `new` goes last.
fn substitute(mut rest: Vec<NodeId>, pos: usize, new: NodeId) -> Vec<NodeId> {
    if pos == 0 {
        rest.push(new);
    } else {
        rest.insert(pos.min(rest.len()), new);
    }
    rest
}

/// `items` joined by ", ", at most `cap` of them and a count of the rest.
fn join_capped(items: &[String], cap: usize) -> String {
    let mut out = items.iter().take(cap).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > cap {
        out.push_str(&format!(", and {} more", items.len() - cap));
    }
    out
}

/// "[1,2,3]".
fn node_list(nodes: &[NodeId]) -> String {
    let inner: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    format!("[{}]", inner.join(","))
}

/// Why no broker can take a replica of a partition now on `replicas`.
fn no_eligible_broker(brokers: &BTreeMap<NodeId, Broker>, policy: &TopicPolicy, replicas: &[NodeId]) -> String {
    let hosts: Vec<String> = brokers
        .values()
        .filter(|b| replicas.contains(&b.id) && eligible(b, policy))
        .map(|b| b.id.to_string())
        .collect();
    let mut parts = Vec::new();
    match hosts.len() {
        0 => {}
        1 => parts.push(format!("node {} already hosts it", hosts[0])),
        _ => parts.push(format!("nodes {} already host it", hosts.join(", "))),
    }
    parts.extend(brokers.values().filter(|b| !replicas.contains(&b.id)).filter_map(|b| why_ineligible(b, policy)));
    if parts.is_empty() {
        return "no other broker is registered".into();
    }
    join_capped(&parts, 8)
}

/// What the planner proposes: actions to write to the metadata log, and what it could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// At most one per partition, repairs first.
    pub actions: Vec<Action>,
    /// What could not be done and why ("t/4: node 3 is dead, and no eligible broker can
    /// take its replica (...)"), or what waits ("replica balance waits while node 2 is dead").
    pub notes: Vec<String>,
}

/// One change the planner proposes for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Move a partition's replica set (becomes a StartMove command).
    Move { topic: String, partition: PartitionId, group: GroupId, from: Vec<NodeId>, to: Vec<NodeId>, reason: String },
    /// Make `to` the preferred leader (same replica set; becomes SetPreferredLeader).
    PreferLeader { topic: String, partition: PartitionId, group: GroupId, from: NodeId, to: NodeId, reason: String },
}

impl Action {
    /// The partition's Raft group.
    pub fn group(&self) -> GroupId {
        match self {
            Action::Move { group, .. } | Action::PreferLeader { group, .. } => *group,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        match self {
            Action::Move { topic, .. } | Action::PreferLeader { topic, .. } => topic,
        }
    }

    /// Why, for operators.
    pub fn reason(&self) -> &str {
        match self {
            Action::Move { reason, .. } | Action::PreferLeader { reason, .. } => reason,
        }
    }

    /// The metadata command that carries it out: `StartMove` or `SetPreferredLeader`.
    pub fn command(&self) -> Command {
        match self {
            Action::Move { group, to, reason, .. } => {
                Command::StartMove { group: *group, target: to.clone(), reason: reason.clone() }
            }
            Action::PreferLeader { group, to, .. } => Command::SetPreferredLeader { group: *group, leader: *to },
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Move { topic, partition, group, from, to, reason } => {
                write!(f, "{topic}/{partition} (group {group}): {} -> {}: {reason}", node_list(from), node_list(to))
            }
            Action::PreferLeader { topic, partition, group, from, to, reason } => {
                write!(f, "{topic}/{partition} (group {group}): leader {from} -> {to}: {reason}")
            }
        }
    }
}

/// Proposes what to change in `state`: repairs, replication factor and zone spread changes,
/// replica balance and leader balance, in that order. At most `max_new_moves` partitions
/// get a `Move`; `PreferLeader` actions are not limited (they move no data). Partitions
/// already moving are left alone. A balanced, healthy cluster gets an empty plan, and
/// applying a plan and planning again converges to one with no actions (the notes may still
/// say what waits, e.g. for a dead broker to be removed).
pub fn plan(state: &MetadataState, max_new_moves: usize) -> Plan {
    let mut planner = Planner::new(state, max_new_moves);
    planner.repair();
    planner.fix_replication_factors();
    planner.spread_zones();
    planner.balance_replicas();
    planner.balance_leaders();
    planner.finish()
}

/// A partition the planner may change (not moving when planning began).
struct Slot<'a> {
    topic: &'a Topic,
    assignment: &'a PartitionAssignment,
    /// The replicas as planned so far; `cur[0]` is the preferred leader.
    cur: Vec<NodeId>,
    /// Why the replica set changes.
    set_reasons: Vec<String>,
    /// Why the preferred leader changes.
    leader_reasons: Vec<String>,
    /// Whether it took one of the plan's new moves.
    counted: bool,
    /// When it first changed, so actions list in the order they were decided.
    first_change: Option<usize>,
}

impl<'a> Slot<'a> {
    fn new(topic: &'a Topic, assignment: &'a PartitionAssignment) -> Slot<'a> {
        Slot {
            topic,
            assignment,
            cur: assignment.replicas.clone(),
            set_reasons: Vec::new(),
            leader_reasons: Vec::new(),
            counted: false,
            first_change: None,
        }
    }

    fn policy(&self) -> &'a TopicPolicy {
        &self.topic.policy
    }

    /// "t/3".
    fn label(&self) -> String {
        format!("{}/{}", self.topic.name, self.assignment.partition)
    }

    /// The action that takes the partition from its replicas to `cur`, if any.
    fn action(&self) -> Option<Action> {
        let from = &self.assignment.replicas;
        let (topic, partition, group) = (self.topic.name.clone(), self.assignment.partition, self.assignment.group);
        let sorted = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
        if sorted(from) != sorted(&self.cur) || from.len() != self.cur.len() {
            let reasons: Vec<String> = self.set_reasons.iter().chain(&self.leader_reasons).cloned().collect();
            return Some(Action::Move {
                topic,
                partition,
                group,
                from: from.clone(),
                to: self.cur.clone(),
                reason: reasons.join("; "),
            });
        }
        let (old, new) = (*from.first()?, *self.cur.first()?);
        if old == new {
            return None;
        }
        let reasons = if self.leader_reasons.is_empty() { &self.set_reasons } else { &self.leader_reasons };
        Some(Action::PreferLeader { topic, partition, group, from: old, to: new, reason: reasons.join("; ") })
    }
}

/// What one round of the replica balance found.
enum BalanceStep {
    /// Move the replica of slot `.0` on node `.1` to node `.2`.
    Found(usize, NodeId, NodeId),
    /// Every improving move needs a new move and none are left.
    Blocked,
    /// No move improves the balance without breaking a constraint.
    Balanced,
}

/// The planner's running state: the partitions as planned so far and the load they make.
struct Planner<'a> {
    brokers: &'a BTreeMap<NodeId, Broker>,
    load: BTreeMap<NodeId, Load>,
    slots: Vec<Slot<'a>>,
    max_moves: usize,
    moves_left: usize,
    changes: usize,
    notes: Vec<String>,
}

impl<'a> Planner<'a> {
    fn new(state: &'a MetadataState, max_moves: usize) -> Planner<'a> {
        let brokers = state.brokers();
        let slots = state
            .topics()
            .values()
            .flat_map(|t| t.partitions.iter().filter(|p| p.moving.is_none()).map(move |p| Slot::new(t, p)))
            .collect();
        Planner {
            brokers,
            load: working_load(brokers, &state.replica_load()),
            slots,
            max_moves,
            moves_left: max_moves,
            changes: 0,
            notes: Vec::new(),
        }
    }

    fn load(&self, node: NodeId) -> Load {
        load_of(&self.load, node)
    }

    /// Whether slot `i` may change its replica set: it already took a move, or one is left.
    fn may_move(&self, i: usize) -> bool {
        self.slots[i].counted || self.moves_left > 0
    }

    /// Sets slot `i`'s replicas, updating the load.
    fn set(&mut self, i: usize, next: Vec<NodeId>) {
        let slot = &mut self.slots[i];
        remove_load(&mut self.load, &slot.cur);
        add_load(&mut self.load, &next);
        slot.cur = next;
        if slot.first_change.is_none() {
            slot.first_change = Some(self.changes);
            self.changes += 1;
        }
    }

    /// Changes slot `i`'s replica set, taking one of the plan's moves if it has none yet.
    fn change_set(&mut self, i: usize, next: Vec<NodeId>, reason: String) {
        if !self.slots[i].counted {
            self.slots[i].counted = true;
            self.moves_left = self.moves_left.saturating_sub(1);
        }
        push_reason(&mut self.slots[i].set_reasons, reason);
        self.set(i, next);
    }

    /// Makes `leader` slot `i`'s preferred leader, the others keeping their order.
    fn change_leader(&mut self, i: usize, leader: NodeId, reason: String) {
        let mut next = self.slots[i].cur.clone();
        let Some(pos) = next.iter().position(|n| *n == leader) else { return };
        let l = next.remove(pos);
        next.insert(0, l);
        push_reason(&mut self.slots[i].leader_reasons, reason);
        self.set(i, next);
    }

    /// Step a: replaces each replica on a dead, removed, draining, unknown or disallowed
    /// broker by one eligible broker, preferring a zone the other replicas do not use.
    fn repair(&mut self) {
        let brokers = self.brokers;
        let mut waiting = 0;
        for i in 0..self.slots.len() {
            let policy = self.slots[i].policy();
            let leaving: Vec<(NodeId, String)> =
                self.slots[i].cur.iter().filter_map(|n| leave_reason(brokers, *n, policy).map(|r| (*n, r))).collect();
            for (node, reason) in leaving {
                if !self.may_move(i) {
                    waiting += 1;
                    break;
                }
                let cur = &self.slots[i].cur;
                let Some(pos) = cur.iter().position(|n| *n == node) else { continue };
                let mut rest = cur.clone();
                rest.remove(pos);
                match pick_replica(brokers, &self.load, policy, &rest) {
                    Some(new) => self.change_set(i, substitute(rest, pos, new), reason),
                    None => {
                        let why = no_eligible_broker(brokers, policy, cur);
                        let label = self.slots[i].label();
                        self.notes
                            .push(format!("{label}: {reason}, and no eligible broker can take its replica ({why})"));
                    }
                }
            }
        }
        self.note_waiting(waiting, "leave unavailable or disallowed brokers");
    }

    /// Step b: adds or removes replicas until each partition has its topic's replication factor.
    fn fix_replication_factors(&mut self) {
        let mut waiting = 0;
        for i in 0..self.slots.len() {
            let want = self.slots[i].topic.replication_factor as usize;
            let have = self.slots[i].cur.len();
            if want == 0 || want == have {
                continue;
            }
            if !self.may_move(i) {
                waiting += 1;
                continue;
            }
            let next = if have < want { self.grown(i, want) } else { self.shrunk(i, want) };
            if next.len() != have {
                self.change_set(i, next, format!("replication factor {have} -> {want}"));
            }
        }
        self.note_waiting(waiting, "change their replication factor");
    }

    /// Slot `i`'s replicas plus as many as it lacks (or as many as there are eligible brokers).
    fn grown(&mut self, i: usize, want: usize) -> Vec<NodeId> {
        let policy = self.slots[i].policy();
        let mut next = self.slots[i].cur.clone();
        while next.len() < want {
            match pick_replica(self.brokers, &self.load, policy, &next) {
                Some(n) => next.push(n),
                None => {
                    let why = no_eligible_broker(self.brokers, policy, &next);
                    let (label, have) = (self.slots[i].label(), self.slots[i].cur.len());
                    self.notes.push(format!(
                        "{label}: replication factor {have} -> {want} lacks {} eligible brokers ({why})",
                        want - next.len()
                    ));
                    break;
                }
            }
        }
        next
    }

    /// Slot `i`'s replicas less those whose removal best keeps the zone spread.
    fn shrunk(&self, i: usize, want: usize) -> Vec<NodeId> {
        let policy = self.slots[i].policy();
        let mut next = self.slots[i].cur.clone();
        while next.len() > want {
            let Some(pos) = pick_removal(self.brokers, &self.load, policy, &next) else { break };
            next.remove(pos);
        }
        next
    }

    /// Step b, continued: spreads each partition over zones as evenly as the eligible brokers
    /// allow (after a zone is added, a broker relabelled, or a repair that had to double up in
    /// a zone): moves a replica out of a zone holding at least two more of the partition's
    /// replicas than a zone with a free eligible broker.
    fn spread_zones(&mut self) {
        let mut waiting = 0;
        for i in 0..self.slots.len() {
            let n = self.slots[i].cur.len();
            // Each move lowers the sum of squared per-zone counts; the cap is a guard.
            for _ in 0..n * n + 1 {
                let Some((from, to, reason)) = self.zone_spread_move(i) else { break };
                if !self.may_move(i) {
                    waiting += 1;
                    break;
                }
                self.replace_replica(i, from, to, reason);
            }
        }
        self.note_waiting(waiting, "spread over zones");
    }

    /// The move that best evens slot `i`'s zones, if one is needed: from the replica in the
    /// most crowded zone to the eligible broker in the emptiest one.
    fn zone_spread_move(&self, i: usize) -> Option<(NodeId, NodeId, String)> {
        let brokers = self.brokers;
        let cur = &self.slots[i].cur;
        let to = brokers.get(&pick_replica(brokers, &self.load, self.slots[i].policy(), cur)?)?;
        let (from_pos, from) =
            cur.iter().enumerate().filter_map(|(pos, n)| brokers.get(n).map(|b| (pos, b))).max_by_key(|(pos, b)| {
                let (zone, rack) = overlap(brokers, cur, b);
                (zone, rack, self.load(b.id).replicas, *pos != 0, b.id)
            })?;
        let (crowded, empty) = (overlap(brokers, cur, from).0, overlap(brokers, cur, to).0);
        if crowded < empty + 2 {
            return None;
        }
        let reason = format!(
            "spread zones: zone {} has {crowded} replicas, zone {} has {empty}",
            from.labels.zone, to.labels.zone
        );
        Some((cur[from_pos], to.id, reason))
    }

    /// Notes that `count` partitions wait for a later plan to `what`, if any do.
    fn note_waiting(&mut self, count: usize, what: &str) {
        if count > 0 {
            self.notes.push(format!(
                "{count} partitions wait for a later plan to {what} (at most {} new moves per plan)",
                self.max_moves
            ));
        }
    }

    /// Step c: moves replicas from more to less loaded eligible brokers while that narrows
    /// the spread, never reducing a partition's zones. Waits while a broker is suspected or
    /// dead: its replicas may still come back or be repaired.
    fn balance_replicas(&mut self) {
        let unhealthy: Vec<String> = self
            .brokers
            .values()
            .filter(|b| b.admin != AdminState::Removed && b.liveness != Liveness::Alive)
            .map(|b| format!("node {} is {}", b.id, liveness_name(b.liveness)))
            .collect();
        if !unhealthy.is_empty() {
            self.notes.push(format!("replica balance waits while {}", join_capped(&unhealthy, 8)));
            return;
        }
        // Every move lowers the sum of squared replica counts, so this ends; the cap is a guard.
        let total: u64 = self.load.values().map(|l| l.replicas).sum();
        let cap = usize::try_from(total).unwrap_or(usize::MAX).saturating_mul(4).max(64);
        // Pairs (from, to) with no partition that may move between them; a pair stays stuck
        // until a partition on `from` changes.
        let mut stuck: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
        for _ in 0..cap {
            match self.find_balance_move(&mut stuck) {
                BalanceStep::Found(i, from, to) => {
                    let before = self.slots[i].cur.clone();
                    self.move_replica(i, from, to);
                    let touched: BTreeSet<NodeId> =
                        before.into_iter().chain(self.slots[i].cur.iter().copied()).collect();
                    stuck.retain(|(f, _)| !touched.contains(f));
                }
                BalanceStep::Blocked => {
                    self.notes.push(format!(
                        "replica balance continues in a later plan (at most {} new moves per plan)",
                        self.max_moves
                    ));
                    return;
                }
                BalanceStep::Balanced => return,
            }
        }
    }

    /// The best replica move: from the most loaded eligible broker to the least loaded one
    /// that can take one of its partitions, while their counts differ by more than one.
    fn find_balance_move(&self, stuck: &mut BTreeSet<(NodeId, NodeId)>) -> BalanceStep {
        let mut light: Vec<(u64, NodeId)> =
            self.brokers.values().filter(|b| b.accepts_replicas()).map(|b| (self.load(b.id).replicas, b.id)).collect();
        light.sort_unstable();
        let mut heavy = light.clone();
        heavy.sort_unstable_by_key(|(count, id)| (Reverse(*count), *id));
        let by_node = self.slots_by_node();
        let mut blocked = false;
        for &(high, from) in &heavy {
            for &(low, to) in &light {
                if high <= low + 1 {
                    break;
                }
                if stuck.contains(&(from, to)) {
                    continue;
                }
                match self.partition_to_move(&by_node, from, to) {
                    Ok(i) => return BalanceStep::Found(i, from, to),
                    Err(true) => blocked = true,
                    Err(false) => {
                        stuck.insert((from, to));
                    }
                }
            }
        }
        if blocked { BalanceStep::Blocked } else { BalanceStep::Balanced }
    }

    /// For each node, the slots with a replica on it.
    fn slots_by_node(&self) -> BTreeMap<NodeId, Vec<usize>> {
        let mut out: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            for n in &slot.cur {
                out.entry(*n).or_default().push(i);
            }
        }
        out
    }

    /// A slot whose replica on `from` may go to `to`: not the preferred leader if possible,
    /// keeping racks distinct if possible, one already moving in this plan if possible.
    /// `Err(true)` if some could but no new move is left.
    fn partition_to_move(
        &self,
        by_node: &BTreeMap<NodeId, Vec<usize>>,
        from: NodeId,
        to: NodeId,
    ) -> Result<usize, bool> {
        let Some(target) = self.brokers.get(&to) else { return Err(false) };
        let mut blocked = false;
        let mut best = None;
        for &i in by_node.get(&from).map(Vec::as_slice).unwrap_or_default() {
            if !self.balance_allows(i, from, target) {
                continue;
            }
            if !self.may_move(i) {
                blocked = true;
                continue;
            }
            let slot = &self.slots[i];
            let others: Vec<NodeId> = slot.cur.iter().copied().filter(|n| *n != from).collect();
            let key = (slot.cur.first() == Some(&from), overlap(self.brokers, &others, target).1, !slot.counted, i);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|(.., i)| i).ok_or(blocked)
    }

    /// Whether slot `i`'s replica on `from` may move to `to`: `to` is eligible and not a
    /// replica yet, the zones do not shrink and the leader region keeps a replica.
    fn balance_allows(&self, i: usize, from: NodeId, to: &Broker) -> bool {
        let slot = &self.slots[i];
        let policy = slot.policy();
        if slot.cur.contains(&to.id) || !keeps_spread(self.brokers, &slot.cur, from, to) || !policy_allows(to, policy) {
            return false;
        }
        if policy.preferred_leader_region.is_none() {
            return true;
        }
        let next: Vec<NodeId> = slot.cur.iter().map(|n| if *n == from { to.id } else { *n }).collect();
        keeps_leader_region(self.brokers, policy, &slot.cur, &next)
    }

    fn move_replica(&mut self, i: usize, from: NodeId, to: NodeId) {
        let reason = format!(
            "balance replicas: node {from} has {}, node {to} has {}",
            self.load(from).replicas,
            self.load(to).replicas
        );
        self.replace_replica(i, from, to, reason);
    }

    /// Replaces slot `i`'s replica on `from` by one on `to` (see [`substitute`]).
    fn replace_replica(&mut self, i: usize, from: NodeId, to: NodeId, reason: String) {
        let cur = &self.slots[i].cur;
        let Some(pos) = cur.iter().position(|n| *n == from) else { return };
        let mut rest = cur.clone();
        rest.remove(pos);
        self.change_set(i, substitute(rest, pos, to), reason);
    }

    /// Step d: preferred leaders in the preferred region and on brokers that can lead, then
    /// even leader counts.
    fn balance_leaders(&mut self) {
        self.fix_leaders();
        // Evening out waits, like replica balance, while a broker is suspected.
        if self.brokers.values().any(|b| b.liveness == Liveness::Suspected && b.admin != AdminState::Removed) {
            return;
        }
        // Every transfer lowers the sum of squared leader counts, so this ends; the cap is a guard.
        let cap = self.slots.len().saturating_mul(4).saturating_add(16);
        for _ in 0..cap {
            if !self.even_leaders_once() {
                break;
            }
        }
    }

    /// The replicas of slot `i` that should lead: those on eligible brokers in the preferred
    /// leader region if there are any, else all on eligible brokers.
    fn leader_candidates(&self, i: usize) -> Vec<NodeId> {
        let slot = &self.slots[i];
        let policy = slot.policy();
        let able: Vec<&Broker> =
            slot.cur.iter().filter_map(|n| self.brokers.get(n)).filter(|b| can_lead(b, policy)).collect();
        if let Some(region) = &policy.preferred_leader_region {
            let in_region: Vec<NodeId> = able.iter().filter(|b| &b.labels.region == region).map(|b| b.id).collect();
            if !in_region.is_empty() {
                return in_region;
            }
        }
        able.iter().map(|b| b.id).collect()
    }

    /// Moves each preferred leadership that is outside the preferred region or on a broker
    /// that cannot lead to the candidate with the fewest leaderships.
    fn fix_leaders(&mut self) {
        for i in 0..self.slots.len() {
            let candidates = self.leader_candidates(i);
            let Some(&leader) = self.slots[i].cur.first() else { continue };
            if candidates.contains(&leader) {
                continue;
            }
            let best = candidates.iter().copied().min_by_key(|n| {
                let l = self.load(*n);
                (l.leaders, l.replicas, *n)
            });
            if let Some(best) = best {
                let reason = self.leader_unfit_reason(i, leader);
                self.change_leader(i, best, reason);
            }
        }
    }

    /// Why slot `i`'s preferred leader should not lead.
    fn leader_unfit_reason(&self, i: usize, leader: NodeId) -> String {
        let policy = self.slots[i].policy();
        match self.brokers.get(&leader) {
            None => format!("node {leader} is not registered"),
            Some(b) if !b.accepts_replicas() => format!("node {leader} is {}", b.state_name()),
            Some(b) => policy_violation(b, policy).unwrap_or_else(|| {
                format!("preferred leader region {}", policy.preferred_leader_region.as_deref().unwrap_or_default())
            }),
        }
    }

    /// Hands one leadership from a broker with many to one with at least two fewer, along a
    /// chain of partitions if no direct hand-over exists. False if none improves the balance.
    fn even_leaders_once(&mut self) -> bool {
        let edges = self.leader_edges();
        let mut sources: Vec<(u64, NodeId)> =
            self.brokers.values().filter(|b| b.accepts_replicas()).map(|b| (self.load(b.id).leaders, b.id)).collect();
        sources.sort_unstable_by_key(|(count, id)| (Reverse(*count), *id));
        for (count, src) in sources {
            if count < 2 {
                break;
            }
            if let Some((path, target)) = self.leader_path(&edges, src, count) {
                let mut reason = format!(
                    "even leaders: node {src} leads {count}, node {target} leads {}",
                    self.load(target).leaders
                );
                if path.len() > 1 {
                    let via: Vec<String> = path[..path.len() - 1].iter().map(|(_, n)| n.to_string()).collect();
                    reason.push_str(&format!(" (passed on via node {})", via.join(", ")));
                }
                for (i, to) in path {
                    self.change_leader(i, to, reason.clone());
                }
                return true;
            }
        }
        false
    }

    /// For each broker that can lead, the (slot, replica) pairs it could hand a leadership to.
    fn leader_edges(&self) -> BTreeMap<NodeId, Vec<(usize, NodeId)>> {
        let mut edges: BTreeMap<NodeId, Vec<(usize, NodeId)>> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(&leader) = slot.cur.first() else { continue };
            let candidates = self.leader_candidates(i);
            if !candidates.contains(&leader) {
                continue;
            }
            for v in candidates.into_iter().filter(|v| *v != leader) {
                edges.entry(leader).or_default().push((i, v));
            }
        }
        edges
    }

    /// The shortest chain of hand-overs from `src` (leading `count`) to a broker leading at
    /// most `count - 2`, and that broker; breadth first, fewest leaderships, then id.
    fn leader_path(
        &self,
        edges: &BTreeMap<NodeId, Vec<(usize, NodeId)>>,
        src: NodeId,
        count: u64,
    ) -> Option<(Vec<(usize, NodeId)>, NodeId)> {
        let mut parent: BTreeMap<NodeId, (NodeId, usize)> = BTreeMap::new();
        let mut seen = BTreeSet::from([src]);
        let mut frontier = vec![src];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for u in &frontier {
                for &(i, v) in edges.get(u).map(Vec::as_slice).unwrap_or_default() {
                    if seen.insert(v) {
                        parent.insert(v, (*u, i));
                        next.push(v);
                    }
                }
            }
            let target = next
                .iter()
                .copied()
                .filter(|v| self.load(*v).leaders + 2 <= count)
                .min_by_key(|v| (self.load(*v).leaders, *v));
            if let Some(target) = target {
                let mut path = Vec::new();
                let mut at = target;
                while at != src {
                    let &(u, i) = parent.get(&at)?;
                    path.push((i, at));
                    at = u;
                }
                path.reverse();
                return Some((path, target));
            }
            frontier = next;
        }
        None
    }

    fn finish(self) -> Plan {
        let mut changed: Vec<&Slot> = self.slots.iter().filter(|s| s.first_change.is_some()).collect();
        changed.sort_by_key(|s| s.first_change);
        Plan { actions: changed.into_iter().filter_map(Slot::action).collect(), notes: self.notes }
    }
}

fn push_reason(reasons: &mut Vec<String>, reason: String) {
    if !reasons.contains(&reason) {
        reasons.push(reason);
    }
}

fn liveness_name(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "alive",
        Liveness::Suspected => "suspected",
        Liveness::Dead => "dead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Labels, Response};

    fn brokers(zones: &[&str]) -> BTreeMap<NodeId, Broker> {
        zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let id = i as NodeId + 1;
                (id, Broker::new(id, format!("h:{id}"), Labels { zone: z.to_string(), ..Labels::default() }))
            })
            .collect()
    }

    fn zones_of(b: &BTreeMap<NodeId, Broker>, replicas: &[NodeId]) -> BTreeSet<String> {
        replicas.iter().map(|r| b[r].labels.zone.clone()).collect()
    }

    fn counts(plan: &[Vec<NodeId>]) -> BTreeMap<NodeId, (u64, u64)> {
        let mut count = BTreeMap::new();
        for replicas in plan {
            for (i, r) in replicas.iter().enumerate() {
                let c: &mut (u64, u64) = count.entry(*r).or_default();
                c.0 += 1;
                if i == 0 {
                    c.1 += 1;
                }
            }
        }
        count
    }

    /// Brokers in regions and zones given as "region/zone".
    fn regional(places: &[&str]) -> BTreeMap<NodeId, Broker> {
        places
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = i as NodeId + 1;
                let (region, zone) = p.split_once('/').expect("region/zone");
                let labels = Labels { region: region.into(), zone: zone.into(), rack: String::new() };
                (id, Broker::new(id, format!("h:{id}"), labels))
            })
            .collect()
    }

    #[test]
    fn replicas_go_to_distinct_zones_when_possible() {
        let b = brokers(&["a", "a", "b", "b", "c", "c"]);
        let plan = place_topic(&b, &BTreeMap::new(), 24, 3, &TopicPolicy::default()).unwrap();
        for replicas in &plan {
            assert_eq!(zones_of(&b, replicas).len(), 3, "{replicas:?}");
        }
        // 72 replicas over 6 brokers: 12 each.
        let count = counts(&plan);
        assert!(count.values().all(|c| c.0 == 12), "{count:?}");
    }

    #[test]
    fn too_few_brokers_is_refused_with_the_reason() {
        let b = brokers(&["a", "b"]);
        let e = place_topic(&b, &BTreeMap::new(), 1, 3, &TopicPolicy::default()).unwrap_err();
        assert_eq!(e.to_string(), "replication factor 3 needs 3 eligible brokers; 2 are eligible", "{e}");
    }

    #[test]
    fn preferred_leaders_spread_evenly() {
        let b = brokers(&["a", "b", "c"]);
        let plan = place_topic(&b, &BTreeMap::new(), 6, 3, &TopicPolicy::default()).unwrap();
        let count = counts(&plan);
        assert!(count.values().all(|c| *c == (6, 2)), "{count:?}");
    }

    #[test]
    fn more_replicas_than_zones_use_every_zone_then_spread() {
        let b = brokers(&["a", "a", "a", "b", "b", "b", "c", "c", "c"]);
        let plan = place_topic(&b, &BTreeMap::new(), 9, 5, &TopicPolicy::default()).unwrap();
        for replicas in &plan {
            let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
            for r in replicas {
                *per_zone.entry(b[r].labels.zone.clone()).or_default() += 1;
            }
            let mut spread: Vec<usize> = per_zone.values().copied().collect();
            spread.sort();
            assert_eq!(spread, vec![1, 2, 2], "{replicas:?}");
        }
        // 45 replicas, 15 per zone; leaders go first by leaderships, so a broker may be off by one.
        let count = counts(&plan);
        assert!(count.values().all(|c| (4..=6).contains(&c.0) && c.1 == 1), "{count:?}");
    }

    #[test]
    fn racks_are_distinct_within_a_zone() {
        let mut b = brokers(&["a", "a", "a", "a"]);
        for (id, rack) in [(1, "r1"), (2, "r1"), (3, "r2"), (4, "r2")] {
            b.get_mut(&id).unwrap().labels.rack = rack.into();
        }
        let plan = place_topic(&b, &BTreeMap::new(), 8, 2, &TopicPolicy::default()).unwrap();
        for replicas in &plan {
            let racks: BTreeSet<_> = replicas.iter().map(|r| b[r].labels.rack.clone()).collect();
            assert_eq!(racks.len(), 2, "{replicas:?}");
        }
    }

    #[test]
    fn allowed_regions_pin_replicas() {
        let b = regional(&["eu/a", "eu/b", "eu/c", "us/a", "us/b", "us/c"]);
        let policy = TopicPolicy { allowed_regions: vec!["us".into()], ..TopicPolicy::default() };
        let plan = place_topic(&b, &BTreeMap::new(), 12, 3, &policy).unwrap();
        for replicas in &plan {
            assert!(replicas.iter().all(|r| b[r].labels.region == "us"), "{replicas:?}");
            assert_eq!(replicas.len(), 3);
        }
    }

    #[test]
    fn excluded_zones_and_nodes_are_avoided() {
        let b = brokers(&["a", "a", "b", "b", "c", "c", "d", "d"]);
        let policy =
            TopicPolicy { excluded_zones: vec!["c".into()], excluded_nodes: vec![1], ..TopicPolicy::default() };
        let plan = place_topic(&b, &BTreeMap::new(), 12, 3, &policy).unwrap();
        for replicas in &plan {
            assert!(!replicas.contains(&1), "{replicas:?}");
            assert!(!zones_of(&b, replicas).contains("c"), "{replicas:?}");
            assert_eq!(zones_of(&b, replicas).len(), 3, "{replicas:?}");
        }
    }

    #[test]
    fn preferred_leader_region_is_honoured() {
        let b = regional(&["eu/a", "eu/b", "us/a", "us/b", "us/c", "ap/a"]);
        let policy = TopicPolicy { preferred_leader_region: Some("eu".into()), ..TopicPolicy::default() };
        let plan = place_topic(&b, &BTreeMap::new(), 10, 3, &policy).unwrap();
        for replicas in &plan {
            assert_eq!(b[&replicas[0]].labels.region, "eu", "{replicas:?}");
        }
        // Leaderships split evenly between the two brokers in eu.
        let count = counts(&plan);
        assert_eq!((count[&1].1, count[&2].1), (5, 5), "{count:?}");
        // With no eligible broker in the region, any broker leads.
        let mut b = b;
        for id in [1, 2] {
            b.get_mut(&id).unwrap().admin = AdminState::Draining;
        }
        let plan = place_topic(&b, &BTreeMap::new(), 4, 3, &policy).unwrap();
        assert!(plan.iter().all(|r| !r.contains(&1) && !r.contains(&2)), "{plan:?}");
    }

    #[test]
    fn unsatisfiable_policy_is_refused_with_a_reason_naming_the_problem() {
        let mut b = regional(&["eu/a", "eu/b", "eu/c", "us/a", "us/b", "us/c"]);
        b.get_mut(&2).unwrap().admin = AdminState::Draining;
        b.get_mut(&3).unwrap().liveness = Liveness::Dead;
        let policy = TopicPolicy { allowed_regions: vec!["eu".into()], ..TopicPolicy::default() };
        let e = place_topic(&b, &BTreeMap::new(), 1, 3, &policy).unwrap_err();
        assert_eq!(
            e.to_string(),
            "replication factor 3 needs 3 eligible brokers; 1 is eligible (node 2 is draining, node 3 is dead, \
             node 4 is outside the allowed regions [eu], node 5 is outside the allowed regions [eu], \
             node 6 is outside the allowed regions [eu])"
        );
        let policy = TopicPolicy { excluded_zones: vec!["a".into(), "c".into()], ..TopicPolicy::default() };
        let e = place_topic(&b, &BTreeMap::new(), 1, 2, &policy).unwrap_err();
        assert!(e.to_string().contains("node 4 is in excluded zone a"), "{e}");
        // Through the state machine: refused with the same text.
        let mut c = Cluster::with_zones(&["a", "b"]);
        let r = c.run(Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 2,
            policy: TopicPolicy { excluded_nodes: vec![2], ..TopicPolicy::default() },
        });
        let Response::Error { message, .. } = r else { panic!("{r:?}") };
        assert!(message.contains("1 is eligible (node 2 is excluded by the topic's policy)"), "{message}");
        assert_eq!(
            place_topic(&BTreeMap::new(), &BTreeMap::new(), 1, 0, &TopicPolicy::default()),
            Err(PlacementError::ZeroReplicationFactor)
        );
    }

    // ---- the planner ----

    /// A metadata state built through its log.
    struct Cluster {
        state: MetadataState,
        index: u64,
    }

    impl Cluster {
        /// Brokers 1.. in region "r" and the given zones.
        fn with_zones(zones: &[&str]) -> Cluster {
            let mut c = Cluster { state: MetadataState::new(), index: 0 };
            for (i, z) in zones.iter().enumerate() {
                c.add_broker(i as NodeId + 1, "r", z);
            }
            c
        }

        fn run(&mut self, command: Command) -> Response {
            self.index += 1;
            self.state.apply(self.index, &command)
        }

        fn ok(&mut self, command: Command) {
            let r = self.run(command.clone());
            assert_eq!(r, Response::Ok, "{command:?}");
        }

        fn add_broker(&mut self, id: NodeId, region: &str, zone: &str) {
            let labels = Labels { region: region.into(), zone: zone.into(), rack: String::new() };
            self.ok(Command::RegisterBroker(Broker::new(id, format!("h{id}:7070"), labels)));
        }

        fn create(&mut self, name: &str, partitions: u32, rf: u32, policy: TopicPolicy) -> Topic {
            let r = self.run(Command::CreateTopic { name: name.into(), partitions, replication_factor: rf, policy });
            match r {
                Response::TopicCreated(t) => t,
                other => panic!("{other:?}"),
            }
        }

        fn set_liveness(&mut self, node: NodeId, liveness: Liveness) {
            self.ok(Command::SetLiveness { node, liveness });
        }

        fn set_admin(&mut self, node: NodeId, admin: AdminState) {
            self.ok(Command::SetAdmin { node, admin });
        }

        /// Starts and finishes every move, sets every preferred leader.
        fn apply_plan(&mut self, plan: &Plan) {
            for a in &plan.actions {
                match self.run(a.command()) {
                    Response::MoveStarted(move_id) => self.ok(Command::FinishMove { group: a.group(), move_id }),
                    Response::Ok => {}
                    other => panic!("{a}: {other:?}"),
                }
            }
        }

        /// Plans and applies until a plan has no actions; returns that plan and the rounds taken.
        fn converge(&mut self, max_rounds: usize, max_moves: usize) -> (Plan, usize) {
            for round in 0..=max_rounds {
                let p = plan(&self.state, max_moves);
                if p.actions.is_empty() {
                    return (p, round);
                }
                assert!(round < max_rounds, "no convergence in {max_rounds} rounds; still: {:#?}", p);
                self.apply_plan(&p);
            }
            unreachable!("the loop returns or panics")
        }

        fn load(&self) -> BTreeMap<NodeId, Load> {
            working_load(self.state.brokers(), &self.state.replica_load())
        }

        /// Max minus min of replica and of leader counts over brokers accepting replicas.
        fn spread(&self) -> (u64, u64) {
            let load = self.load();
            let live: Vec<Load> =
                self.state.brokers().values().filter(|b| b.accepts_replicas()).map(|b| load[&b.id]).collect();
            let r = live.iter().map(|l| l.replicas);
            let l = live.iter().map(|l| l.leaders);
            (r.clone().max().unwrap() - r.min().unwrap(), l.clone().max().unwrap() - l.min().unwrap())
        }

        /// Every partition: its replication factor, distinct brokers, as many zones as the
        /// eligible brokers allow, nothing on a broker it must leave.
        fn check_invariants(&self) {
            let brokers = self.state.brokers();
            for t in self.state.topics().values() {
                let zones_available =
                    brokers.values().filter(|b| eligible(b, &t.policy)).map(zone_of).collect::<BTreeSet<_>>().len();
                for p in &t.partitions {
                    let r = &p.replicas;
                    assert_eq!(r.len(), t.replication_factor as usize, "{}/{} {r:?}", t.name, p.partition);
                    assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), r.len(), "{r:?}");
                    let want = zones_available.min(r.len());
                    assert_eq!(distinct_zones(brokers, r), want, "{}/{} {r:?}", t.name, p.partition);
                    for n in r {
                        assert_eq!(leave_reason(brokers, *n, &t.policy), None, "{}/{} {r:?}", t.name, p.partition);
                    }
                    // No zone holds two more of its replicas than a zone with a free eligible broker.
                    let crowded = r.iter().map(|n| overlap(brokers, r, &brokers[n]).0).max().unwrap_or(0);
                    let free = brokers.values().filter(|b| !r.contains(&b.id) && eligible(b, &t.policy));
                    let emptiest = free.map(|b| overlap(brokers, r, b).0).min().unwrap_or(usize::MAX);
                    assert!(crowded < emptiest.saturating_add(2), "{}/{} {r:?}", t.name, p.partition);
                }
            }
        }
    }

    /// How many distinct zones `replicas` span (unknown brokers count for none).
    fn distinct_zones(brokers: &BTreeMap<NodeId, Broker>, replicas: &[NodeId]) -> usize {
        replicas.iter().filter_map(|id| brokers.get(id)).map(zone_of).collect::<BTreeSet<_>>().len()
    }

    fn six_node_cluster(partitions: u32) -> Cluster {
        let mut c = Cluster::with_zones(&["a", "a", "b", "b", "c", "c"]);
        c.create("t", partitions, 3, TopicPolicy::default());
        c
    }

    fn moves(p: &Plan) -> Vec<&Action> {
        p.actions.iter().filter(|a| matches!(a, Action::Move { .. })).collect()
    }

    #[test]
    fn healthy_balanced_cluster_gets_an_empty_plan() {
        let mut c = six_node_cluster(24);
        c.create("u", 6, 3, TopicPolicy::default());
        c.create("v", 6, 1, TopicPolicy::default());
        let p = plan(&c.state, 100);
        assert_eq!(p, Plan::default(), "{p:#?}");
        assert_eq!(plan(&Cluster::with_zones(&["a"]).state, 10), Plan::default());
        assert_eq!(plan(&MetadataState::new(), 10), Plan::default());
    }

    #[test]
    fn dead_node_is_repaired_with_a_replica_in_a_distinct_zone() {
        let mut c = six_node_cluster(24);
        c.set_liveness(2, Liveness::Dead);
        let before = c.state.topic("t").unwrap().clone();
        let p = plan(&c.state, 100);
        let on_2 = before.partitions.iter().filter(|p| p.replicas.contains(&2)).count();
        assert_eq!(moves(&p).len(), on_2, "{p:#?}");
        for a in moves(&p) {
            let Action::Move { from, to, reason, .. } = a else { unreachable!() };
            assert!(from.contains(&2) && !to.contains(&2), "{a}");
            assert!(reason.starts_with("node 2 is dead"), "{a}");
            // Only the dead replica changes, and it lands in zone a again (node 1).
            let changed: Vec<_> = to.iter().filter(|n| !from.contains(n)).collect();
            assert_eq!(changed, vec![&1], "{a}");
            assert_eq!(distinct_zones(c.state.brokers(), to), 3, "{a}");
            // Where node 2 did not lead, node 1 takes its place (unless leader balance reorders).
            if from[0] != 2 && !reason.contains("leader") {
                assert_eq!(to[0], from[0], "{a}");
                assert_eq!(to.iter().position(|n| *n == 1), from.iter().position(|n| *n == 2), "{a}");
            }
        }
        assert!(p.notes.iter().any(|n| n == "replica balance waits while node 2 is dead"), "{:?}", p.notes);
        // Nothing leads on the dead node afterwards; the partitions it led now lead elsewhere.
        c.apply_plan(&p);
        assert!(c.state.groups_on(2).is_empty());
        c.check_invariants();
    }

    #[test]
    fn draining_node_is_emptied_then_removable() {
        let mut c = six_node_cluster(12);
        c.set_admin(3, AdminState::Draining);
        let p = plan(&c.state, 100);
        assert!(!p.actions.is_empty());
        for a in moves(&p) {
            assert!(a.reason().contains("node 3 is draining"), "{a}");
        }
        let (_, rounds) = c.converge(10, 100);
        assert!(rounds <= 2, "{rounds}");
        assert!(c.state.groups_on(3).is_empty());
        c.check_invariants();
        c.set_admin(3, AdminState::Removed);
        assert_eq!(plan(&c.state, 100).actions, vec![]);
    }

    #[test]
    fn new_node_receives_replicas_until_counts_and_leaders_are_within_one() {
        let mut c = six_node_cluster(24);
        c.add_broker(7, "r", "d");
        let p = plan(&c.state, 100);
        for a in moves(&p) {
            let Action::Move { from, to, reason, .. } = a else { unreachable!() };
            assert!(to.contains(&7) && !from.contains(&7), "{a}");
            assert!(reason.starts_with("balance replicas: node "), "{a}");
            assert_eq!(to.iter().filter(|n| !from.contains(n)).count(), 1, "one replica per move: {a}");
        }
        c.converge(10, 100);
        assert_eq!(c.spread(), (1, 1), "{:?}", c.load());
        let l = c.load()[&7];
        assert_eq!((l.replicas, l.leaders), (10, 3), "{l:?}");
        c.check_invariants();
    }

    #[test]
    fn plans_converge_within_ten_rounds() {
        // A 7th node in zone a: it takes a third of zone a's replicas, no more (zones stay distinct).
        let mut c = six_node_cluster(24);
        c.add_broker(7, "r", "a");
        let (_, rounds) = c.converge(10, 100);
        assert!(rounds <= 3, "{rounds}");
        let load = c.load();
        assert_eq!([load[&1].replicas, load[&2].replicas, load[&7].replicas], [8, 8, 8], "{load:?}");
        assert!(c.spread().1 <= 1, "{load:?}");
        c.check_invariants();

        // Node 3 drained.
        let mut c = six_node_cluster(24);
        c.set_admin(3, AdminState::Draining);
        c.converge(10, 100);
        assert!(c.state.groups_on(3).is_empty());
        assert!(c.spread().1 <= 1);
        c.check_invariants();

        // Node 2 dead, a few moves at a time; then removed, after which balance resumes.
        let mut c = six_node_cluster(24);
        c.set_liveness(2, Liveness::Dead);
        let (last, _) = c.converge(10, 4);
        assert_eq!(last.notes, vec!["replica balance waits while node 2 is dead".to_string()]);
        assert!(c.state.groups_on(2).is_empty());
        c.check_invariants();
        c.set_admin(2, AdminState::Removed);
        let (last, _) = c.converge(10, 100);
        assert_eq!(last, Plan::default());
        // A new node in zone a after the loss: balance gives it zone a's share.
        c.add_broker(8, "r", "a");
        let (last, _) = c.converge(10, 100);
        assert_eq!(last, Plan::default());
        let load = c.load();
        assert_eq!([load[&1].replicas, load[&8].replicas], [12, 12], "{load:?}");
        c.check_invariants();
    }

    #[test]
    fn many_changes_at_once_converge() {
        let mut c = Cluster::with_zones(&["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
        c.create("one", 20, 1, TopicPolicy::default());
        c.create("two", 15, 2, TopicPolicy::default());
        c.create("three", 30, 3, TopicPolicy::default());
        c.create("five", 6, 5, TopicPolicy { excluded_nodes: vec![9], ..TopicPolicy::default() });
        c.add_broker(10, "r", "d");
        c.set_admin(2, AdminState::Draining);
        c.set_liveness(5, Liveness::Dead);
        let policy = TopicPolicy { excluded_zones: vec!["c".into()], ..TopicPolicy::default() };
        c.ok(Command::SetTopicConfig { name: "two".into(), replication_factor: 2, policy });
        let (last, rounds) = c.converge(10, 8);
        assert!(rounds <= 10);
        assert_eq!(last.notes, vec!["replica balance waits while node 5 is dead".to_string()]);
        c.check_invariants();
        c.set_admin(5, AdminState::Removed);
        c.set_admin(2, AdminState::Removed);
        let (last, _) = c.converge(10, 8);
        assert_eq!(last, Plan::default());
        c.check_invariants();
        assert!(c.spread().1 <= 1, "{:?}", c.load());
    }

    #[test]
    fn a_relabelled_broker_is_spread_out_again() {
        let mut c = six_node_cluster(12);
        // Node 3 moves from zone b to zone a: partitions on it and on 1 or 2 lose zone b.
        c.add_broker(3, "r", "a");
        let p = plan(&c.state, 100);
        let spread: Vec<&Action> = moves(&p).into_iter().filter(|a| a.reason().starts_with("spread zones")).collect();
        assert!(!spread.is_empty(), "{p:#?}");
        for a in spread {
            let Action::Move { from, to, reason, .. } = a else { unreachable!() };
            assert!(reason.starts_with("spread zones: zone a has 2 replicas, zone b has 0"), "{a}");
            assert!(to.contains(&4) && !from.contains(&4), "{a}");
            assert_eq!(distinct_zones(c.state.brokers(), to), 3, "{a}");
        }
        c.converge(10, 100);
        c.check_invariants();
    }

    #[test]
    fn max_new_moves_is_respected() {
        let mut c = six_node_cluster(24);
        c.set_liveness(2, Liveness::Dead);
        for budget in [0, 1, 3] {
            let p = plan(&c.state, budget);
            assert_eq!(moves(&p).len(), budget, "{p:#?}");
            assert!(p.notes.iter().any(|n| n.contains("wait for a later plan")), "{:?}", p.notes);
        }
        // Leaderships still move off the dead node when no data may move.
        let p = plan(&c.state, 0);
        assert!(p.actions.iter().all(|a| matches!(a, Action::PreferLeader { from: 2, .. })), "{p:#?}");
        assert!(!p.actions.is_empty());
        // Balance is limited too.
        let mut c = six_node_cluster(24);
        c.add_broker(7, "r", "d");
        let p = plan(&c.state, 2);
        assert_eq!(moves(&p).len(), 2);
        assert!(p.notes.iter().any(|n| n.contains("replica balance continues in a later plan")), "{:?}", p.notes);
    }

    #[test]
    fn moving_partitions_are_untouched() {
        let mut c = six_node_cluster(6);
        let t = c.state.topic("t").unwrap().clone();
        let p0 = &t.partitions[0];
        // Swap its zone-a replica for the other zone-a broker, and leave the move running.
        let target: Vec<NodeId> = p0.replicas.iter().map(|n| if *n <= 2 { 3 - *n } else { *n }).collect();
        let r = c.run(Command::StartMove { group: p0.group, target: target.clone(), reason: "test".into() });
        assert!(matches!(r, Response::MoveStarted(_)), "{r:?}");
        // Kill one of its other replicas: every other partition on it is repaired, not this one.
        let victim = target[1];
        c.set_liveness(victim, Liveness::Dead);
        let p = plan(&c.state, 100);
        assert!(p.actions.iter().all(|a| a.group() != p0.group), "{p:#?}");
        assert!(!p.actions.is_empty());
        c.set_liveness(victim, Liveness::Alive);
        c.set_admin(victim, AdminState::Draining);
        let p = plan(&c.state, 100);
        assert!(p.actions.iter().all(|a| a.group() != p0.group), "{p:#?}");
    }

    #[test]
    fn suspected_node_keeps_its_replicas_and_preferred_leaderships() {
        let mut c = six_node_cluster(12);
        c.set_liveness(4, Liveness::Suspected);
        let p = plan(&c.state, 100);
        assert!(p.actions.is_empty(), "{p:#?}");
        assert_eq!(p.notes, vec!["replica balance waits while node 4 is suspected".to_string()]);
        // Dead: its replicas and leaderships go elsewhere.
        c.set_liveness(4, Liveness::Dead);
        let p = plan(&c.state, 100);
        assert!(!moves(&p).is_empty(), "{p:#?}");
    }

    #[test]
    fn unsatisfiable_repair_is_a_note_not_a_panic() {
        let mut c = Cluster::with_zones(&["a", "b", "c"]);
        c.create("t", 3, 3, TopicPolicy::default());
        c.set_liveness(3, Liveness::Dead);
        let p = plan(&c.state, 100);
        assert!(moves(&p).is_empty(), "{p:#?}");
        assert!(
            p.notes.contains(
                &"t/0: node 3 is dead, and no eligible broker can take its replica \
                 (nodes 1, 2 already host it)"
                    .to_string()
            ),
            "{:?}",
            p.notes
        );
        // A policy the cluster no longer satisfies: the notes name the brokers it rules out.
        let mut c = Cluster::with_zones(&[]);
        for (id, region, zone) in [(1, "eu", "a"), (2, "eu", "b"), (3, "eu", "c"), (4, "us", "a"), (5, "us", "b")] {
            c.add_broker(id, region, zone);
        }
        let policy = TopicPolicy { allowed_regions: vec!["eu".into()], ..TopicPolicy::default() };
        c.create("t", 2, 3, policy);
        c.set_admin(2, AdminState::Draining);
        let p = plan(&c.state, 100);
        assert!(moves(&p).is_empty(), "{p:#?}");
        assert!(
            p.notes.contains(
                &"t/0: node 2 is draining, and no eligible broker can take its replica (nodes 1, 3 already host it, \
                  node 4 is outside the allowed regions [eu], node 5 is outside the allowed regions [eu])"
                    .to_string()
            ),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn policy_changes_move_replicas_out() {
        let mut c = Cluster::with_zones(&["a", "b", "c", "d", "a", "b", "c", "d"]);
        c.create("t", 8, 3, TopicPolicy::default());
        let policy =
            TopicPolicy { excluded_zones: vec!["d".into()], excluded_nodes: vec![1], ..TopicPolicy::default() };
        c.ok(Command::SetTopicConfig { name: "t".into(), replication_factor: 3, policy });
        let p = plan(&c.state, 100);
        assert!(moves(&p).iter().any(|a| a.reason().contains("node 4 is in excluded zone d")), "{p:#?}");
        assert!(moves(&p).iter().any(|a| a.reason().contains("node 1 is excluded by the topic's policy")), "{p:#?}");
        c.converge(10, 100);
        c.check_invariants();
        let t = c.state.topic("t").unwrap();
        assert!(t.partitions.iter().all(|p| !p.replicas.iter().any(|n| [1, 4, 8].contains(n))));
    }

    #[test]
    fn preferred_leader_region_is_restored_by_the_plan() {
        let mut c = Cluster::with_zones(&[]);
        for (id, region, zone) in [(1, "eu", "a"), (2, "eu", "b"), (3, "us", "a"), (4, "us", "b"), (5, "us", "c")] {
            c.add_broker(id, region, zone);
        }
        c.create("t", 10, 3, TopicPolicy::default());
        let policy = TopicPolicy { preferred_leader_region: Some("eu".into()), ..TopicPolicy::default() };
        c.ok(Command::SetTopicConfig { name: "t".into(), replication_factor: 3, policy });
        let p = plan(&c.state, 100);
        assert!(p.actions.iter().any(|a| a.reason() == "preferred leader region eu"), "{p:#?}");
        c.converge(10, 100);
        let t = c.state.topic("t").unwrap();
        for p in &t.partitions {
            let has_eu = p.replicas.iter().any(|n| *n <= 2);
            assert!(!has_eu || p.replicas[0] <= 2, "{p:?}");
        }
    }

    #[test]
    fn replication_factor_changes_keep_zones_spread() {
        let mut c = six_node_cluster(6);
        c.ok(Command::SetTopicConfig { name: "t".into(), replication_factor: 5, policy: TopicPolicy::default() });
        let p = plan(&c.state, 100);
        assert_eq!(moves(&p).len(), 6);
        assert!(p.actions.iter().all(|a| a.reason().starts_with("replication factor 3 -> 5")), "{p:#?}");
        c.converge(10, 100);
        c.check_invariants();
        assert_eq!(c.spread().0, 0);
        c.ok(Command::SetTopicConfig { name: "t".into(), replication_factor: 2, policy: TopicPolicy::default() });
        c.converge(10, 100);
        c.check_invariants();
        assert!(c.spread().0 <= 1 && c.spread().1 <= 1, "{:?}", c.load());
    }

    #[test]
    fn a_replacement_takes_the_leaving_replicas_place_unless_it_led() {
        assert_eq!(substitute(vec![1, 3], 1, 5), vec![1, 5, 3]);
        assert_eq!(substitute(vec![1, 2], 2, 5), vec![1, 2, 5]);
        assert_eq!(substitute(vec![2, 3], 0, 5), vec![2, 3, 5]);
        assert_eq!(substitute(vec![], 0, 5), vec![5]);
    }

    #[test]
    fn actions_read_as_one_line() {
        let m = Action::Move {
            topic: "t".into(),
            partition: 3,
            group: 7,
            from: vec![1, 2, 3],
            to: vec![1, 2, 5],
            reason: "node 3 is dead".into(),
        };
        assert_eq!(m.to_string(), "t/3 (group 7): [1,2,3] -> [1,2,5]: node 3 is dead");
        let l = Action::PreferLeader {
            topic: "t".into(),
            partition: 3,
            group: 7,
            from: 1,
            to: 2,
            reason: "even leaders".into(),
        };
        assert_eq!(l.to_string(), "t/3 (group 7): leader 1 -> 2: even leaders");
        assert_eq!(l.command(), Command::SetPreferredLeader { group: 7, leader: 2 });
        assert_eq!(
            m.command(),
            Command::StartMove { group: 7, target: vec![1, 2, 5], reason: "node 3 is dead".into() }
        );
    }

    #[test]
    fn plans_are_deterministic() {
        let mut c = six_node_cluster(24);
        c.add_broker(7, "r", "d");
        c.set_admin(2, AdminState::Draining);
        let a = plan(&c.state, 7);
        let b = plan(&c.state.clone(), 7);
        assert_eq!(a, b);
    }
}
