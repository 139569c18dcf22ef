//! Checked requests: what a node's service sees after the wire request has been
//! validated. Each `TryFrom<v1::…Request>` rejects junk with the [`v1::Error`] to answer,
//! so nothing past the `rpc` crate ever sees an unchecked name, count or batch.
//!
//! Sizes the client may ask for (`max_bytes`, `max_wait_ms`) are clamped to their limits
//! rather than refused, as `flotilla_types::limits` documents.

use std::time::Duration;

use std::collections::BTreeSet;

use flotilla_types::{Acks, Assignor, ErrorCode, NodeId, Offset, PartitionId, RecordBatch, limits};

use crate::v1;

fn invalid(message: impl Into<String>) -> v1::Error {
    v1::Error::new(ErrorCode::InvalidRequest, message)
}

fn topic_name(name: String) -> Result<String, v1::Error> {
    limits::check_topic_name(&name).map_err(invalid)?;
    Ok(name)
}

/// A client id within its limit; any bytes of valid UTF-8 (prost checks that).
fn client_id(id: String) -> Result<String, v1::Error> {
    if id.len() > limits::CLIENT_ID_BYTES_MAX {
        return Err(invalid(format!(
            "client id of {} bytes: at most {} are allowed",
            id.len(),
            limits::CLIENT_ID_BYTES_MAX
        )));
    }
    Ok(id)
}

pub use flotilla_types::limits::{CONTROLLERS_MAX, POLICY_ENTRIES_MAX};

fn node_id(what: &str, id: NodeId) -> Result<NodeId, v1::Error> {
    if id == 0 {
        return Err(invalid(format!("{what}: node ids start at 1, got 0")));
    }
    Ok(id)
}

/// A list of node ids: `1..=max` of them, distinct, none 0.
fn node_ids(what: &str, ids: Vec<NodeId>, max: usize) -> Result<Vec<NodeId>, v1::Error> {
    if ids.is_empty() || ids.len() > max {
        return Err(invalid(format!("{what}: {} nodes given; 1 to {max} are allowed", ids.len())));
    }
    let mut seen = BTreeSet::new();
    for id in &ids {
        node_id(what, *id)?;
        if !seen.insert(*id) {
            return Err(invalid(format!("{what}: node {id} is listed twice")));
        }
    }
    Ok(ids)
}

/// A label value (region, zone, rack): at most `LABEL_BYTES_MAX` bytes, printable, no
/// whitespace; empty only where `may_be_empty`.
fn label(what: &str, value: String, may_be_empty: bool) -> Result<String, v1::Error> {
    flotilla_types::policy::check_label(what, &value, may_be_empty).map_err(invalid)?;
    Ok(value)
}

/// `host:port` with a non-empty host and a port number, as a node advertises itself.
fn host_port(what: &str, addr: String) -> Result<String, v1::Error> {
    let bad = || invalid(format!("{what} {addr:?} is not HOST:PORT"));
    if addr.len() > 2 * limits::LABEL_BYTES_MAX {
        return Err(invalid(format!("{what} is {} bytes, the limit is {}", addr.len(), 2 * limits::LABEL_BYTES_MAX)));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(bad());
    }
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(addr)
}

/// A produce request whose batch has been verified (checksum, structure, limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produce {
    pub topic: String,
    pub partition: PartitionId,
    pub batch: RecordBatch,
    pub acks: Acks,
    /// The principal its quota is charged to.
    pub client_id: String,
}

impl TryFrom<v1::ProduceRequest> for Produce {
    type Error = v1::Error;
    fn try_from(r: v1::ProduceRequest) -> Result<Produce, v1::Error> {
        let topic = topic_name(r.topic)?;
        let acks = acks_from_wire(r.acks)?;
        let client_id = client_id(r.client_id)?;
        let batch = RecordBatch::decode(r.batch).map_err(|e| v1::Error::from(&e))?;
        Ok(Produce { topic, partition: r.partition, batch, acks, client_id })
    }
}

/// The acknowledgement level a wire value names; an unknown one is refused.
pub fn acks_from_wire(acks: i32) -> Result<Acks, v1::Error> {
    match v1::Acks::try_from(acks) {
        Ok(v1::Acks::All) => Ok(Acks::All),
        Ok(v1::Acks::Leader) => Ok(Acks::Leader),
        Err(_) => Err(invalid(format!("unknown acks level {acks}: 0 (all) or 1 (leader)"))),
    }
}

/// The wire value of an acknowledgement level.
pub fn acks_to_wire(acks: Acks) -> i32 {
    match acks {
        Acks::All => v1::Acks::All as i32,
        Acks::Leader => v1::Acks::Leader as i32,
    }
}

impl v1::ProduceRequest {
    /// The wire request for `batch`.
    pub fn new(
        topic: impl Into<String>,
        partition: PartitionId,
        batch: &RecordBatch,
        acks: Acks,
    ) -> v1::ProduceRequest {
        v1::ProduceRequest {
            topic: topic.into(),
            partition,
            batch: batch.bytes().clone(),
            acks: acks_to_wire(acks),
            client_id: String::new(),
        }
    }
}

/// An idempotent producer's request for its id: `name` 1..=`PRODUCER_NAME_BYTES_MAX`
/// printable bytes without whitespace, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducer {
    pub name: Option<String>,
}

impl TryFrom<v1::InitProducerRequest> for InitProducer {
    type Error = v1::Error;
    fn try_from(r: v1::InitProducerRequest) -> Result<InitProducer, v1::Error> {
        if r.name.is_empty() {
            return Ok(InitProducer { name: None });
        }
        if r.name.len() > limits::PRODUCER_NAME_BYTES_MAX {
            return Err(invalid(format!(
                "producer name is {} bytes, the limit is {}",
                r.name.len(),
                limits::PRODUCER_NAME_BYTES_MAX
            )));
        }
        if let Some(c) = r.name.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("producer name {:?} contains {c:?}", r.name)));
        }
        Ok(InitProducer { name: Some(r.name) })
    }
}

/// A fetch with its byte budget and wait clamped to the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    /// At most `FETCH_BYTES_MAX`; at least one batch is returned whatever this says.
    pub max_bytes: usize,
    /// At most `FETCH_WAIT_MS_MAX`.
    pub max_wait: Duration,
    /// A replica that does not lead may answer with what it has committed.
    pub from_follower: bool,
    /// The principal its quota is charged to.
    pub client_id: String,
}

impl TryFrom<v1::FetchRequest> for Fetch {
    type Error = v1::Error;
    fn try_from(r: v1::FetchRequest) -> Result<Fetch, v1::Error> {
        Ok(Fetch {
            topic: topic_name(r.topic)?,
            partition: r.partition,
            offset: r.offset,
            max_bytes: (r.max_bytes as usize).min(limits::FETCH_BYTES_MAX),
            max_wait: Duration::from_millis(u64::from(r.max_wait_ms).min(limits::FETCH_WAIT_MS_MAX)),
            from_follower: r.from_follower,
            client_id: client_id(r.client_id)?,
        })
    }
}

/// One partition named by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: PartitionId,
}

/// A partition's offsets, and optionally the first offset at or after a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsets {
    pub topic: String,
    pub partition: PartitionId,
    pub timestamp_ms: Option<u64>,
}

impl TryFrom<v1::ListOffsetsRequest> for ListOffsets {
    type Error = v1::Error;
    fn try_from(r: v1::ListOffsetsRequest) -> Result<ListOffsets, v1::Error> {
        Ok(ListOffsets { topic: topic_name(r.topic)?, partition: r.partition, timestamp_ms: r.timestamp_ms })
    }
}

/// Records of one partition to delete: every offset below `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRecords {
    pub topic: String,
    pub partition: PartitionId,
    pub before: Offset,
}

