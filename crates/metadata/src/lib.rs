//! The metadata state machine (group 0) and the placement planner: pure, synchronous and
//! deterministic.
//!
//! It holds the cluster's truth: registered brokers with their addresses, failure-domain
//! labels, liveness and administrative state; topics with their placement policy; and each
//! partition's Raft group, replicas and the move in progress, if any. Every node applies
//! the same committed log and so derives the same assignment, which its reconciler then
//! makes real. The metadata leader's controller (in `node`) decides *when* to write a
//! command (a lease ran out, a node was drained); what the command does is decided here.
//!
//! Architecture invariant: no clock, no randomness, no I/O, ordered collections only.

pub mod groups;
pub mod placement;
pub mod replace;
pub mod security;
pub mod share;

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::{ErrorCode, GroupId, NodeId, PartitionId, limits};
pub use flotilla_types::{Labels, TopicPolicy};
use serde::{Deserialize, Serialize};

/// Whether the metadata leader hears from a node (its lease), as last recorded in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Liveness {
    #[default]
    Alive,
    /// Its lease ran out: partition groups it leads elect a new leader, it gets no new
    /// replicas, its replicas stay.
    Suspected,
    /// Silent past the grace period: its replicas are re-created elsewhere.
    Dead,
}

/// What the operator wants of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AdminState {
    #[default]
    Active,
    /// Every replica moves off it; it receives none.
    Draining,
    /// Out of the cluster for good: no replicas, not a member of the metadata group. The
    /// id is never reused.
    Removed,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub id: NodeId,
    /// host:port of its client API (produce, fetch, admin).
    pub addr: String,
    /// host:port of its node-to-node listener (Raft messages, forwarded writes); empty
    /// when it is the same as `addr` (a node that serves both on one listener, as the
    /// simulator's do).
    pub rpc_addr: String,
    pub labels: Labels,
    pub liveness: Liveness,
    pub admin: AdminState,
}

impl Broker {
    /// A newly registering broker: alive and active.
    pub fn new(id: NodeId, addr: impl Into<String>, labels: Labels) -> Broker {
        Broker {
            id,
            addr: addr.into(),
            rpc_addr: String::new(),
            labels,
            liveness: Liveness::Alive,
            admin: AdminState::Active,
        }
    }

    /// The same broker, reached by other nodes at `rpc_addr` (empty: at `addr`).
    pub fn with_rpc_addr(mut self, rpc_addr: impl Into<String>) -> Broker {
        let rpc_addr = rpc_addr.into();
        self.rpc_addr = if rpc_addr == self.addr { String::new() } else { rpc_addr };
        self
    }

    /// Where other nodes send it Raft messages.
    pub fn rpc_address(&self) -> &str {
        if self.rpc_addr.is_empty() { &self.addr } else { &self.rpc_addr }
    }

    /// The one word `flotilla cluster describe` shows: removed, draining, dead, suspected
    /// or alive, the first that applies.
    pub fn state_name(&self) -> &'static str {
        match (self.admin, self.liveness) {
            (AdminState::Removed, _) => "removed",
            (AdminState::Draining, _) => "draining",
            (_, Liveness::Dead) => "dead",
            (_, Liveness::Suspected) => "suspected",
            (_, Liveness::Alive) => "alive",
        }
    }

    /// May receive new replicas and preferred leaderships.
    pub fn accepts_replicas(&self) -> bool {
        self.admin == AdminState::Active && self.liveness == Liveness::Alive
    }
}

/// A membership change of one partition in progress: the partition leader adds the new
/// replicas as learners, waits for them to catch up, changes the voters jointly, then
/// reports `FinishMove`. Cancelling turns it into a move back to `replicas`: the voters
/// may already have changed, so the cancelled target's nodes keep their replicas until
/// the group is back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The log index of the command that started it; unique.
    pub id: u64,
    /// The replicas once done; `target[0]` is the preferred leader.
    pub target: Vec<NodeId>,
    /// Why: "reassign", "drain node 4", "node 3 dead", "balance", ...
    pub reason: String,
    /// For a rollback: the nodes of the cancelled target, which keep hosting a replica
    /// until the group's voters are `target` again.
    pub rolling_back: Vec<NodeId>,
}

/// One partition's Raft group and replicas. `replicas[0]` is the preferred leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub partition: PartitionId,
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
    /// How many membership changes completed. While 0, `replicas` is the group's initial
    /// membership and a replica with no data initialises the group with it; after that a
    /// new replica waits to be added by the partition leader.
    pub epoch: u64,
    pub moving: Option<Move>,
}

impl PartitionAssignment {
    /// The nodes that must host a replica now: the current replicas and, during a move,
    /// the target's too.
    pub fn hosts(&self) -> BTreeSet<NodeId> {
        let mut out: BTreeSet<NodeId> = self.replicas.iter().copied().collect();
        if let Some(m) = &self.moving {
            out.extend(m.target.iter().chain(&m.rolling_back).copied());
        }
        out
    }

