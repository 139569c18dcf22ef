//! The cluster as the client sees it: plain domain structs (serialisable for the CLI's
//! JSON output), their checked conversion from the wire, and the metadata cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_proto::v1;
use flotilla_types::{NodeId, PartitionId, limits};
use serde::Serialize;

pub use flotilla_types::cluster::{BrokerInfo, PartitionInfo, TopicInfo};

/// A line of `list_topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
}

/// The whole cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterInfo {
    /// In id order.
    pub brokers: Vec<BrokerInfo>,
    /// The metadata group's leader, when known.
    pub metadata_leader: Option<NodeId>,
    /// In name order.
    pub topics: Vec<TopicInfo>,
    /// The node that answered (`describe_cluster` only; `None` for `metadata`).
    pub answered_by: Option<NodeId>,
}

/// Checks a broker from the wire.
pub(crate) fn broker_from_wire(b: &v1::Broker) -> Result<BrokerInfo, String> {
    if b.id == 0 {
        return Err(format!("broker with id 0 (addr {:?})", b.addr));
    }
    if b.addr.trim().is_empty() {
        return Err(format!("broker {} has no address", b.id));
    }
    let addr = crate::wire::normalize_addr(&b.addr).map_err(|e| format!("broker {}: {e}", b.id))?;
    for (what, v) in
        [("region", &b.region), ("zone", &b.zone), ("rack", &b.rack), ("state", &b.state), ("role", &b.role)]
    {
        if v.len() > limits::LABEL_BYTES_MAX {
            return Err(format!("broker {} has a {what} label of {} bytes", b.id, v.len()));
        }
    }
    if b.rpc_addr.len() > 2 * limits::LABEL_BYTES_MAX {
        return Err(format!("broker {} has a node-to-node address of {} bytes", b.id, b.rpc_addr.len()));
    }
    Ok(BrokerInfo {
        id: b.id,
        addr,
        region: b.region.clone(),
        zone: b.zone.clone(),
        rack: b.rack.clone(),
        state: b.state.clone(),
        role: b.role.clone(),
        replicas: b.replicas,
        preferred_leaders: b.preferred_leaders,
        rpc_addr: b.rpc_addr.clone(),
    })
}

/// Checks a topic from the wire: a valid name, partitions exactly `0..n` within the limit,
/// replica lists within the limit and without duplicates.
pub(crate) fn topic_from_wire(t: &v1::TopicMetadata) -> Result<TopicInfo, String> {
    limits::check_topic_name(&t.name).map_err(|e| format!("topic {:?}: {e}", t.name))?;
    if t.partitions.len() > limits::TOPIC_PARTITIONS_MAX as usize {
        return Err(format!(
            "topic '{}' has {} partitions, the limit is {}",
            t.name,
            t.partitions.len(),
            limits::TOPIC_PARTITIONS_MAX
        ));
    }
    let mut partitions: Vec<PartitionInfo> = Vec::with_capacity(t.partitions.len());
    for p in &t.partitions {
        if p.replicas.len() > limits::REPLICATION_FACTOR_MAX as usize {
            return Err(format!("topic '{}' partition {} has {} replicas", t.name, p.partition, p.replicas.len()));
        }
        let distinct: BTreeSet<_> = p.replicas.iter().collect();
        if distinct.len() != p.replicas.len() || distinct.contains(&0) {
            return Err(format!("topic '{}' partition {} has replicas {:?}", t.name, p.partition, p.replicas));
        }
        partitions.push(PartitionInfo {
            partition: p.partition,
            group_id: p.group_id,
            leader: (p.leader_id != 0).then_some(p.leader_id),
            replicas: p.replicas.clone(),
            high_watermark: p.high_watermark,
        });
    }
    partitions.sort_by_key(|p| p.partition);
    for (i, p) in partitions.iter().enumerate() {
        if p.partition as usize != i {
            return Err(format!(
                "topic '{}' partitions are not 0..{}: found {}",
                t.name,
                partitions.len(),
                p.partition
            ));
        }
    }
    Ok(TopicInfo { name: t.name.clone(), replication_factor: t.replication_factor, partitions })
}

pub(crate) fn brokers_from_wire(brokers: &[v1::Broker]) -> Result<Vec<BrokerInfo>, String> {
    let mut out: Vec<BrokerInfo> = brokers.iter().map(broker_from_wire).collect::<Result<_, _>>()?;
    out.sort_by_key(|b| b.id);
    if out.windows(2).any(|w| w[0].id == w[1].id) {
        return Err("the same broker id is listed twice".into());
    }
    Ok(out)
}

/// Topics answered with an in-band error, by name.
pub(crate) type FailedTopics = Vec<(String, v1::Error)>;

/// Converts the topics of a response; topics answered with an error are returned apart.
pub(crate) fn topics_from_wire(topics: &[v1::TopicMetadata]) -> Result<(Vec<TopicInfo>, FailedTopics), String> {
    let mut ok = vec![];
    let mut failed = vec![];
    for t in topics {
        match flotilla_proto::check(&t.error) {
            Ok(()) => ok.push(topic_from_wire(t)?),
            Err(e) => failed.push((t.name.clone(), e.clone())),
        }
    }
    ok.sort_by(|a: &TopicInfo, b| a.name.cmp(&b.name));
    Ok((ok, failed))
}

/// What the client knows of the cluster. Replaced piecemeal by refreshes.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub(crate) brokers: BTreeMap<NodeId, BrokerInfo>,
    pub(crate) topics: HashMap<String, TopicInfo>,
    pub(crate) metadata_leader: Option<NodeId>,
    /// Topics the last answer refused to describe to this client (NOT_AUTHORIZED,
    /// NOT_AUTHENTICATED): the error to give instead of "does not exist".
    pub(crate) refused: HashMap<String, v1::Error>,
    /// Bumped by every applied refresh.
    pub(crate) generation: u64,
}