impl TryFrom<v1::DeleteRecordsRequest> for DeleteRecords {
    type Error = v1::Error;
    fn try_from(r: v1::DeleteRecordsRequest) -> Result<DeleteRecords, v1::Error> {
        Ok(DeleteRecords { topic: topic_name(r.topic)?, partition: r.partition, before: r.before_offset })
    }
}

/// Which topics a Metadata request asks about; an empty list means every topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataQuery {
    pub topics: Vec<String>,
}

impl TryFrom<v1::MetadataRequest> for MetadataQuery {
    type Error = v1::Error;
    fn try_from(r: v1::MetadataRequest) -> Result<MetadataQuery, v1::Error> {
        if r.topics.len() > limits::TOPICS_MAX {
            return Err(invalid(format!("{} topics asked for, the limit is {}", r.topics.len(), limits::TOPICS_MAX)));
        }
        let topics = r.topics.into_iter().map(topic_name).collect::<Result<_, _>>()?;
        Ok(MetadataQuery { topics })
    }
}

fn partition_count(partitions: u32) -> Result<u32, v1::Error> {
    if partitions == 0 || partitions > limits::TOPIC_PARTITIONS_MAX {
        return Err(invalid(format!(
            "{partitions} partitions requested; a topic has 1 to {} partitions",
            limits::TOPIC_PARTITIONS_MAX
        )));
    }
    Ok(partitions)
}

fn replication_factor(rf: u32) -> Result<u32, v1::Error> {
    if rf == 0 || rf > limits::REPLICATION_FACTOR_MAX {
        return Err(invalid(format!(
            "replication factor {rf} requested; it must be 1 to {}",
            limits::REPLICATION_FACTOR_MAX
        )));
    }
    Ok(rf)
}

// A topic's placement and retention policy and a node's labels come from the wire
// checked (`TopicPolicy::check`, `Labels::check`): labels and node ids well-formed.
// Whether the cluster can satisfy a policy is decided by the metadata group.
pub use flotilla_types::{Labels, TopicPolicy};

impl TryFrom<v1::TopicPolicy> for TopicPolicy {
    type Error = v1::Error;
    fn try_from(p: v1::TopicPolicy) -> Result<TopicPolicy, v1::Error> {
        let policy = TopicPolicy {
            allowed_regions: p.allowed_regions,
            preferred_leader_region: p.preferred_leader_region,
            excluded_nodes: p.excluded_nodes,
            excluded_zones: p.excluded_zones,
            retention_ms: p.retention_ms,
            retention_bytes: p.retention_bytes,
        };
        policy.check().map_err(invalid)?;
        Ok(policy)
    }
}

impl From<&TopicPolicy> for v1::TopicPolicy {
    fn from(p: &TopicPolicy) -> v1::TopicPolicy {
        v1::TopicPolicy {
            allowed_regions: p.allowed_regions.clone(),
            preferred_leader_region: p.preferred_leader_region.clone(),
            excluded_nodes: p.excluded_nodes.clone(),
            excluded_zones: p.excluded_zones.clone(),
            retention_ms: p.retention_ms,
            retention_bytes: p.retention_bytes,
        }
    }
}

/// An absent policy is the empty one (no constraints).
fn policy(p: Option<v1::TopicPolicy>) -> Result<TopicPolicy, v1::Error> {
    p.map(TopicPolicy::try_from).transpose().map(Option::unwrap_or_default)
}

/// A topic to create, its counts within the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    /// `1..=TOPIC_PARTITIONS_MAX`.
    pub partitions: u32,
    /// `1..=REPLICATION_FACTOR_MAX`.
    pub replication_factor: u32,
    pub policy: TopicPolicy,
}

impl CreateTopic {
    /// Checks the name and counts; the same checks a node applies. No placement policy.
    pub fn new(name: impl Into<String>, partitions: u32, replication_factor: u32) -> Result<CreateTopic, v1::Error> {
        Ok(CreateTopic {
            name: topic_name(name.into())?,
            partitions: partition_count(partitions)?,
            replication_factor: self::replication_factor(replication_factor)?,
            policy: TopicPolicy::default(),
        })
    }
}

impl TryFrom<v1::CreateTopicRequest> for CreateTopic {
    type Error = v1::Error;
    fn try_from(r: v1::CreateTopicRequest) -> Result<CreateTopic, v1::Error> {
        let c = CreateTopic::new(r.name, r.partitions, r.replication_factor)?;
        Ok(CreateTopic { policy: policy(r.policy)?, ..c })
    }
}

impl From<&CreateTopic> for v1::CreateTopicRequest {
    fn from(c: &CreateTopic) -> v1::CreateTopicRequest {
        v1::CreateTopicRequest {
            name: c.name.clone(),
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            policy: (c.policy != TopicPolicy::default()).then(|| v1::TopicPolicy::from(&c.policy)),
        }
    }
}

/// A topic's new replication factor and policy (SetTopicConfig, and the scenario of Plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    /// `1..=REPLICATION_FACTOR_MAX`; with `merge`, 0 keeps the topic's.
    pub replication_factor: u32,
    pub policy: TopicPolicy,
    /// Change only what is given (`reset` names the keys to clear); else replace.
    pub merge: bool,
    pub reset: Vec<PolicyKey>,
}

/// A key of a topic's policy, as `SetTopicConfig`'s `reset` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKey {
    AllowedRegions,
    PreferredLeaderRegion,
    ExcludeNodes,
    ExcludeZones,
    RetentionMs,
    RetentionBytes,
}

impl PolicyKey {
    pub const ALL: [(PolicyKey, &'static str); 6] = [
        (PolicyKey::AllowedRegions, "allowed-regions"),
        (PolicyKey::PreferredLeaderRegion, "preferred-leader-region"),
        (PolicyKey::ExcludeNodes, "exclude-nodes"),
        (PolicyKey::ExcludeZones, "exclude-zones"),
        (PolicyKey::RetentionMs, "retention-ms"),
        (PolicyKey::RetentionBytes, "retention-bytes"),
    ];

    pub fn parse(name: &str) -> Option<PolicyKey> {
        PolicyKey::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }

    /// `current` with this key back at its default.
    pub fn reset(self, p: &mut TopicPolicy) {
        match self {
            PolicyKey::AllowedRegions => p.allowed_regions.clear(),
            PolicyKey::PreferredLeaderRegion => p.preferred_leader_region = None,
            PolicyKey::ExcludeNodes => p.excluded_nodes.clear(),
            PolicyKey::ExcludeZones => p.excluded_zones.clear(),
            PolicyKey::RetentionMs => p.retention_ms = None,
            PolicyKey::RetentionBytes => p.retention_bytes = None,
        }
    }
}

impl TopicConfig {
    /// The topic's policy once this change is applied to `current` (and its replication
    /// factor, `current_rf` when this one keeps it).
    pub fn merged(&self, current_rf: u32, current: &TopicPolicy) -> (u32, TopicPolicy) {
        if !self.merge {
            return (self.replication_factor, self.policy.clone());
        }
        let mut p = current.clone();
        for k in &self.reset {
            k.reset(&mut p);
        }
        let given = &self.policy;
        if !given.allowed_regions.is_empty() {
            p.allowed_regions = given.allowed_regions.clone();
        }
        if given.preferred_leader_region.is_some() {
            p.preferred_leader_region = given.preferred_leader_region.clone();
        }
        if !given.excluded_nodes.is_empty() {
            p.excluded_nodes = given.excluded_nodes.clone();
        }
        if !given.excluded_zones.is_empty() {
            p.excluded_zones = given.excluded_zones.clone();
        }
        if given.retention_ms.is_some() {
            p.retention_ms = given.retention_ms;
        }
        if given.retention_bytes.is_some() {
            p.retention_bytes = given.retention_bytes;
        }
        let rf = if self.replication_factor == 0 { current_rf } else { self.replication_factor };
        (rf, p)
    }
}

impl TopicConfig {
    fn new(name: String, rf: u32, p: Option<v1::TopicPolicy>) -> Result<TopicConfig, v1::Error> {
        Ok(TopicConfig {
            name: topic_name(name)?,
            replication_factor: replication_factor(rf)?,
            policy: policy(p)?,
            merge: false,
            reset: Vec::new(),
        })
    }
}

impl TryFrom<v1::SetTopicConfigRequest> for TopicConfig {
    type Error = v1::Error;
    fn try_from(r: v1::SetTopicConfigRequest) -> Result<TopicConfig, v1::Error> {
        if !r.merge {
            return TopicConfig::new(r.name, r.replication_factor, r.policy);
        }
        if r.reset.len() > PolicyKey::ALL.len() {
            return Err(invalid(format!("reset names {} keys; a policy has {}", r.reset.len(), PolicyKey::ALL.len())));
        }
        let mut reset = Vec::new();
        for name in &r.reset {
            let key = PolicyKey::parse(name).ok_or_else(|| {
                let known: Vec<&str> = PolicyKey::ALL.iter().map(|(_, n)| *n).collect();
                invalid(format!(
                    "reset: '{}' is not a policy key ({})",
                    name.chars().take(64).collect::<String>(),
                    known.join(", ")
                ))
            })?;
            reset.push(key);
        }
        let rf = match r.replication_factor {
            0 => 0,
            rf => replication_factor(rf)?,
        };
        Ok(TopicConfig {
            name: topic_name(r.name)?,
            replication_factor: rf,
            policy: policy(r.policy)?,
            merge: true,
            reset,
        })
    }
}

/// A topic to grow to `total` partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddPartitions {
    pub name: String,
    /// `1..=TOPIC_PARTITIONS_MAX`; more than the topic has (checked by the node).
    pub total: u32,
}