    /// The voters the partition leader drives its group toward.
    pub fn desired(&self) -> &[NodeId] {
        self.moving.as_ref().map(|m| m.target.as_slice()).unwrap_or(&self.replicas)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub replication_factor: u32,
    pub policy: TopicPolicy,
    pub partitions: Vec<PartitionAssignment>,
}

/// A command in the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a broker (alive, active) or updates its address and labels. A removed broker
    /// cannot register again.
    RegisterBroker(Broker),
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        policy: TopicPolicy,
    },
    DeleteTopic {
        name: String,
    },
    /// The metadata leader's view of a node's lease.
    SetLiveness {
        node: NodeId,
        liveness: Liveness,
    },
    /// Drain (`Draining`), undrain (`Active`) or remove (`Removed`, only once it hosts no
    /// replica).
    SetAdmin {
        node: NodeId,
        admin: AdminState,
    },
    /// Starts moving a partition to `target` (refused while another move of it runs).
    StartMove {
        group: GroupId,
        target: Vec<NodeId>,
        reason: String,
    },
    /// The partition leader reports that the group's voters are the move's target.
    FinishMove {
        group: GroupId,
        move_id: u64,
    },
    /// Drops the move's target; the partition leader moves the group back to `replicas`.
    CancelMove {
        group: GroupId,
    },
    /// Reorders a partition's replicas (same set): the first becomes the preferred leader.
    SetPreferredLeader {
        group: GroupId,
        leader: NodeId,
    },
    /// Replaces a topic's policy and replication factor; the controller then moves
    /// replicas that break it.
    SetTopicConfig {
        name: String,
        replication_factor: u32,
        policy: TopicPolicy,
    },
    /// Grows a topic to `total` partitions (never shrinks).
    AddPartitions {
        name: String,
        total: u32,
    },
    /// Issues an idempotent producer its id and epoch (Kafka's InitProducerId). Without a
    /// name: a new id, epoch 0. With one: the id that name always gets, at the next epoch,
    /// which fences every earlier instance of the producer on every partition it wrote to.
    InitProducer {
        name: Option<String>,
    },
    /// A change to a consumer group (RFC 0005).
    Group {
        name: String,
        op: groups::GroupOp,
    },
    /// A change to a share group (RFC 0007).
    Share {
        name: String,
        op: share::ShareOp,
    },
    /// A change to users or ACLs (RFC 0009).
    Security(security::SecurityOp),
    /// A step of replacing a node that lost its data (RFC 0008). Last, as every variant
    /// added after others.
    Replace {
        node: NodeId,
        op: replace::ReplaceOp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    TopicCreated(Topic),
    /// A move started; its id.
    MoveStarted(u64),
    /// An idempotent producer's id and epoch.
    Producer {
        id: u64,
        epoch: u16,
    },
    Group(groups::GroupResponse),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Last, so that the variants before keep the numbers older nodes encode them with.
    Share(share::ShareResponse),
}

impl Response {
    pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error { code, message: message.into() }
    }
}

/// The metadata group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    brokers: BTreeMap<NodeId, Broker>,
    topics: BTreeMap<String, Topic>,
    /// The next partition group id; group 0 is the metadata group itself.
    next_group: GroupId,
    last_applied_index: u64,
    /// The next producer id to issue (0 means "no producer" in a batch).
    next_producer_id: u64,
    /// Named producers: their id and current epoch.
    named_producers: BTreeMap<String, (u64, u16)>,
    /// Consumer groups by name.
    groups: BTreeMap<String, groups::ConsumerGroup>,
    /// Share groups by name (a name is a consumer group or a share group, not both).
    /// A snapshot written before it decodes through `MetadataStateV1`.
    share_groups: BTreeMap<String, share::ShareGroup>,
    /// Users and ACLs. A snapshot written before it decodes through `MetadataStateV2`.
    security: security::SecurityState,
    /// Nodes being replaced after losing their data. Last: a snapshot written before it
    /// decodes through `MetadataStateV3`.
    replacements: BTreeMap<NodeId, replace::Replacement>,
}

/// The metadata state as written before node replacement (see `MetadataStateV1`).
#[derive(Debug, Clone, Deserialize)]
pub struct MetadataStateV3 {
    brokers: BTreeMap<NodeId, Broker>,
    topics: BTreeMap<String, Topic>,
    next_group: GroupId,
    last_applied_index: u64,
    next_producer_id: u64,
    named_producers: BTreeMap<String, (u64, u16)>,
    groups: BTreeMap<String, groups::ConsumerGroup>,
    share_groups: BTreeMap<String, share::ShareGroup>,
    security: security::SecurityState,
}

impl From<MetadataStateV3> for MetadataState {
    fn from(v: MetadataStateV3) -> MetadataState {
        MetadataState {
            brokers: v.brokers,
            topics: v.topics,
            next_group: v.next_group,
            last_applied_index: v.last_applied_index,
            next_producer_id: v.next_producer_id,
            named_producers: v.named_producers,
            groups: v.groups,
            share_groups: v.share_groups,
            security: v.security,
            replacements: BTreeMap::new(),
        }
    }
}

/// The metadata state as written before users and ACLs (see `MetadataStateV1`).
#[derive(Debug, Clone, Deserialize)]
pub struct MetadataStateV2 {
    brokers: BTreeMap<NodeId, Broker>,
    topics: BTreeMap<String, Topic>,
    next_group: GroupId,
    last_applied_index: u64,
    next_producer_id: u64,
    named_producers: BTreeMap<String, (u64, u16)>,
    groups: BTreeMap<String, groups::ConsumerGroup>,
    share_groups: BTreeMap<String, share::ShareGroup>,
}

impl From<MetadataStateV2> for MetadataState {
    fn from(v: MetadataStateV2) -> MetadataState {
        MetadataStateV3 {
            brokers: v.brokers,
            topics: v.topics,
            next_group: v.next_group,
            last_applied_index: v.last_applied_index,
            next_producer_id: v.next_producer_id,
            named_producers: v.named_producers,
            groups: v.groups,
            share_groups: v.share_groups,
            security: security::SecurityState::default(),
        }
        .into()
    }
}

/// The metadata state as written before share groups existed. Snapshots are bincode,
/// which keeps no field names, so a field added at the end is not defaulted when an older
/// snapshot is read: such a snapshot decodes through this and converts.
#[derive(Debug, Clone, Deserialize)]
pub struct MetadataStateV1 {
    brokers: BTreeMap<NodeId, Broker>,
    topics: BTreeMap<String, Topic>,
    next_group: GroupId,
    last_applied_index: u64,
    next_producer_id: u64,
    named_producers: BTreeMap<String, (u64, u16)>,
    groups: BTreeMap<String, groups::ConsumerGroup>,
}