impl Cache {
    pub(crate) fn broker_addr(&self, id: NodeId) -> Option<&str> {
        self.brokers.get(&id).map(|b| b.addr.as_str())
    }

    /// Applies a Metadata answer. `asked` are the topics asked for (empty: all), so a
    /// topic missing from a full answer is forgotten.
    pub(crate) fn apply(&mut self, resp: &v1::MetadataResponse, asked: &[String]) -> Result<(), String> {
        let brokers = brokers_from_wire(&resp.brokers)?;
        let (topics, failed) = topics_from_wire(&resp.topics)?;
        if !brokers.is_empty() {
            self.brokers = brokers.into_iter().map(|b| (b.id, b)).collect();
        }
        self.metadata_leader = (resp.metadata_leader_id != 0).then_some(resp.metadata_leader_id);
        if asked.is_empty() {
            let present: BTreeSet<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            self.topics.retain(|name, _| present.contains(name.as_str()));
        }
        for (name, e) in failed {
            use flotilla_types::ErrorCode::{NotAuthenticated, NotAuthorized, UnknownTopic};
            match e.error_code() {
                UnknownTopic => {
                    self.topics.remove(&name);
                    self.refused.remove(&name);
                }
                NotAuthorized | NotAuthenticated => {
                    self.topics.remove(&name);
                    self.refused.insert(name, e);
                }
                _ => {}
            }
        }
        for t in topics {
            self.refused.remove(&t.name);
            self.topics.insert(t.name.clone(), t);
        }
        self.generation += 1;
        Ok(())
    }

    /// Records that `leader` leads `topic`/`partition` (from a NOT_LEADER hint).
    pub(crate) fn set_leader(&mut self, topic: &str, partition: PartitionId, leader: NodeId) {
        if let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize)) {
            p.leader = Some(leader);
        }
    }

    /// Forgets the leader of `topic`/`partition` when it is `leader`.
    pub(crate) fn forget_leader(&mut self, topic: &str, partition: PartitionId, leader: NodeId) {
        if let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
            && p.leader == Some(leader)
        {
            p.leader = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_topic(name: &str, parts: &[u32]) -> v1::TopicMetadata {
        v1::TopicMetadata {
            name: name.into(),
            error: None,
            replication_factor: 3,
            partitions: parts
                .iter()
                .map(|&p| v1::PartitionMetadata {
                    partition: p,
                    group_id: 10 + u64::from(p),
                    leader_id: if p == 0 { 0 } else { 1 },
                    replicas: vec![1, 2, 3],
                    high_watermark: None,
                })
                .collect(),
        }
    }

    #[test]
    fn topics_are_checked() {
        let t = topic_from_wire(&wire_topic("t", &[1, 0])).unwrap();
        assert_eq!(t.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(t.partitions[0].leader, None);
        assert_eq!(t.partitions[1].leader, Some(1));
        assert!(topic_from_wire(&wire_topic("t", &[0, 2])).unwrap_err().contains("not 0..2"));
        assert!(topic_from_wire(&wire_topic("t", &[0, 0])).is_err());
        assert!(topic_from_wire(&wire_topic("bad name", &[0])).is_err());
        let mut dup = wire_topic("t", &[0]);
        dup.partitions[0].replicas = vec![1, 1];
        assert!(topic_from_wire(&dup).is_err());
    }

    #[test]
    fn brokers_are_checked() {
        let b = |id, addr: &str| v1::Broker { id, addr: addr.into(), ..Default::default() };
        assert!(brokers_from_wire(&[b(1, "h:1"), b(2, "h:2")]).is_ok());
        assert_eq!(brokers_from_wire(&[b(1, "http://h:1/")]).unwrap()[0].addr, "h:1");
        assert!(brokers_from_wire(&[b(0, "h:1")]).is_err());
        assert!(brokers_from_wire(&[b(1, "")]).is_err());
        assert!(brokers_from_wire(&[b(1, "h:1"), b(1, "h:2")]).is_err());
    }

    #[test]
    fn cache_applies_answers() {
        let mut c = Cache::default();
        let resp = v1::MetadataResponse {
            brokers: vec![v1::Broker { id: 1, addr: "h:1".into(), ..Default::default() }],
            topics: vec![wire_topic("a", &[0]), wire_topic("b", &[0, 1])],
            metadata_leader_id: 1,
        };
        c.apply(&resp, &[]).unwrap();
        assert_eq!(c.topics.len(), 2);
        assert_eq!(c.broker_addr(1), Some("h:1"));
        c.set_leader("b", 0, 3);
        assert_eq!(c.topics["b"].partitions[0].leader, Some(3));
        c.forget_leader("b", 0, 3);
        assert_eq!(c.topics["b"].partitions[0].leader, None);

        let gone = v1::MetadataResponse {
            brokers: vec![],
            topics: vec![v1::TopicMetadata {
                name: "a".into(),
                error: Some(v1::Error::new(flotilla_types::ErrorCode::UnknownTopic, "no")),
                ..Default::default()
            }],
            metadata_leader_id: 0,
        };
        c.apply(&gone, &["a".into()]).unwrap();
        assert!(!c.topics.contains_key("a"));
        assert!(c.topics.contains_key("b"));
        assert_eq!(c.brokers.len(), 1, "an answer without brokers keeps the known ones");
        assert_eq!(c.metadata_leader, None);
    }
}