impl TryFrom<v1::AddPartitionsRequest> for AddPartitions {
    type Error = v1::Error;
    fn try_from(r: v1::AddPartitionsRequest) -> Result<AddPartitions, v1::Error> {
        Ok(AddPartitions { name: topic_name(r.name)?, total: partition_count(r.total)? })
    }
}

/// A node's labels from the wire, checked (absent: none).
pub fn labels(l: Option<v1::Labels>) -> Result<Labels, v1::Error> {
    let l = l.unwrap_or_default();
    let labels = Labels { region: l.region, zone: l.zone, rack: l.rack };
    labels.check().map_err(invalid)?;
    Ok(labels)
}

impl From<&Labels> for v1::Labels {
    fn from(l: &Labels) -> v1::Labels {
        v1::Labels { region: l.region.clone(), zone: l.zone.clone(), rack: l.rack.clone() }
    }
}

/// A node that joins: its id, address and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddNode {
    pub id: NodeId,
    /// Where clients reach it, `host:port`.
    pub addr: String,
    /// Where other nodes reach it, `host:port` (empty: `addr`).
    pub rpc_addr: String,
    pub labels: Labels,
}

impl TryFrom<v1::AddNodeRequest> for AddNode {
    type Error = v1::Error;
    fn try_from(r: v1::AddNodeRequest) -> Result<AddNode, v1::Error> {
        Ok(AddNode {
            id: node_id("the node id", r.id)?,
            addr: host_port("the node address", r.addr)?,
            rpc_addr: if r.rpc_addr.is_empty() {
                String::new()
            } else {
                host_port("the node's node-to-node address", r.rpc_addr)?
            },
            labels: labels(r.labels)?,
        })
    }
}

/// A node to drain (or, with `undo`, to make active again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainNode {
    pub id: NodeId,
    pub undo: bool,
}

impl TryFrom<v1::DrainNodeRequest> for DrainNode {
    type Error = v1::Error;
    fn try_from(r: v1::DrainNodeRequest) -> Result<DrainNode, v1::Error> {
        Ok(DrainNode { id: node_id("the node id", r.id)?, undo: r.undo })
    }
}

/// A request naming one node (RemoveNode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef(pub NodeId);

impl TryFrom<v1::RemoveNodeRequest> for NodeRef {
    type Error = v1::Error;
    fn try_from(r: v1::RemoveNodeRequest) -> Result<NodeRef, v1::Error> {
        Ok(NodeRef(node_id("the node id", r.id)?))
    }
}

/// A node to replace, or only to report on (ReplaceNode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaceNode {
    pub id: NodeId,
    pub status_only: bool,
}

impl TryFrom<v1::ReplaceNodeRequest> for ReplaceNode {
    type Error = v1::Error;
    fn try_from(r: v1::ReplaceNodeRequest) -> Result<ReplaceNode, v1::Error> {
        Ok(ReplaceNode { id: node_id("the node id", r.id)?, status_only: r.status_only })
    }
}

/// A partition to move to `replicas` (distinct, `1..=REPLICATION_FACTOR_MAX` of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassign {
    pub topic: String,
    pub partition: PartitionId,
    pub replicas: Vec<NodeId>,
}

impl TryFrom<v1::ReassignRequest> for Reassign {
    type Error = v1::Error;
    fn try_from(r: v1::ReassignRequest) -> Result<Reassign, v1::Error> {
        Ok(Reassign {
            topic: topic_name(r.topic)?,
            partition: r.partition,
            replicas: node_ids("the replicas", r.replicas, limits::REPLICATION_FACTOR_MAX as usize)?,
        })
    }
}

/// A partition whose preferred leader becomes `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLeader {
    pub topic: String,
    pub partition: PartitionId,
    pub to: NodeId,
}

impl TryFrom<v1::TransferLeaderRequest> for TransferLeader {
    type Error = v1::Error;
    fn try_from(r: v1::TransferLeaderRequest) -> Result<TransferLeader, v1::Error> {
        Ok(TransferLeader { topic: topic_name(r.topic)?, partition: r.partition, to: node_id("the new leader", r.to)? })
    }
}

/// What a Plan request asks about, checked.
pub use flotilla_types::cluster::PlanScenario;

impl TryFrom<v1::PlanRequest> for PlanScenario {
    type Error = v1::Error;
    fn try_from(r: v1::PlanRequest) -> Result<PlanScenario, v1::Error> {
        use v1::plan_request::Scenario as S;
        Ok(match r.scenario {
            None | Some(S::Now(_)) => PlanScenario::Now,
            Some(S::DrainNode(id)) => PlanScenario::Drain(node_id("the node to drain", id)?),
            Some(S::DeadNode(id)) => PlanScenario::Dead(node_id("the dead node", id)?),
            Some(S::AddNode(a)) => {
                PlanScenario::AddNode { id: node_id("the new node", a.id)?, labels: labels(a.labels)? }
            }
            Some(S::TopicConfig(t)) => {
                let TopicConfig { name, replication_factor, policy, .. } =
                    TopicConfig::new(t.name, t.replication_factor, t.policy)?;
                PlanScenario::TopicConfig { name, replication_factor, policy }
            }
        })
    }
}

impl From<&PlanScenario> for v1::PlanRequest {
    fn from(s: &PlanScenario) -> v1::PlanRequest {
        use v1::plan_request::{self as pr, Scenario as S};
        let scenario = match s {
            PlanScenario::Now => S::Now(pr::Now {}),
            PlanScenario::Drain(id) => S::DrainNode(*id),
            PlanScenario::Dead(id) => S::DeadNode(*id),
            PlanScenario::AddNode { id, labels } => S::AddNode(pr::AddNode { id: *id, labels: Some(labels.into()) }),
            PlanScenario::TopicConfig { name, replication_factor, policy } => S::TopicConfig(pr::TopicConfig {
                name: name.clone(),
                replication_factor: *replication_factor,
                policy: Some(policy.into()),
            }),
        };
        v1::PlanRequest { scenario: Some(scenario) }
    }
}

/// The metadata group's new voters: `1..=CONTROLLERS_MAX` distinct nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetControllers {
    pub voters: Vec<NodeId>,
}