impl From<MetadataStateV1> for MetadataState {
    fn from(v: MetadataStateV1) -> MetadataState {
        MetadataStateV2 {
            brokers: v.brokers,
            topics: v.topics,
            next_group: v.next_group,
            last_applied_index: v.last_applied_index,
            next_producer_id: v.next_producer_id,
            named_producers: v.named_producers,
            groups: v.groups,
            share_groups: BTreeMap::new(),
        }
        .into()
    }
}

impl Default for MetadataState {
    fn default() -> Self {
        MetadataState {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_group: 1,
            last_applied_index: 0,
            next_producer_id: 1,
            named_producers: BTreeMap::new(),
            groups: BTreeMap::new(),
            share_groups: BTreeMap::new(),
            security: security::SecurityState::default(),
            replacements: BTreeMap::new(),
        }
    }
}

impl MetadataState {
    pub fn new() -> MetadataState {
        MetadataState::default()
    }

    fn init_producer(&mut self, name: Option<&str>) -> Response {
        let mut fresh = || {
            let id = self.next_producer_id;
            self.next_producer_id += 1;
            id
        };
        let Some(name) = name else { return Response::Producer { id: fresh(), epoch: 0 } };
        if name.is_empty() || name.len() > limits::PRODUCER_NAME_BYTES_MAX {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("a producer name has 1..={} bytes", limits::PRODUCER_NAME_BYTES_MAX),
            );
        }
        let (id, epoch) = match self.named_producers.get(name) {
            // Epochs are 16 bits: past the last, the name gets a new id (Kafka's rule).
            Some(&(_, u16::MAX)) | None => (fresh(), 0),
            Some(&(id, epoch)) => (id, epoch + 1),
        };
        self.named_producers.insert(name.to_string(), (id, epoch));
        Response::Producer { id, epoch }
    }

    pub fn apply(&mut self, log_index: u64, command: &Command) -> Response {
        assert!(log_index > self.last_applied_index, "log index {log_index} after {}", self.last_applied_index);
        self.last_applied_index = log_index;
        match command {
            Command::RegisterBroker(b) => self.register(b),
            Command::CreateTopic { name, partitions, replication_factor, policy } => {
                let r = self.create_topic(name, *partitions, *replication_factor, policy);
                // Members may already subscribe to a topic that did not exist yet.
                self.settle_groups();
                r
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(t) => {
                    let gone = t.partitions.iter().map(|p| p.group).collect();
                    replace::forget_groups(&mut self.replacements, &gone);
                    // A topic created again under the name starts with no group offsets.
                    for g in self.groups.values_mut() {
                        g.offsets.retain(|(t, _), _| t != name);
                    }
                    share::forget_topic(&mut self.share_groups, name);
                    self.settle_groups();
                    Response::Ok
                }
                None => Response::error(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist")),
            },
            Command::InitProducer { name } => self.init_producer(name.as_deref()),
            Command::Group { name, op } => {
                if self.share_groups.contains_key(name) {
                    return Response::error(
                        ErrorCode::InvalidRequest,
                        format!("'{name}' is a share group, not a consumer group"),
                    );
                }
                groups::apply(&mut self.groups, name, op, &self.topics, &self.brokers)
            }
            Command::Security(op) => self.security.apply(op),
            Command::Replace { node, op } => replace::apply(
                &mut self.replacements,
                log_index,
                *node,
                op,
                &self.brokers,
                &self.topics,
                self.next_group,
            ),
            Command::Share { name, op } => {
                let consumer_groups = (self.groups.len(), self.groups.contains_key(name));
                share::apply(&mut self.share_groups, name, op, consumer_groups, &self.topics)
            }
            Command::SetLiveness { node, liveness } => match self.brokers.get_mut(node) {
                Some(b) => {
                    b.liveness = *liveness;
                    Response::Ok
                }
                None => unknown_node(*node),
            },
            Command::SetAdmin { node, admin } => self.set_admin(*node, *admin),
            Command::StartMove { group, target, reason } => self.start_move(log_index, *group, target, reason),
            Command::FinishMove { group, move_id } => {
                let Some(p) = self.partition_mut(*group) else { return unknown_group(*group) };
                match &p.moving {
                    Some(m) if m.id == *move_id => {
                        p.replicas = m.target.clone();
                        p.moving = None;
                        p.epoch += 1;
                        Response::Ok
                    }
                    _ => Response::error(
                        ErrorCode::StaleEpoch,
                        format!("group {group} has no move {move_id} in progress (cancelled or finished)"),
                    ),
                }
            }
            Command::CancelMove { group } => {
                let Some(p) = self.partition_mut(*group) else { return unknown_group(*group) };
                match &p.moving {
                    Some(m) if m.rolling_back.is_empty() => {
                        let rollback = Move {
                            id: log_index,
                            target: p.replicas.clone(),
                            reason: format!("rollback of move {} ({})", m.id, m.reason),
                            rolling_back: m.target.clone(),
                        };
                        p.moving = Some(rollback);
                        Response::MoveStarted(log_index)
                    }
                    Some(m) => Response::error(
                        ErrorCode::InvalidRequest,
                        format!("group {group} is already rolling back ({})", m.reason),
                    ),
                    None => {
                        Response::error(ErrorCode::InvalidRequest, format!("group {group} has no move in progress"))
                    }
                }
            }
            Command::SetPreferredLeader { group, leader } => {
                let Some(p) = self.partition_mut(*group) else { return unknown_group(*group) };
                let list = match &mut p.moving {
                    Some(m) => &mut m.target,
                    None => &mut p.replicas,
                };
                match list.iter().position(|r| r == leader) {
                    Some(i) => {
                        let l = list.remove(i);
                        list.insert(0, l);
                        Response::Ok
                    }
                    None => Response::error(
                        ErrorCode::InvalidRequest,
                        format!("node {leader} is not a replica of group {group} ({list:?})"),
                    ),
                }
            }
            Command::SetTopicConfig { name, replication_factor, policy } => {
                if let Err(e) = check_rf(*replication_factor).and_then(|_| policy.check()) {
                    return Response::error(ErrorCode::InvalidRequest, e);
                }
                if !self.topics.contains_key(name) {
                    return Response::error(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist"));
                }
                // Refused, with the reason, when no partition could be placed under it.
                if let Err(e) =
                    placement::place_topic(&self.brokers, &self.replica_load(), 1, *replication_factor, policy)
                {
                    return Response::error(ErrorCode::PolicyViolation, e.to_string());
                }
                let t = self.topics.get_mut(name).expect("checked above");
                t.replication_factor = *replication_factor;
                t.policy = policy.clone();
                Response::Ok
            }
            Command::AddPartitions { name, total } => {
                let r = self.add_partitions(name, *total);
                self.settle_groups();
                r
            }
        }
    }

    /// Every group's assignment again, after topics or partitions came or went.
    fn settle_groups(&mut self) {
        for g in self.groups.values_mut() {
            groups::settle(g, &self.topics, &self.brokers);
        }
    }

    /// Nodes being replaced after losing their data (RFC 0008).
    pub fn replacements(&self) -> &BTreeMap<NodeId, replace::Replacement> {
        &self.replacements
    }

    /// Users and ACLs.
    pub fn security(&self) -> &security::SecurityState {
        &self.security
    }

    pub fn share_groups(&self) -> &BTreeMap<String, share::ShareGroup> {
        &self.share_groups
    }

    pub fn share_group(&self, name: &str) -> Option<&share::ShareGroup> {
        self.share_groups.get(name)
    }

    /// Consumer groups by name.
    pub fn groups(&self) -> &BTreeMap<String, groups::ConsumerGroup> {
        &self.groups
    }

    pub fn group(&self, name: &str) -> Option<&groups::ConsumerGroup> {
        self.groups.get(name)
    }

    pub fn skip(&mut self, log_index: u64) {
        assert!(log_index >= self.last_applied_index);
        self.last_applied_index = log_index;
    }

    fn register(&mut self, b: &Broker) -> Response {
        if let Err(e) = check_broker(b) {
            return Response::error(ErrorCode::InvalidRequest, e);
        }
        // Two live nodes at one address would each receive the other's messages. A node
        // that is gone (suspected, dead, removed) may be replaced at its address by a new
        // one, as docs/operating.md does with a node whose storage is corrupt.
        let clash = self.brokers.values().find(|o| {
            o.id != b.id
                && o.admin != AdminState::Removed
                && o.liveness == Liveness::Alive
                && [o.addr.as_str(), o.rpc_address()].iter().any(|a| *a == b.addr || *a == b.rpc_address())
        });
        if let Some(other) = clash {
            return Response::error(
                ErrorCode::PolicyViolation,
                format!(
                    "node {} cannot register at {} (node-to-node {}): node {} is registered there",
                    b.id,
                    b.addr,
                    b.rpc_address(),
                    other.id
                ),
            );
        }
        match self.brokers.get_mut(&b.id) {
            Some(old) if old.admin == AdminState::Removed => Response::error(
                ErrorCode::PolicyViolation,
                format!("node {} was removed from the cluster; node ids are never reused", b.id),
            ),
            Some(old) => {
                old.addr = b.addr.clone();
                old.rpc_addr = b.rpc_addr.clone();
                old.labels = b.labels.clone();
                Response::Ok
            }
            None => {
                let new = Broker::new(b.id, b.addr.clone(), b.labels.clone()).with_rpc_addr(b.rpc_address());
                self.brokers.insert(b.id, new);
                Response::Ok
            }
        }
    }

    fn set_admin(&mut self, node: NodeId, admin: AdminState) -> Response {
        let hosted = self.partitions_on(node);
        let Some(b) = self.brokers.get_mut(&node) else { return unknown_node(node) };
        if b.admin == AdminState::Removed {
            return Response::error(ErrorCode::PolicyViolation, format!("node {node} was removed"));
        }
        if admin == AdminState::Removed && hosted > 0 {
            return Response::error(
                ErrorCode::PolicyViolation,
                format!("node {node} still hosts {hosted} replicas; drain it first"),
            );
        }
        b.admin = admin;
        Response::Ok
    }

    fn start_move(&mut self, log_index: u64, group: GroupId, target: &[NodeId], reason: &str) -> Response {
        let brokers = &self.brokers;
        let Some((topic, rf, p)) = self.topics.values_mut().find_map(|t| {
            let (name, rf) = (t.name.clone(), t.replication_factor);
            t.partitions.iter_mut().find(|p| p.group == group).map(|p| (name, rf, p))
        }) else {
            return unknown_group(group);
        };
        if let Some(m) = &p.moving {
            return Response::error(
                ErrorCode::PolicyViolation,
                format!("{topic}/{} is already moving to {:?} (move {})", p.partition, m.target, m.id),
            );
        }
        let set: BTreeSet<NodeId> = target.iter().copied().collect();
        if set.len() != target.len() || target.is_empty() || target.len() > limits::REPLICATION_FACTOR_MAX as usize {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("target {target:?}: 1 to {} distinct nodes", limits::REPLICATION_FACTOR_MAX),
            );
        }
        for n in target {
            match brokers.get(n) {
                None => return unknown_node(*n),
                Some(b) if b.admin == AdminState::Removed => {
                    return Response::error(ErrorCode::PolicyViolation, format!("node {n} was removed"));
                }
                Some(_) => {}
            }
        }
        if let Err(why) = check_replica_count(rf, p.replicas.len(), target.len()) {
            return Response::error(
                ErrorCode::PolicyViolation,
                format!(
                    "{topic}/{}: {target:?} is {why}; a reassignment keeps the factor: change the factor \
                     (of every partition) first with `flotilla topic config {topic} --replication-factor {}`",
                    p.partition,
                    target.len()
                ),
            );
        }
        if target == p.replicas.as_slice() {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("{topic}/{} already has {target:?}", p.partition),
            );
        }
        p.moving =
            Some(Move { id: log_index, target: target.to_vec(), reason: reason.to_string(), rolling_back: Vec::new() });
        Response::MoveStarted(log_index)
    }

    fn create_topic(&mut self, name: &str, partitions: u32, rf: u32, policy: &TopicPolicy) -> Response {
        if let Err(e) = limits::check_topic_name(name) {
            return Response::error(ErrorCode::InvalidRequest, e);
        }
        if self.topics.contains_key(name) {
            return Response::error(ErrorCode::TopicExists, format!("topic '{name}' already exists"));
        }
        if self.topics.len() >= limits::TOPICS_MAX {
            return Response::error(
                ErrorCode::PolicyViolation,
                format!("the cluster has {} topics, the limit", limits::TOPICS_MAX),
            );
        }
        if partitions == 0 || partitions > limits::TOPIC_PARTITIONS_MAX {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("partitions must be 1..={}, got {partitions}", limits::TOPIC_PARTITIONS_MAX),
            );
        }
        if let Err(e) = check_rf(rf).and_then(|_| policy.check()) {
            return Response::error(ErrorCode::InvalidRequest, e);
        }
        let plan = match placement::place_topic(&self.brokers, &self.replica_load(), partitions, rf, policy) {
            Ok(p) => p,
            Err(e) => return Response::error(ErrorCode::PolicyViolation, e.to_string()),
        };
        let mut topic = Topic {
            name: name.to_string(),
            replication_factor: rf,
            policy: policy.clone(),
            partitions: Vec::with_capacity(partitions as usize),
        };
        for replicas in plan {
            topic.partitions.push(self.new_partition(topic.partitions.len() as PartitionId, replicas));
        }
        self.topics.insert(name.to_string(), topic.clone());
        Response::TopicCreated(topic)
    }

    fn new_partition(&mut self, partition: PartitionId, replicas: Vec<NodeId>) -> PartitionAssignment {
        let group = self.next_group;
        self.next_group += 1;
        PartitionAssignment { partition, group, replicas, epoch: 0, moving: None }
    }

    fn add_partitions(&mut self, name: &str, total: u32) -> Response {
        let Some(t) = self.topics.get(name) else {
            return Response::error(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist"));
        };
        let have = t.partitions.len() as u32;
        if total <= have || total > limits::TOPIC_PARTITIONS_MAX {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!(
                    "topic '{name}' has {have} partitions; the new count must be {}..={}",
                    have + 1,
                    limits::TOPIC_PARTITIONS_MAX
                ),
            );
        }
        let (rf, policy) = (t.replication_factor, t.policy.clone());
        let plan = match placement::place_topic(&self.brokers, &self.replica_load(), total - have, rf, &policy) {
            Ok(p) => p,
            Err(e) => return Response::error(ErrorCode::PolicyViolation, e.to_string()),
        };
        let mut added = Vec::new();
        for (i, replicas) in plan.into_iter().enumerate() {
            added.push(self.new_partition(have + i as PartitionId, replicas));
        }
        let t = self.topics.get_mut(name).expect("checked above");
        t.partitions.extend(added);
        Response::Ok
    }

    /// Replicas and preferred leaderships per broker (move targets count), for balance.
    pub fn replica_load(&self) -> BTreeMap<NodeId, placement::Load> {
        let mut load: BTreeMap<NodeId, placement::Load> = BTreeMap::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                for (i, r) in p.desired().iter().enumerate() {
                    let l = load.entry(*r).or_default();
                    l.replicas += 1;
                    if i == 0 {
                        l.leaders += 1;
                    }
                }
            }
        }
        load
    }

    fn partitions_on(&self, node: NodeId) -> usize {
        self.topics.values().flat_map(|t| &t.partitions).filter(|p| p.hosts().contains(&node)).count()
    }

    fn partition_mut(&mut self, group: GroupId) -> Option<&mut PartitionAssignment> {
        self.topics.values_mut().find_map(|t| t.partitions.iter_mut().find(|p| p.group == group))
    }

    pub fn brokers(&self) -> &BTreeMap<NodeId, Broker> {
        &self.brokers
    }

    pub fn topics(&self) -> &BTreeMap<String, Topic> {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn last_applied_index(&self) -> u64 {
        self.last_applied_index
    }

    /// Every partition group that should have a replica on `node` (current replicas and
    /// move targets).
    pub fn groups_on(&self, node: NodeId) -> BTreeMap<GroupId, PartitionAssignment> {
        let mut out = BTreeMap::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                if p.hosts().contains(&node) {
                    out.insert(p.group, p.clone());
                }
            }
        }
        out
    }

    /// The topic and partition of a group.
    pub fn partition_of_group(&self, group: GroupId) -> Option<(&Topic, &PartitionAssignment)> {
        self.topics.values().find_map(|t| t.partitions.iter().find(|p| p.group == group).map(|p| (t, p)))
    }

    /// Every move in progress, as (topic, partition).
    pub fn moves(&self) -> Vec<(&Topic, &PartitionAssignment)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().filter(|p| p.moving.is_some()).map(move |p| (t, p)))
            .collect()
    }
}

