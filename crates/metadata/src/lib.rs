//! The metadata state machine (group 0) and the placement planner: pure, synchronous and
//! deterministic.
//!
//! It holds the cluster's truth: registered brokers with their addresses and failure
//! domain labels, topics, and each partition's Raft group and replica assignment. Every
//! node applies the same committed log and so derives the same assignment, which its
//! reconciler then makes real.
//!
//! Architecture invariant: no clock, no randomness, no I/O, ordered collections only.

pub mod placement;

use std::collections::BTreeMap;

use flotilla_types::{ErrorCode, GroupId, NodeId, PartitionId, limits};
use serde::{Deserialize, Serialize};

/// A node's failure domain, outermost first.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Labels {
    pub region: String,
    pub zone: String,
    pub rack: String,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub id: NodeId,
    /// host:port of its gRPC endpoint.
    pub addr: String,
    pub labels: Labels,
}

/// One partition's Raft group and replicas. `replicas[0]` is the preferred leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub partition: PartitionId,
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub replication_factor: u32,
    pub partitions: Vec<PartitionAssignment>,
}

/// A command in the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a broker or updates its address and labels.
    RegisterBroker(Broker),
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
    },
    DeleteTopic {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    TopicCreated(Topic),
    Error { code: ErrorCode, message: String },
}

impl Response {
    fn error(code: ErrorCode, message: impl Into<String>) -> Response {
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
}

impl Default for MetadataState {
    fn default() -> Self {
        MetadataState { brokers: BTreeMap::new(), topics: BTreeMap::new(), next_group: 1, last_applied_index: 0 }
    }
}

impl MetadataState {
    pub fn new() -> MetadataState {
        MetadataState::default()
    }

    pub fn apply(&mut self, log_index: u64, command: &Command) -> Response {
        assert!(log_index > self.last_applied_index, "log index {log_index} after {}", self.last_applied_index);
        self.last_applied_index = log_index;
        match command {
            Command::RegisterBroker(b) => {
                if let Err(e) = check_broker(b) {
                    return Response::error(ErrorCode::InvalidRequest, e);
                }
                self.brokers.insert(b.id, b.clone());
                Response::Ok
            }
            Command::CreateTopic { name, partitions, replication_factor } => {
                self.create_topic(name, *partitions, *replication_factor)
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Response::Ok,
                None => Response::error(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist")),
            },
        }
    }

    pub fn skip(&mut self, log_index: u64) {
        assert!(log_index >= self.last_applied_index);
        self.last_applied_index = log_index;
    }

    fn create_topic(&mut self, name: &str, partitions: u32, rf: u32) -> Response {
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
        if rf == 0 || rf > limits::REPLICATION_FACTOR_MAX {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("replication factor must be 1..={}, got {rf}", limits::REPLICATION_FACTOR_MAX),
            );
        }
        let load = self.replica_load();
        let plan = match placement::place_topic(&self.brokers, &load, partitions, rf) {
            Ok(p) => p,
            Err(e) => return Response::error(ErrorCode::PolicyViolation, e.to_string()),
        };
        let assignments: Vec<PartitionAssignment> = plan
            .into_iter()
            .enumerate()
            .map(|(p, replicas)| {
                let group = self.next_group;
                self.next_group += 1;
                PartitionAssignment { partition: p as PartitionId, group, replicas }
            })
            .collect();
        let topic = Topic { name: name.to_string(), replication_factor: rf, partitions: assignments };
        self.topics.insert(name.to_string(), topic.clone());
        Response::TopicCreated(topic)
    }

    /// Replicas and preferred leaderships per broker, for balanced placement.
    fn replica_load(&self) -> BTreeMap<NodeId, placement::Load> {
        let mut load: BTreeMap<NodeId, placement::Load> = BTreeMap::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                for (i, r) in p.replicas.iter().enumerate() {
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

    /// Every partition group that should have a replica on `node`.
    pub fn groups_on(&self, node: NodeId) -> BTreeMap<GroupId, Vec<NodeId>> {
        let mut out = BTreeMap::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                if p.replicas.contains(&node) {
                    out.insert(p.group, p.replicas.clone());
                }
            }
        }
        out
    }

    /// The topic and partition of a group.
    pub fn partition_of_group(&self, group: GroupId) -> Option<(&Topic, &PartitionAssignment)> {
        self.topics.values().find_map(|t| t.partitions.iter().find(|p| p.group == group).map(|p| (t, p)))
    }
}

fn check_broker(b: &Broker) -> Result<(), String> {
    if b.id == 0 {
        return Err("broker id 0 is reserved".into());
    }
    if b.addr.is_empty() || b.addr.len() > limits::LABEL_BYTES_MAX * 2 {
        return Err(format!("broker address '{}' is empty or too long", b.addr));
    }
    for l in [&b.labels.region, &b.labels.zone, &b.labels.rack] {
        if l.len() > limits::LABEL_BYTES_MAX {
            return Err(format!("label over {} bytes", limits::LABEL_BYTES_MAX));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: NodeId, zone: &str) -> Command {
        Command::RegisterBroker(Broker {
            id,
            addr: format!("127.0.0.1:{}", 7070 + id),
            labels: Labels { region: "r".into(), zone: zone.into(), rack: String::new() },
        })
    }

    fn three_brokers() -> MetadataState {
        let mut s = MetadataState::new();
        s.apply(1, &broker(1, "a"));
        s.apply(2, &broker(2, "b"));
        s.apply(3, &broker(3, "c"));
        s
    }

    #[test]
    fn create_topic_assigns_distinct_replicas_and_fresh_groups() {
        let mut s = three_brokers();
        let r = s.apply(4, &Command::CreateTopic { name: "t".into(), partitions: 6, replication_factor: 3 });
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
        let c = Command::CreateTopic { name: "t".into(), partitions: 1, replication_factor: 3 };
        assert!(matches!(s.apply(4, &c), Response::TopicCreated(_)));
        assert!(matches!(s.apply(5, &c), Response::Error { code: ErrorCode::TopicExists, .. }));
        let too_many = Command::CreateTopic { name: "u".into(), partitions: 1, replication_factor: 4 };
        assert!(matches!(s.apply(6, &too_many), Response::Error { code: ErrorCode::PolicyViolation, .. }));
        let bad = Command::CreateTopic { name: "a b".into(), partitions: 1, replication_factor: 1 };
        assert!(matches!(s.apply(7, &bad), Response::Error { code: ErrorCode::InvalidRequest, .. }));
        let gone = Command::DeleteTopic { name: "nope".into() };
        assert!(matches!(s.apply(8, &gone), Response::Error { code: ErrorCode::UnknownTopic, .. }));
    }

    #[test]
    fn group_ids_are_never_reused_after_delete() {
        let mut s = three_brokers();
        let c = Command::CreateTopic { name: "t".into(), partitions: 2, replication_factor: 3 };
        let Response::TopicCreated(a) = s.apply(4, &c) else { panic!() };
        s.apply(5, &Command::DeleteTopic { name: "t".into() });
        let Response::TopicCreated(b) = s.apply(6, &c) else { panic!() };
        assert!(b.partitions[0].group > a.partitions[1].group);
    }

    #[test]
    fn same_log_same_state() {
        let cmds = [
            broker(2, "b"),
            broker(1, "a"),
            broker(3, "a"),
            Command::CreateTopic { name: "x".into(), partitions: 5, replication_factor: 2 },
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