impl TryFrom<v1::SetControllersRequest> for SetControllers {
    type Error = v1::Error;
    fn try_from(r: v1::SetControllersRequest) -> Result<SetControllers, v1::Error> {
        Ok(SetControllers { voters: node_ids("the controllers", r.voters, CONTROLLERS_MAX)? })
    }
}

/// A request naming one topic (DeleteTopic, DescribeTopic), its name checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName(pub String);

impl TryFrom<v1::DeleteTopicRequest> for TopicName {
    type Error = v1::Error;
    fn try_from(r: v1::DeleteTopicRequest) -> Result<TopicName, v1::Error> {
        Ok(TopicName(topic_name(r.name)?))
    }
}

impl TryFrom<v1::DescribeTopicRequest> for TopicName {
    type Error = v1::Error;
    fn try_from(r: v1::DescribeTopicRequest) -> Result<TopicName, v1::Error> {
        Ok(TopicName(topic_name(r.name)?))
    }
}

impl TryFrom<v1::CancelMoveRequest> for TopicPartition {
    type Error = v1::Error;
    fn try_from(r: v1::CancelMoveRequest) -> Result<TopicPartition, v1::Error> {
        Ok(TopicPartition { topic: topic_name(r.topic)?, partition: r.partition })
    }
}

/// One partition's offset to commit, with its metadata: ((topic, partition), offset, metadata).
pub type OffsetCommit = ((String, PartitionId), Offset, String);

fn group_name(name: String) -> Result<String, v1::Error> {
    limits::check_group_name(&name).map_err(invalid)?;
    Ok(name)
}

/// A member id or client id: 1..=`MEMBER_ID_BYTES_MAX` printable bytes without whitespace
/// (empty allowed where `may_be_empty`).
fn member_text(what: &str, value: String, may_be_empty: bool) -> Result<String, v1::Error> {
    if value.is_empty() && !may_be_empty {
        return Err(invalid(format!("{what} is empty")));
    }
    if value.len() > limits::MEMBER_ID_BYTES_MAX {
        return Err(invalid(format!("{what} is {} bytes, the limit is {}", value.len(), limits::MEMBER_ID_BYTES_MAX)));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("{what} {value:?} contains {c:?}")));
    }
    Ok(value)
}