fn unknown_node(node: NodeId) -> Response {
    Response::error(ErrorCode::UnknownNode, format!("node {node} is not registered"))
}

fn unknown_group(group: GroupId) -> Response {
    Response::error(ErrorCode::UnknownPartition, format!("no partition has group {group}"))
}

fn check_rf(rf: u32) -> Result<(), String> {
    if rf == 0 || rf > limits::REPLICATION_FACTOR_MAX {
        return Err(format!("replication factor must be 1..={}, got {rf}", limits::REPLICATION_FACTOR_MAX));
    }
    Ok(())
}

/// A move keeps a partition at its topic's replication factor `rf`: its target has `rf`
/// replicas, or, while the partition has another count (the factor just changed, or too
/// few eligible nodes to grow), a count between the current one and `rf`. A move never
/// takes a partition further from its factor: below it, a partition would silently
/// tolerate fewer failures than its topic promises; above it, the controller would shrink
/// it back. Changing the count is `SetTopicConfig`'s job.
fn check_replica_count(rf: u32, current: usize, target: usize) -> Result<(), String> {
    let rf = rf as usize;
    let (low, high) = (rf.min(current), rf.max(current));
    if target < low {
        return Err(format!("{target} replicas, fewer than the topic's replication factor {rf}"));
    }
    if target > high {
        return Err(format!("{target} replicas, more than the topic's replication factor {rf}"));
    }
    Ok(())
}

fn check_broker(b: &Broker) -> Result<(), String> {
    if b.id == 0 {
        return Err("broker id 0 is reserved".into());
    }
    if b.addr.is_empty() || b.addr.len() > limits::LABEL_BYTES_MAX * 2 {
        return Err(format!("broker address '{}' is empty or too long", b.addr));
    }
    if b.rpc_addr.len() > limits::LABEL_BYTES_MAX * 2 {
        return Err(format!("broker rpc address '{}' is too long", b.rpc_addr));
    }
    b.labels.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: NodeId, zone: &str) -> Command {
        Command::RegisterBroker(Broker::new(
            id,
            format!("127.0.0.1:{}", 7070 + id),
            Labels { region: "r".into(), zone: zone.into(), rack: String::new() },
        ))
    }

    fn three_brokers() -> MetadataState {
        let mut s = MetadataState::new();
        s.apply(1, &broker(1, "a"));
        s.apply(2, &broker(2, "b"));
        s.apply(3, &broker(3, "c"));
        s
    }

    /// A live node's client or node-to-node address cannot be registered by another
    /// node; a gone node's can (its replacement at the same address), and a node keeps
    /// its own addresses, both of them, when it registers again.
    #[test]
    fn a_live_node_keeps_its_addresses() {
        let mut s = three_brokers();
        let at = |addr: &str, rpc: &str| Broker::new(4, addr, Labels::default()).with_rpc_addr(rpc);
        let clashes = [("127.0.0.1:7071", "127.0.0.1:9"), ("127.0.0.1:9", "127.0.0.1:7072"), ("x:1", "127.0.0.1:7073")];
        for (i, (addr, rpc)) in clashes.into_iter().enumerate() {
            let r = s.apply(4 + i as u64, &Command::RegisterBroker(at(addr, rpc)));
            assert!(matches!(&r, Response::Error { code: ErrorCode::PolicyViolation, .. }), "{addr} {rpc}: {r:?}");
        }
        s.apply(7, &Command::SetLiveness { node: 3, liveness: Liveness::Dead });
        assert_eq!(s.apply(8, &Command::RegisterBroker(at("127.0.0.1:7073", "127.0.0.1:7173"))), Response::Ok);
        assert_eq!(s.brokers()[&4].rpc_address(), "127.0.0.1:7173");
        let again = Broker::new(1, "127.0.0.1:7071", Labels::default()).with_rpc_addr("127.0.0.1:7171");
        assert_eq!(s.apply(9, &Command::RegisterBroker(again)), Response::Ok);
        assert_eq!(
            (s.brokers()[&1].addr.as_str(), s.brokers()[&1].rpc_address()),
            ("127.0.0.1:7071", "127.0.0.1:7171")
        );
        // One listener for both: stored as one address.
        let one = Broker::new(2, "127.0.0.1:7072", Labels::default()).with_rpc_addr("127.0.0.1:7072");
        assert_eq!(one.rpc_addr, "");
    }

    #[test]
    fn create_topic_assigns_distinct_replicas_and_fresh_groups() {
        let mut s = three_brokers();
        let r = s.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                partitions: 6,
                replication_factor: 3,
                policy: TopicPolicy::default(),
            },
        );
        let Response::TopicCreated(t) = r else { panic!("{r:?}") };
        assert_eq!(t.partitions.len(), 6);
        let mut groups = std::collections::BTreeSet::new();
        for p in &t.partitions {
            let set: std::collections::BTreeSet<_> = p.replicas.iter().collect();
            assert_eq!(set.len(), 3);
            assert!(groups.insert(p.group));
            assert_ne!(p.group, flotilla_types::METADATA_GROUP);
        }
        // Preferred leaders are spread evenly: two per broker.
        for b in 1..=3 {
            assert_eq!(t.partitions.iter().filter(|p| p.replicas[0] == b).count(), 2);
        }
    }

    #[test]
    fn errors_are_codes_not_panics() {
        let mut s = three_brokers();
        let c = Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 3,
            policy: TopicPolicy::default(),
        };
        assert!(matches!(s.apply(4, &c), Response::TopicCreated(_)));
        assert!(matches!(s.apply(5, &c), Response::Error { code: ErrorCode::TopicExists, .. }));
        let too_many = Command::CreateTopic {
            name: "u".into(),
            partitions: 1,
            replication_factor: 4,
            policy: TopicPolicy::default(),
        };
        assert!(matches!(s.apply(6, &too_many), Response::Error { code: ErrorCode::PolicyViolation, .. }));
        let bad = Command::CreateTopic {
            name: "a b".into(),
            partitions: 1,
            replication_factor: 1,
            policy: TopicPolicy::default(),
        };
        assert!(matches!(s.apply(7, &bad), Response::Error { code: ErrorCode::InvalidRequest, .. }));
        let gone = Command::DeleteTopic { name: "nope".into() };
        assert!(matches!(s.apply(8, &gone), Response::Error { code: ErrorCode::UnknownTopic, .. }));
    }

    #[test]
    fn group_ids_are_never_reused_after_delete() {
        let mut s = three_brokers();
        let c = Command::CreateTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: 3,
            policy: TopicPolicy::default(),
        };
        let Response::TopicCreated(a) = s.apply(4, &c) else { panic!() };
        s.apply(5, &Command::DeleteTopic { name: "t".into() });
        let Response::TopicCreated(b) = s.apply(6, &c) else { panic!() };
        assert!(b.partitions[0].group > a.partitions[1].group);
    }

    fn create(s: &mut MetadataState, index: u64, name: &str, partitions: u32) -> Topic {
        let c = Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 3,
            policy: TopicPolicy::default(),
        };
        match s.apply(index, &c) {
            Response::TopicCreated(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_move_hosts_both_sets_until_finished_then_bumps_the_epoch() {
        let mut s = three_brokers();
        s.apply(4, &broker(4, "a"));
        let t = create(&mut s, 5, "t", 1);
        let group = t.partitions[0].group;
        let old = t.partitions[0].replicas.clone();
        let mut target = old.clone();
        let leaving = target.pop().unwrap();
        target.push(4);
        let Response::MoveStarted(id) =
            s.apply(6, &Command::StartMove { group, target: target.clone(), reason: "test".into() })
        else {
            panic!()
        };
        assert!(s.groups_on(4).contains_key(&group), "the new replica starts before the move finishes");
        assert!(s.groups_on(leaving).contains_key(&group), "the old replica stays until the move finishes");
        // A second move of the same partition is refused; so is a finish for another move.
        let again = Command::StartMove { group, target: old.clone(), reason: "x".into() };
        assert!(matches!(s.apply(7, &again), Response::Error { code: ErrorCode::PolicyViolation, .. }));
        let stale = Command::FinishMove { group, move_id: id + 100 };
        assert!(matches!(s.apply(8, &stale), Response::Error { code: ErrorCode::StaleEpoch, .. }));
        assert_eq!(s.apply(9, &Command::FinishMove { group, move_id: id }), Response::Ok);
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!((p.replicas.clone(), p.epoch, p.moving.clone()), (target, 1, None));
        assert!(!s.groups_on(leaving).contains_key(&group));
    }

    #[test]
    fn a_cancelled_move_leaves_the_old_replicas() {
        let mut s = three_brokers();
        s.apply(4, &broker(4, "a"));
        let t = create(&mut s, 5, "t", 1);
        let group = t.partitions[0].group;
        let Response::MoveStarted(id) =
            s.apply(6, &Command::StartMove { group, target: vec![4, 1, 2], reason: "r".into() })
        else {
            panic!()
        };
        let Response::MoveStarted(back) = s.apply(7, &Command::CancelMove { group }) else { panic!() };
        assert!(matches!(
            s.apply(8, &Command::FinishMove { group, move_id: id }),
            Response::Error { code: ErrorCode::StaleEpoch, .. }
        ));
        // Node 4 may already be a voter: it keeps its replica until the group is back.
        assert!(s.groups_on(4).contains_key(&group));
        assert_eq!(s.topic("t").unwrap().partitions[0].desired(), t.partitions[0].replicas.as_slice());
        assert_eq!(s.apply(9, &Command::FinishMove { group, move_id: back }), Response::Ok);
        assert_eq!(s.topic("t").unwrap().partitions[0].replicas, t.partitions[0].replicas);
        assert!(!s.groups_on(4).contains_key(&group));
    }

    #[test]
    fn a_node_is_removed_only_once_empty_and_never_comes_back() {
        let mut s = three_brokers();
        s.apply(4, &broker(4, "a"));
        let t = create(&mut s, 5, "t", 4);
        let on4 = t.partitions.iter().filter(|p| p.replicas.contains(&4)).count();
        assert!(on4 > 0);
        let remove = Command::SetAdmin { node: 4, admin: AdminState::Removed };
        assert!(matches!(s.apply(6, &remove), Response::Error { code: ErrorCode::PolicyViolation, .. }));
        assert_eq!(s.apply(7, &Command::SetAdmin { node: 4, admin: AdminState::Draining }), Response::Ok);
        assert_eq!(s.brokers()[&4].state_name(), "draining");
        let mut index = 8;
        for p in t.partitions.iter().filter(|p| p.replicas.contains(&4)) {
            let target: Vec<NodeId> = vec![1, 2, 3];
            let Response::MoveStarted(id) =
                s.apply(index, &Command::StartMove { group: p.group, target, reason: "drain".into() })
            else {
                panic!()
            };
            assert_eq!(s.apply(index + 1, &Command::FinishMove { group: p.group, move_id: id }), Response::Ok);
            index += 2;
        }
        assert_eq!(s.apply(index, &remove), Response::Ok);
        assert!(matches!(
            s.apply(index + 1, &broker(4, "a")),
            Response::Error { code: ErrorCode::PolicyViolation, .. }
        ));
        assert_eq!(s.brokers()[&4].state_name(), "removed");
    }

    #[test]
    fn liveness_and_preferred_leader_are_recorded() {
        let mut s = three_brokers();
        let t = create(&mut s, 4, "t", 1);
        let group = t.partitions[0].group;
        s.apply(5, &Command::SetLiveness { node: 2, liveness: Liveness::Suspected });
        assert_eq!(s.brokers()[&2].state_name(), "suspected");
        let other = t.partitions[0].replicas[2];
        assert_eq!(s.apply(6, &Command::SetPreferredLeader { group, leader: other }), Response::Ok);
        assert_eq!(s.topic("t").unwrap().partitions[0].replicas[0], other);
        assert_eq!(s.topic("t").unwrap().partitions[0].replicas.len(), 3);
        let add = Command::AddPartitions { name: "t".into(), total: 3 };
        // A suspected node receives no new replicas: two eligible nodes cannot hold three.
        assert!(matches!(s.apply(7, &add), Response::Error { code: ErrorCode::PolicyViolation, .. }));
        s.apply(77, &Command::SetLiveness { node: 2, liveness: Liveness::Alive });
        assert_eq!(s.apply(78, &add), Response::Ok);
        assert_eq!(s.topic("t").unwrap().partitions.len(), 3);
        assert!(matches!(s.apply(79, &add), Response::Error { code: ErrorCode::InvalidRequest, .. }));
    }

    /// A reassignment to fewer replicas than the topic's replication factor (or to more)
    /// is refused where the command is applied, so a forwarded or raced request is
    /// refused too; the message says how to change the factor.
    #[test]
    fn a_move_to_fewer_or_more_replicas_than_the_replication_factor_is_refused() {
        let mut s = three_brokers();
        s.apply(4, &broker(4, "a"));
        s.apply(5, &broker(5, "b"));
        let t = create(&mut s, 6, "t", 1);
        let group = t.partitions[0].group;
        let start = |s: &mut MetadataState, index, target: Vec<NodeId>| {
            s.apply(index, &Command::StartMove { group, target, reason: "reassign".into() })
        };
        let refused = |r: Response| match r {
            Response::Error { code: ErrorCode::PolicyViolation, message } => message,
            other => panic!("not refused as a policy violation: {other:?}"),
        };
        let shrink = refused(start(&mut s, 7, vec![4, 2]));
        assert!(shrink.contains("fewer than the topic's replication factor 3"), "{shrink}");
        assert!(shrink.contains("flotilla topic config t --replication-factor 2"), "{shrink}");
        let grow = refused(start(&mut s, 8, vec![4, 2, 3, 1]));
        assert!(grow.contains("more than the topic's replication factor 3"), "{grow}");
        assert!(grow.contains("flotilla topic config t --replication-factor 4"), "{grow}");
        assert_eq!(s.topic("t").unwrap().partitions[0].moving, None, "nothing started");
        // A move that keeps the factor starts.
        assert!(matches!(start(&mut s, 9, vec![4, 2, 3]), Response::MoveStarted(9)));
        s.apply(10, &Command::CancelMove { group });
        let back = s.topic("t").unwrap().partitions[0].moving.as_ref().unwrap().id;
        assert_eq!(s.apply(11, &Command::FinishMove { group, move_id: back }), Response::Ok);

        // After the factor changes, a move goes from the old count toward the new one (the
        // controller's own moves), but not past it.
        let config =
            |rf| Command::SetTopicConfig { name: "t".into(), replication_factor: rf, policy: TopicPolicy::default() };
        assert_eq!(s.apply(12, &config(5)), Response::Ok);
        refused(start(&mut s, 13, vec![1, 2]));
        assert!(matches!(start(&mut s, 14, vec![1, 2, 3, 4]), Response::MoveStarted(14)));
        s.apply(15, &Command::FinishMove { group, move_id: 14 });
        assert_eq!(s.apply(16, &config(2)), Response::Ok);
        refused(start(&mut s, 17, vec![1, 2, 3, 4, 5]));
        refused(start(&mut s, 18, vec![1]));
        assert!(matches!(start(&mut s, 19, vec![1, 2, 3]), Response::MoveStarted(19)));
    }

    #[test]
    fn producers_get_fresh_ids_and_named_ones_the_next_epoch() {
        let mut s = MetadataState::new();
        let init = |s: &mut MetadataState, i: u64, name: Option<&str>| {
            s.apply(i, &Command::InitProducer { name: name.map(str::to_string) })
        };
        assert_eq!(init(&mut s, 1, None), Response::Producer { id: 1, epoch: 0 });
        assert_eq!(init(&mut s, 2, Some("orders")), Response::Producer { id: 2, epoch: 0 });
        assert_eq!(init(&mut s, 3, None), Response::Producer { id: 3, epoch: 0 });
        assert_eq!(init(&mut s, 4, Some("orders")), Response::Producer { id: 2, epoch: 1 });
        assert_eq!(init(&mut s, 5, Some("billing")), Response::Producer { id: 4, epoch: 0 });
        assert!(matches!(init(&mut s, 6, Some("")), Response::Error { code: ErrorCode::InvalidRequest, .. }));
        // A name whose epochs ran out gets a new id.
        s.named_producers.insert("old".into(), (9, u16::MAX));
        assert_eq!(init(&mut s, 7, Some("old")), Response::Producer { id: 5, epoch: 0 });
    }

    #[test]
    fn same_log_same_state() {
        let cmds = [
            broker(2, "b"),
            broker(1, "a"),
            broker(3, "a"),
            Command::CreateTopic {
                name: "x".into(),
                partitions: 5,
                replication_factor: 2,
                policy: TopicPolicy::default(),
            },
        ];
        let mut a = MetadataState::new();
        let mut b = MetadataState::new();
        for (i, c) in cmds.iter().enumerate() {
            a.apply(i as u64 + 1, c);
            b.apply(i as u64 + 1, c);
        }
        assert_eq!(a, b);
    }
}