/// Distinct partitions of valid topic names, at most `GROUP_COMMIT_PARTITIONS_MAX`.
fn topic_partitions(what: &str, list: Vec<v1::TopicPartition>) -> Result<Vec<(String, PartitionId)>, v1::Error> {
    if list.len() > limits::GROUP_COMMIT_PARTITIONS_MAX {
        return Err(invalid(format!(
            "{what}: {} partitions, the limit is {}",
            list.len(),
            limits::GROUP_COMMIT_PARTITIONS_MAX
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for tp in list {
        let tp = (topic_name(tp.topic)?, tp.partition);
        if !seen.insert(tp.clone()) {
            return Err(invalid(format!("{what}: {}/{} is listed twice", tp.0, tp.1)));
        }
        out.push(tp);
    }
    Ok(out)
}

/// Offsets to commit or reset: 1..=`GROUP_COMMIT_PARTITIONS_MAX` distinct partitions,
/// metadata of at most `COMMIT_METADATA_BYTES_MAX` bytes.
fn offset_commits(list: Vec<v1::OffsetCommit>) -> Result<Vec<OffsetCommit>, v1::Error> {
    if list.is_empty() || list.len() > limits::GROUP_COMMIT_PARTITIONS_MAX {
        return Err(invalid(format!(
            "offsets: {} partitions given; 1 to {} are allowed",
            list.len(),
            limits::GROUP_COMMIT_PARTITIONS_MAX
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let tp = (topic_name(c.topic)?, c.partition);
        if !seen.insert(tp.clone()) {
            return Err(invalid(format!("offsets: {}/{} is listed twice", tp.0, tp.1)));
        }
        if c.metadata.len() > limits::COMMIT_METADATA_BYTES_MAX {
            return Err(invalid(format!(
                "commit metadata is {} bytes, the limit is {}",
                c.metadata.len(),
                limits::COMMIT_METADATA_BYTES_MAX
            )));
        }
        out.push((tp, c.offset, c.metadata));
    }
    Ok(out)
}

/// A member's subscription (consumer or share group): 1..=`GROUP_SUBSCRIPTION_TOPICS_MAX`
/// valid topic names (none when it leaves).
fn subscription(topics: Vec<String>, leave: bool) -> Result<BTreeSet<String>, v1::Error> {
    if topics.len() > limits::GROUP_SUBSCRIPTION_TOPICS_MAX || (topics.is_empty() && !leave) {
        return Err(invalid(format!(
            "topics: {} given; a member subscribes to 1 to {}",
            topics.len(),
            limits::GROUP_SUBSCRIPTION_TOPICS_MAX
        )));
    }
    topics.into_iter().map(topic_name).collect()
}

/// A member's session timeout: 0 is the default, else within its range.
fn session_timeout(ms: u32) -> Result<u32, v1::Error> {
    match ms {
        0 => Ok(limits::SESSION_TIMEOUT_MS_DEFAULT),
        ms if (limits::SESSION_TIMEOUT_MS_MIN..=limits::SESSION_TIMEOUT_MS_MAX).contains(&ms) => Ok(ms),
        ms => Err(invalid(format!(
            "session timeout {ms} ms is outside {}..={} ms",
            limits::SESSION_TIMEOUT_MS_MIN,
            limits::SESSION_TIMEOUT_MS_MAX
        ))),
    }
}

/// A consumer group member's heartbeat, checked: the plain data type lives in `types`.
pub use flotilla_types::GroupHeartbeat;

impl TryFrom<v1::GroupHeartbeatRequest> for GroupHeartbeat {
    type Error = v1::Error;
    fn try_from(r: v1::GroupHeartbeatRequest) -> Result<GroupHeartbeat, v1::Error> {
        let group = group_name(r.group)?;
        let member = member_text("member id", r.member_id, false)?;
        let client = member_text("client id", r.client_id, true)?;
        let zone = label("zone", r.zone, true)?;
        let topics = subscription(r.topics, r.leave)?;
        let session_timeout_ms = session_timeout(r.session_timeout_ms)?;
        let assignor = match r.assignor.as_str() {
            "" => Assignor::default(),
            a => Assignor::parse(a).map_err(invalid)?,
        };
        let owned = topic_partitions("owned", r.owned)?;
        Ok(GroupHeartbeat {
            group,
            member,
            epoch: r.member_epoch,
            leave: r.leave,
            topics,
            client,
            zone,
            session_timeout_ms,
            assignor,
            owned,
        })
    }
}

/// A commit of offsets, by a member (`member` with its epoch) or from outside the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffsets {
    pub group: String,
    pub member: Option<(String, u64)>,
    pub offsets: Vec<OffsetCommit>,
}

impl TryFrom<v1::CommitOffsetsRequest> for CommitOffsets {
    type Error = v1::Error;
    fn try_from(r: v1::CommitOffsetsRequest) -> Result<CommitOffsets, v1::Error> {
        let group = group_name(r.group)?;
        let member = match r.member_id.is_empty() {
            true => None,
            false => Some((member_text("member id", r.member_id, false)?, r.member_epoch)),
        };
        Ok(CommitOffsets { group, member, offsets: offset_commits(r.offsets)? })
    }
}

/// A reset of a group's committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetOffsets {
    pub group: String,
    pub offsets: Vec<((String, PartitionId), Offset)>,
}

impl TryFrom<v1::ResetOffsetsRequest> for ResetOffsets {
    type Error = v1::Error;
    fn try_from(r: v1::ResetOffsetsRequest) -> Result<ResetOffsets, v1::Error> {
        let group = group_name(r.group)?;
        let offsets = offset_commits(r.offsets)?.into_iter().map(|(tp, o, _)| (tp, o)).collect();
        Ok(ResetOffsets { group, offsets })
    }
}

/// A request naming one group (describe, delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(pub String);

impl TryFrom<v1::DescribeGroupRequest> for GroupName {
    type Error = v1::Error;
    fn try_from(r: v1::DescribeGroupRequest) -> Result<GroupName, v1::Error> {
        Ok(GroupName(group_name(r.group)?))
    }
}

impl TryFrom<v1::DeleteGroupRequest> for GroupName {
    type Error = v1::Error;
    fn try_from(r: v1::DeleteGroupRequest) -> Result<GroupName, v1::Error> {
        Ok(GroupName(group_name(r.group)?))
    }
}

/// A share group member's heartbeat, checked: the plain data types live in `types`.
pub use flotilla_types::group::{ShareAckKind, ShareAcks, ShareAcquire, ShareConfig, ShareHeartbeat, ShareStart};

/// A share group's configuration from the wire: unset fields take their defaults.
pub fn share_config(c: Option<v1::ShareGroupConfig>) -> Result<ShareConfig, v1::Error> {
    let c = c.unwrap_or_default();
    let d = ShareConfig::default();
    let config = ShareConfig {
        max_deliveries: if c.max_deliveries == 0 { d.max_deliveries } else { c.max_deliveries },
        lock_timeout_ms: if c.lock_timeout_ms == 0 { d.lock_timeout_ms } else { c.lock_timeout_ms },
        key_ordered: c.key_ordered,
        start: match v1::ShareStart::try_from(c.start) {
            Ok(v1::ShareStart::Latest) => ShareStart::Latest,
            Ok(v1::ShareStart::Earliest) => ShareStart::Earliest,
            Err(_) => return Err(invalid(format!("unknown share group start {}", c.start))),
        },
    };
    config.check().map_err(invalid)?;
    Ok(config)
}

/// A share group's configuration on the wire.
pub fn share_config_to_wire(c: &ShareConfig) -> v1::ShareGroupConfig {
    v1::ShareGroupConfig {
        max_deliveries: c.max_deliveries,
        lock_timeout_ms: c.lock_timeout_ms,
        key_ordered: c.key_ordered,
        start: match c.start {
            ShareStart::Latest => v1::ShareStart::Latest,
            ShareStart::Earliest => v1::ShareStart::Earliest,
        } as i32,
    }
}

impl TryFrom<v1::ShareHeartbeatRequest> for ShareHeartbeat {
    type Error = v1::Error;
    fn try_from(r: v1::ShareHeartbeatRequest) -> Result<ShareHeartbeat, v1::Error> {
        let group = group_name(r.group)?;
        let member = member_text("member id", r.member_id, false)?;
        let client = member_text("client id", r.client_id, true)?;
        let topics = subscription(r.topics, r.leave)?;
        let session_timeout_ms = session_timeout(r.session_timeout_ms)?;
        let config = share_config(r.config)?;
        Ok(ShareHeartbeat { group, member, leave: r.leave, topics, client, session_timeout_ms, config })
    }
}

impl TryFrom<v1::ShareAcquireRequest> for ShareAcquire {
    type Error = v1::Error;
    fn try_from(r: v1::ShareAcquireRequest) -> Result<ShareAcquire, v1::Error> {
        let group = group_name(r.group)?;
        let member = member_text("member id", r.member_id, false)?;
        let partition = (topic_name(r.topic)?, r.partition);
        if r.from > r.to || r.log_start > r.from && !r.records.is_empty() {
            return Err(invalid(format!(
                "fetched range [{}, {}) with log start {} is not a range of the log",
                r.from, r.to, r.log_start
            )));
        }
        if r.records.len() > limits::SHARE_ACQUIRE_MAX || r.max_records as usize > limits::SHARE_ACQUIRE_MAX {
            return Err(invalid(format!(
                "{} records fetched, {} asked for; the limit is {}",
                r.records.len(),
                r.max_records,
                limits::SHARE_ACQUIRE_MAX
            )));
        }
        let mut records = Vec::with_capacity(r.records.len());
        for f in r.records {
            if f.offset < r.from || f.offset >= r.to || records.last().is_some_and(|(o, _)| *o >= f.offset) {
                return Err(invalid(format!(
                    "fetched offset {} is out of order or outside [{}, {})",
                    f.offset, r.from, r.to
                )));
            }
            records.push((f.offset, f.has_key.then_some(f.key_hash)));
        }
        let max = match r.max_records {
            0 => limits::SHARE_ACQUIRE_MAX as u32,
            n => n,
        };
        Ok(ShareAcquire {
            group,
            member,
            seq: r.request_seq,
            partition,
            log_start: r.log_start,
            from: r.from,
            to: r.to,
            records,
            max,
        })
    }
}

impl TryFrom<v1::ShareAckRequest> for ShareAcks {
    type Error = v1::Error;
    fn try_from(r: v1::ShareAckRequest) -> Result<ShareAcks, v1::Error> {
        let group = group_name(r.group)?;
        let member = member_text("member id", r.member_id, false)?;
        if r.acks.is_empty() || r.acks.len() > limits::SHARE_ACKS_MAX {
            return Err(invalid(format!(
                "{} acknowledgements given; 1 to {} are allowed",
                r.acks.len(),
                limits::SHARE_ACKS_MAX
            )));
        }
        let mut acks = Vec::with_capacity(r.acks.len());
        for a in r.acks {
            if a.error.len() > limits::SHARE_ERROR_BYTES_MAX {
                return Err(invalid(format!(
                    "an acknowledgement's error is {} bytes, the limit is {}",
                    a.error.len(),
                    limits::SHARE_ERROR_BYTES_MAX
                )));
            }
            let kind = match v1::ShareAckType::try_from(a.r#type) {
                Ok(v1::ShareAckType::ShareAckAccept) => ShareAckKind::Accept,
                Ok(v1::ShareAckType::ShareAckRelease) => ShareAckKind::Release { error: a.error },
                Ok(v1::ShareAckType::ShareAckReject) => ShareAckKind::Reject { error: a.error },
                Ok(v1::ShareAckType::ShareAckDeadLettered) => ShareAckKind::DeadLettered,
                _ => return Err(invalid(format!("acknowledgement type {} is not one of 1..=4", a.r#type))),
            };
            acks.push(((topic_name(a.topic)?, a.partition), a.offset, kind));
        }
        Ok(ShareAcks { group, member, seq: r.request_seq, acks })
    }
}

/// An acknowledgement on the wire.
pub fn share_ack_to_wire(tp: &(String, PartitionId), offset: Offset, kind: &ShareAckKind) -> v1::ShareAck {
    let (t, error) = match kind {
        ShareAckKind::Accept => (v1::ShareAckType::ShareAckAccept, String::new()),
        ShareAckKind::Release { error } => (v1::ShareAckType::ShareAckRelease, error.clone()),
        ShareAckKind::Reject { error } => (v1::ShareAckType::ShareAckReject, error.clone()),
        ShareAckKind::DeadLettered => (v1::ShareAckType::ShareAckDeadLettered, String::new()),
    };
    v1::ShareAck { topic: tp.0.clone(), partition: tp.1, offset, r#type: t as i32, error }
}

/// A user name: 1..=`USER_NAME_BYTES_MAX` bytes, not `*` (which ACLs use for everyone)
/// and not `ANONYMOUS` (the principal of a request without identity).
pub fn user_name(name: String) -> Result<String, v1::Error> {
    if name.is_empty() || name.len() > limits::USER_NAME_BYTES_MAX || name == "*" || name == "ANONYMOUS" {
        return Err(invalid(format!(
            "a user name has 1..={} bytes and is neither '*' nor 'ANONYMOUS'",
            limits::USER_NAME_BYTES_MAX
        )));
    }
    Ok(name)
}

/// A new user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct CreateUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TryFrom<v1::CreateUserRequest> for CreateUser {
    type Error = v1::Error;
    fn try_from(r: v1::CreateUserRequest) -> Result<CreateUser, v1::Error> {
        let name = user_name(r.name)?;
        if r.password.is_empty() || r.password.len() > limits::PASSWORD_BYTES_MAX {
            return Err(invalid(format!("a password has 1..={} bytes", limits::PASSWORD_BYTES_MAX)));
        }
        Ok(CreateUser { name, password: r.password })
    }
}

/// A request naming one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(pub String);

impl TryFrom<v1::DeleteUserRequest> for UserName {
    type Error = v1::Error;
    fn try_from(r: v1::DeleteUserRequest) -> Result<UserName, v1::Error> {
        Ok(UserName(user_name(r.name)?))
    }
}

pub use flotilla_types::acl::AclEntry;

/// An ACL entry from the wire, checked.
pub fn acl_from_wire(a: v1::Acl) -> Result<AclEntry, v1::Error> {
    let principal = a.principal.strip_prefix("User:").map(str::to_string).unwrap_or(a.principal);
    let entry = AclEntry {
        principal,
        resource: a.resource_type.parse().map_err(|e| invalid(format!("resource type: {e}")))?,
        pattern: if a.pattern.is_empty() {
            flotilla_types::acl::PatternType::Literal
        } else {
            a.pattern.parse().map_err(|e| invalid(format!("pattern: {e}")))?
        },
        name: a.resource_name,
        operation: a.operation.parse().map_err(|e| invalid(format!("operation: {e}")))?,
    };
    entry.validate().map_err(invalid)?;
    Ok(entry)
}

pub fn acl_to_wire(e: &AclEntry) -> v1::Acl {
    v1::Acl {
        principal: e.principal.clone(),
        resource_type: e.resource.word().into(),
        pattern: e.pattern.word().into(),
        resource_name: e.name.clone(),
        operation: e.operation.word().into(),
    }
}

/// An ACL entry to add or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclChange(pub AclEntry);

impl TryFrom<v1::AclRequest> for AclChange {
    type Error = v1::Error;
    fn try_from(r: v1::AclRequest) -> Result<AclChange, v1::Error> {
        Ok(AclChange(acl_from_wire(r.acl.ok_or_else(|| invalid("an ACL request names an entry"))?)?))
    }
}

/// A listing of ACL entries, of one principal or of all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAcls {
    pub principal: Option<String>,
}

impl TryFrom<v1::ListAclsRequest> for ListAcls {
    type Error = v1::Error;
    fn try_from(r: v1::ListAclsRequest) -> Result<ListAcls, v1::Error> {
        let p = r.principal.strip_prefix("User:").map(str::to_string).unwrap_or(r.principal);
        if p.len() > limits::USER_NAME_BYTES_MAX {
            return Err(invalid(format!("a principal has at most {} bytes", limits::USER_NAME_BYTES_MAX)));
        }
        Ok(ListAcls { principal: (!p.is_empty()).then_some(p) })
    }
}

/// A quota to set: for one principal, or (`None`) the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetQuota {
    pub principal: Option<String>,
    pub limits: flotilla_types::quota::QuotaLimits,
}

impl TryFrom<v1::SetQuotaRequest> for SetQuota {
    type Error = v1::Error;
    fn try_from(r: v1::SetQuotaRequest) -> Result<SetQuota, v1::Error> {
        let (principal, limits) = quota_from_wire(r.quota.ok_or_else(|| invalid("a quota request names a quota"))?)?;
        Ok(SetQuota { principal, limits })
    }
}

/// A quota from the wire: its principal (`None`: the default) and limits.
pub fn quota_from_wire(q: v1::Quota) -> Result<(Option<String>, flotilla_types::quota::QuotaLimits), v1::Error> {
    let principal = match (q.default_quota, q.principal) {
        (true, p) if p.is_empty() => None,
        (true, _) => return Err(invalid("a quota is for one principal or the default, not both")),
        (false, p) => Some(client_id(p.strip_prefix("User:").map(str::to_string).unwrap_or(p))?),
    };
    let limits = flotilla_types::quota::QuotaLimits {
        produce_bytes_per_sec: q.produce_bytes_per_sec,
        fetch_bytes_per_sec: q.fetch_bytes_per_sec,
        requests_per_sec: q.requests_per_sec,
    };
    Ok((principal, limits))
}

pub fn quota_to_wire(principal: Option<&str>, l: &flotilla_types::quota::QuotaLimits) -> v1::Quota {
    v1::Quota {
        principal: principal.unwrap_or_default().to_string(),
        default_quota: principal.is_none(),
        produce_bytes_per_sec: l.produce_bytes_per_sec,
        fetch_bytes_per_sec: l.fetch_bytes_per_sec,
        requests_per_sec: l.requests_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flotilla_types::Record;

    use super::*;

    #[test]
    fn producer_names_are_checked() {
        assert_eq!(InitProducer::try_from(v1::InitProducerRequest { name: String::new() }).unwrap().name, None);
        let named = InitProducer::try_from(v1::InitProducerRequest { name: "orders-writer".into() }).unwrap();
        assert_eq!(named.name.as_deref(), Some("orders-writer"));
        for bad in ["a b".to_string(), "x".repeat(limits::PRODUCER_NAME_BYTES_MAX + 1), "nl\n".to_string()] {
            let e = InitProducer::try_from(v1::InitProducerRequest { name: bad.clone() }).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest.as_u32(), "{bad:?}");
        }
    }

    #[test]
    fn produce_verifies_the_batch() {
        let batch = RecordBatch::encode(&[Record::value("v")]).unwrap();
        let ok = Produce::try_from(v1::ProduceRequest::new("t", 1, &batch, Acks::Leader)).unwrap();
        assert_eq!(ok.batch, batch);
        assert_eq!(ok.partition, 1);
        assert_eq!(ok.acks, Acks::Leader);
        let unknown = v1::ProduceRequest { acks: 7, ..v1::ProduceRequest::new("t", 1, &batch, Acks::All) };
        let e = Produce::try_from(unknown).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::InvalidRequest);
        assert!(e.message.contains("unknown acks level 7"), "{}", e.message);

        let mut bad = batch.bytes().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = Produce::try_from(v1::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            batch: Bytes::from(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::CorruptBatch);
        assert!(e.message.contains("checksum"), "{e}");

        let e = Produce::try_from(v1::ProduceRequest {
            topic: "a/b".into(),
            partition: 0,
            batch: batch.bytes().clone(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::InvalidRequest);
        let e = Produce::try_from(v1::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            batch: Bytes::new(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::CorruptBatch);
    }

    #[test]
    fn fetch_sizes_are_clamped() {
        let f = Fetch::try_from(v1::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            max_bytes: u32::MAX,
            max_wait_ms: u32::MAX,
            from_follower: true,
            client_id: "app".into(),
        })
        .unwrap();
        assert!(f.from_follower);
        assert_eq!(f.client_id, "app");
        let long = v1::FetchRequest {
            topic: "t".into(),
            client_id: "c".repeat(limits::CLIENT_ID_BYTES_MAX + 1),
            ..Default::default()
        };
        let e = Fetch::try_from(long).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::InvalidRequest);
        assert!(e.message.contains("client id"), "{e}");
        assert_eq!(f.max_bytes, limits::FETCH_BYTES_MAX);
        assert_eq!(f.max_wait, Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
        assert!(Fetch::try_from(v1::FetchRequest::default()).is_err(), "empty topic name");
    }

    #[test]
    fn create_topic_counts_are_checked() {
        assert!(CreateTopic::new("t", 1, 3).is_ok());
        for (p, rf) in [(0, 3), (limits::TOPIC_PARTITIONS_MAX + 1, 3), (1, 0), (1, limits::REPLICATION_FACTOR_MAX + 1)]
        {
            let e = CreateTopic::new("t", p, rf).unwrap_err();
            assert_eq!(e.error_code(), ErrorCode::InvalidRequest, "{p} {rf}");
        }
        let e = CreateTopic::try_from(v1::CreateTopicRequest {
            name: "".into(),
            partitions: 1,
            replication_factor: 1,
            policy: None,
        });
        assert!(e.unwrap_err().message.contains("empty"));
    }

    fn message(e: v1::Error) -> String {
        assert_eq!(e.error_code(), ErrorCode::InvalidRequest, "{e}");
        e.message
    }

    #[test]
    fn policies_are_checked() {
        let ok = v1::TopicPolicy {
            allowed_regions: vec!["eu".into(), "us".into()],
            preferred_leader_region: Some("eu".into()),
            excluded_nodes: vec![4],
            excluded_zones: vec!["eu-1a".into()],
            retention_ms: Some(3_600_000),
            retention_bytes: None,
        };
        let p = TopicPolicy::try_from(ok.clone()).unwrap();
        assert_eq!(v1::TopicPolicy::from(&p), ok, "round trip");
        let r = v1::CreateTopicRequest { name: "t".into(), partitions: 1, replication_factor: 3, policy: Some(ok) };
        let c = CreateTopic::try_from(r.clone()).unwrap();
        assert_eq!(c.policy, p);
        assert_eq!(v1::CreateTopicRequest::from(&c), r);
        assert_eq!(
            v1::CreateTopicRequest::from(&CreateTopic::new("t", 1, 3).unwrap()).policy,
            None,
            "no policy is sent as none"
        );

        let bad = |f: fn(&mut v1::TopicPolicy)| {
            let mut p = v1::TopicPolicy::default();
            f(&mut p);
            message(TopicPolicy::try_from(p).unwrap_err())
        };
        assert!(bad(|p| p.allowed_regions = vec![String::new()]).contains("allowed region is empty"));
        assert!(bad(|p| p.excluded_zones = vec!["z".repeat(limits::LABEL_BYTES_MAX + 1)]).contains("limit is"));
        assert!(bad(|p| p.excluded_zones = vec!["a b".into()]).contains("contains ' '"));
        assert!(bad(|p| p.excluded_nodes = vec![0]).contains("start at 1"));
        assert!(bad(|p| p.preferred_leader_region = Some(String::new())).contains("empty"));
        assert!(
            bad(|p| {
                p.allowed_regions = vec!["us".into()];
                p.preferred_leader_region = Some("eu".into());
            })
            .contains("not among the allowed regions")
        );
        assert!(bad(|p| p.excluded_nodes = (1..=POLICY_ENTRIES_MAX as u64 + 1).collect()).contains("the limit is"));
    }

    #[test]
    fn a_merged_topic_config_changes_only_what_it_is_given() {
        let current = TopicPolicy {
            allowed_regions: vec!["eu".into()],
            preferred_leader_region: Some("eu".into()),
            retention_ms: Some(1000),
            ..TopicPolicy::default()
        };
        let req = |policy, reset: &[&str], rf| v1::SetTopicConfigRequest {
            name: "t".into(),
            replication_factor: rf,
            policy: Some(policy),
            merge: true,
            reset: reset.iter().map(|s| s.to_string()).collect(),
        };
        let only_bytes = v1::TopicPolicy { retention_bytes: Some(5), ..Default::default() };
        let c = TopicConfig::try_from(req(only_bytes.clone(), &[], 0)).unwrap();
        let (rf, p) = c.merged(3, &current);
        assert_eq!(rf, 3, "0 keeps the replication factor");
        assert_eq!(p, TopicPolicy { retention_bytes: Some(5), ..current.clone() });
        let c = TopicConfig::try_from(req(only_bytes, &["retention-ms", "preferred-leader-region"], 5)).unwrap();
        let (rf, p) = c.merged(3, &current);
        assert_eq!(
            (rf, p.retention_ms, p.preferred_leader_region, p.allowed_regions),
            (5, None, None, vec!["eu".to_string()])
        );
        let e = TopicConfig::try_from(req(v1::TopicPolicy::default(), &["retention"], 0)).unwrap_err();
        assert!(message(e).contains("'retention' is not a policy key"));
        // Without merge the policy is replaced, and a replication factor is required.
        let replace = v1::SetTopicConfigRequest { merge: false, ..req(v1::TopicPolicy::default(), &[], 3) };
        assert_eq!(TopicConfig::try_from(replace).unwrap().merged(1, &current), (3, TopicPolicy::default()));
    }

    #[test]
    fn node_requests_are_checked() {
        let labels = Some(v1::Labels { region: "eu".into(), zone: "eu-1a".into(), rack: String::new() });
        let a = AddNode::try_from(v1::AddNodeRequest {
            id: 4,
            addr: "10.0.0.4:7070".into(),
            labels,
            rpc_addr: "10.0.0.4:7170".into(),
        })
        .unwrap();
        assert_eq!(
            (a.id, a.addr.as_str(), a.rpc_addr.as_str(), a.labels.zone.as_str(), a.labels.rack.as_str()),
            (4, "10.0.0.4:7070", "10.0.0.4:7170", "eu-1a", "")
        );
        let add =
            |id, addr: &str| AddNode::try_from(v1::AddNodeRequest { id, addr: addr.into(), ..Default::default() });
        // A node-to-node address is optional (the client address then), and checked.
        assert_eq!(add(5, "h:1").unwrap().rpc_addr, "");
        let bad_rpc = v1::AddNodeRequest { id: 5, addr: "h:1".into(), rpc_addr: "h".into(), ..Default::default() };
        assert!(message(AddNode::try_from(bad_rpc).unwrap_err()).contains("node-to-node"));
        assert!(add(5, "[::1]:7070").is_ok());
        assert!(message(add(0, "h:1").unwrap_err()).contains("start at 1"));
        for addr in ["", "h", "h:", ":7070", "h:port", "h:70000", "a b:1"] {
            assert!(message(add(5, addr).unwrap_err()).contains("HOST:PORT"), "{addr:?}");
        }
        let long = v1::Labels { zone: "z".repeat(limits::LABEL_BYTES_MAX + 1), ..Default::default() };
        let e = AddNode::try_from(v1::AddNodeRequest {
            id: 5,
            addr: "h:1".into(),
            labels: Some(long),
            ..Default::default()
        })
        .unwrap_err();
        assert!(message(e).contains("zone"));

        assert_eq!(
            DrainNode::try_from(v1::DrainNodeRequest { id: 3, undo: true }).unwrap(),
            DrainNode { id: 3, undo: true }
        );
        assert!(DrainNode::try_from(v1::DrainNodeRequest { id: 0, undo: false }).is_err());
        assert!(NodeRef::try_from(v1::RemoveNodeRequest { id: 0 }).is_err());
        assert_eq!(NodeRef::try_from(v1::RemoveNodeRequest { id: 2 }).unwrap(), NodeRef(2));
        assert!(ReplaceNode::try_from(v1::ReplaceNodeRequest { id: 0, status_only: true }).is_err());
        let r = ReplaceNode::try_from(v1::ReplaceNodeRequest { id: 3, status_only: false }).unwrap();
        assert_eq!(r, ReplaceNode { id: 3, status_only: false });
    }

    #[test]
    fn replica_lists_are_checked() {
        let reassign =
            |replicas: Vec<u64>| Reassign::try_from(v1::ReassignRequest { topic: "t".into(), partition: 1, replicas });
        assert_eq!(reassign(vec![4, 2, 3]).unwrap().replicas, vec![4, 2, 3]);
        assert!(message(reassign(vec![]).unwrap_err()).contains("0 nodes given"));
        assert!(message(reassign(vec![1, 2, 1]).unwrap_err()).contains("listed twice"));
        assert!(message(reassign(vec![1, 0]).unwrap_err()).contains("start at 1"));
        let too_many = (1..=u64::from(limits::REPLICATION_FACTOR_MAX) + 1).collect();
        assert!(message(reassign(too_many).unwrap_err()).contains("1 to 7"));
        let e = Reassign::try_from(v1::ReassignRequest { topic: "".into(), partition: 0, replicas: vec![1] });
        assert!(message(e.unwrap_err()).contains("empty"));

        let set = |voters: Vec<u64>| SetControllers::try_from(v1::SetControllersRequest { voters });
        assert!(set(vec![1, 2, 3, 4, 5]).is_ok());
        assert!(set(vec![]).is_err());
        assert!(message(set((1..=CONTROLLERS_MAX as u64 + 1).collect()).unwrap_err()).contains("1 to 7"));
        assert!(set(vec![2, 2]).is_err());

        let t = |to| TransferLeader::try_from(v1::TransferLeaderRequest { topic: "t".into(), partition: 0, to });
        assert!(t(0).is_err());
        assert_eq!(t(3).unwrap().to, 3);
        assert!(TopicPartition::try_from(v1::CancelMoveRequest { topic: "x y".into(), partition: 0 }).is_err());
    }

    #[test]
    fn topic_config_and_partitions_are_checked() {
        let cfg = |rf| {
            TopicConfig::try_from(v1::SetTopicConfigRequest {
                name: "t".into(),
                replication_factor: rf,
                policy: None,
                ..Default::default()
            })
        };
        assert_eq!(cfg(5).unwrap().policy, TopicPolicy::default());
        assert!(message(cfg(0).unwrap_err()).contains("replication factor 0"));
        let add = |total| AddPartitions::try_from(v1::AddPartitionsRequest { name: "t".into(), total });
        assert_eq!(add(12).unwrap().total, 12);
        assert!(add(0).is_err());
        assert!(add(limits::TOPIC_PARTITIONS_MAX + 1).is_err());
    }

    #[test]
    fn plan_scenarios_are_checked() {
        use v1::plan_request::{self as pr, Scenario as S};
        let plan = |s: Option<S>| PlanScenario::try_from(v1::PlanRequest { scenario: s });
        assert_eq!(plan(None).unwrap(), PlanScenario::Now);
        assert_eq!(plan(Some(S::Now(pr::Now {}))).unwrap(), PlanScenario::Now);
        assert_eq!(plan(Some(S::DrainNode(4))).unwrap(), PlanScenario::Drain(4));
        assert_eq!(plan(Some(S::DeadNode(2))).unwrap(), PlanScenario::Dead(2));
        assert!(plan(Some(S::DeadNode(0))).is_err());
        let add = pr::AddNode { id: 9, labels: Some(v1::Labels { zone: "c".into(), ..Default::default() }) };
        let PlanScenario::AddNode { id, labels } = plan(Some(S::AddNode(add))).unwrap() else { panic!() };
        assert_eq!((id, labels.zone.as_str()), (9, "c"));
        let tc = pr::TopicConfig { name: "t".into(), replication_factor: 9, policy: None };
        assert!(plan(Some(S::TopicConfig(tc))).is_err());
    }

    #[test]
    fn metadata_query_checks_names() {
        assert_eq!(MetadataQuery::try_from(v1::MetadataRequest::default()).unwrap().topics.len(), 0);
        assert!(MetadataQuery::try_from(v1::MetadataRequest { topics: vec!["ok".into(), "no way".into()] }).is_err());
        assert!(TopicName::try_from(v1::DeleteTopicRequest { name: "x".into() }).is_ok());
        assert!(TopicName::try_from(v1::DescribeTopicRequest { name: "".into() }).is_err());
    }

    #[test]
    fn group_requests_are_checked() {
        let hb = |f: &dyn Fn(&mut v1::GroupHeartbeatRequest)| {
            let mut r = v1::GroupHeartbeatRequest {
                group: "g".into(),
                member_id: "m-1".into(),
                topics: vec!["t".into()],
                ..Default::default()
            };
            f(&mut r);
            GroupHeartbeat::try_from(r)
        };
        let ok = hb(&|_| {}).unwrap();
        assert_eq!((ok.session_timeout_ms, ok.assignor), (limits::SESSION_TIMEOUT_MS_DEFAULT, Assignor::Uniform));
        type Spoil = Box<dyn Fn(&mut v1::GroupHeartbeatRequest)>;
        let bad: Vec<Spoil> = vec![
            Box::new(|r| r.group = "a b".into()),
            Box::new(|r| r.member_id = String::new()),
            Box::new(|r| r.member_id = "x".repeat(limits::MEMBER_ID_BYTES_MAX + 1)),
            Box::new(|r| r.topics = vec![]),
            Box::new(|r| r.topics = vec!["t/1".into()]),
            Box::new(|r| r.session_timeout_ms = 10),
            Box::new(|r| r.assignor = "roundrobin".into()),
            Box::new(|r| r.owned = vec![v1::TopicPartition { topic: "t".into(), partition: 0 }; 2]),
        ];
        for f in &bad {
            assert_eq!(hb(f.as_ref()).unwrap_err().error_code(), ErrorCode::InvalidRequest);
        }
        // Leaving needs no subscription.
        assert!(
            hb(&|r| {
                r.leave = true;
                r.topics = vec![];
            })
            .is_ok()
        );

        let commit = |offsets: Vec<v1::OffsetCommit>| {
            CommitOffsets::try_from(v1::CommitOffsetsRequest { group: "g".into(), offsets, ..Default::default() })
        };
        let one = v1::OffsetCommit { topic: "t".into(), partition: 0, offset: 5, metadata: String::new() };
        assert_eq!(commit(vec![one.clone()]).unwrap().member, None);
        assert!(commit(vec![]).is_err());
        assert!(commit(vec![one.clone(), one.clone()]).is_err());
        let big = v1::OffsetCommit { metadata: "x".repeat(limits::COMMIT_METADATA_BYTES_MAX + 1), ..one };
        assert!(commit(vec![big]).is_err());
    }

    #[test]
    fn users_and_acls_from_the_wire_are_checked() {
        let ok = CreateUser::try_from(v1::CreateUserRequest { name: "alice".into(), password: "pw".into() }).unwrap();
        assert!(!format!("{ok:?}").contains("pw"), "a password never shows in a debug line");
        for (name, password) in [("", "pw"), ("*", "pw"), ("ANONYMOUS", "pw"), ("alice", "")] {
            let r = v1::CreateUserRequest { name: name.into(), password: password.into() };
            assert_eq!(CreateUser::try_from(r).unwrap_err().error_code(), ErrorCode::InvalidRequest);
        }
        let long = v1::CreateUserRequest { name: "a".into(), password: "p".repeat(limits::PASSWORD_BYTES_MAX + 1) };
        assert!(CreateUser::try_from(long).is_err());
        let wire = v1::Acl {
            principal: "User:alice".into(),
            resource_type: "topic".into(),
            pattern: "prefix".into(),
            resource_name: "orders.".into(),
            operation: "write".into(),
        };
        let entry = acl_from_wire(wire.clone()).unwrap();
        assert_eq!(entry.principal, "alice");
        assert_eq!(acl_from_wire(acl_to_wire(&entry)).unwrap(), entry);
        let spoil: [fn(&mut v1::Acl); 4] = [
            |a| a.resource_type = "table".into(),
            |a| a.operation = "fly".into(),
            |a| a.resource_name = String::new(),
            |a| a.principal = String::new(),
        ];
        for f in spoil {
            let mut a = wire.clone();
            f(&mut a);
            assert_eq!(acl_from_wire(a).unwrap_err().error_code(), ErrorCode::InvalidRequest);
        }
        assert!(AclChange::try_from(v1::AclRequest { acl: None }).is_err());
    }
}
