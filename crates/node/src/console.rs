//! What the built-in console shows (`GET /api/cluster` on the metrics listener; the page
//! itself is in the `rpc` crate): the cluster as this node sees it, with the partitions
//! that need attention picked out, moves with their progress and consumer groups with
//! their lag. Read-only, built from the node's metadata replica and its own replicas.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use flotilla_raft::RaftTransport;
use flotilla_types::{NodeId, Offset, PartitionId};

use crate::api::ClusterView;
use crate::{BrokerInfo, Node, TopicInfo};
use flotilla_types::cluster::MoveInfo;

/// A partition, by topic and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRef {
    pub topic: String,
    pub partition: PartitionId,
}

/// A partition with fewer serving replicas than it should have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnderReplicated {
    pub topic: String,
    pub partition: PartitionId,
    /// Replicas that do not serve: on nodes suspected, dead, removed or unknown, or
    /// (where this node leads the partition) out of sync.
    pub missing: Vec<NodeId>,
}

/// A consumer group's lag on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: PartitionId,
    pub committed: Option<Offset>,
    /// As this node knows it (it hosts a replica), else `None`.
    pub high_watermark: Option<Offset>,
    pub lag: Option<u64>,
}

/// A consumer or share group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub name: String,
    /// `consumer` or `share`.
    pub kind: &'static str,
    pub members: usize,
    /// `stable` with members, `empty` without.
    pub state: &'static str,
    pub lag: Vec<PartitionLag>,
    /// The sum of the known lags; `None` when none is known.
    pub total_lag: Option<u64>,
}

/// Everything the console page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleView {
    pub answered_by: NodeId,
    pub now_ms: u64,
    pub metadata_leader: Option<NodeId>,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicInfo>,
    pub leaderless: Vec<PartitionRef>,
    pub under_replicated: Vec<UnderReplicated>,
    pub moves: Vec<MoveInfo>,
    pub groups: Vec<GroupSummary>,
}

/// The partitions of `view` with no leader known on a live node.
pub fn leaderless(view: &ClusterView) -> Vec<PartitionRef> {
    let serving: BTreeSet<NodeId> = view.brokers.iter().filter(|b| b.may_serve()).map(|b| b.id).collect();
    view.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| !p.leader.is_some_and(|l| serving.contains(&l)))
                .map(|p| PartitionRef { topic: t.name.clone(), partition: p.partition })
        })
        .collect()
}

impl<T: RaftTransport> Node<T> {
    /// The console's view of the cluster.
    pub fn console_view(&self) -> ConsoleView {
        let view = self.describe_cluster();
        let serving: BTreeSet<NodeId> = view.brokers.iter().filter(|b| b.may_serve()).map(|b| b.id).collect();
        let me = self.id();
        let mut under_replicated = Vec::new();
        for t in &view.topics {
            for p in &t.partitions {
                let mut missing: BTreeSet<NodeId> =
                    p.replicas.iter().copied().filter(|r| !serving.contains(r)).collect();
                if p.leader == Some(me)
                    && let Some(g) = self.groups().partition(p.group_id)
                {
                    let others: Vec<NodeId> = p.replicas.iter().copied().filter(|r| *r != me).collect();
                    let lagging = crate::mover::catch_up(&g, &others, self.lag_time_max());
                    missing.extend(lagging.iter().filter(|c| !c.in_sync).map(|c| c.node));
                }
                if !missing.is_empty() || p.replicas.len() < t.replication_factor as usize {
                    under_replicated.push(UnderReplicated {
                        topic: t.name.clone(),
                        partition: p.partition,
                        missing: missing.into_iter().collect(),
                    });
                }
            }
        }
        let hw: BTreeMap<(String, PartitionId), Offset> = view
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().filter_map(|p| Some(((t.name.clone(), p.partition), p.high_watermark?))))
            .collect();
        let groups = self.group_summaries(&hw);
        ConsoleView {
            answered_by: view.answered_by,
            now_ms: view.now_ms,
            metadata_leader: view.metadata_leader,
            leaderless: leaderless(&view),
            under_replicated,
            moves: self.moves(),
            groups,
            brokers: view.brokers,
            topics: view.topics,
        }
    }

    fn group_summaries(&self, hw: &BTreeMap<(String, PartitionId), Offset>) -> Vec<GroupSummary> {
        // A group's position on a partition (a consumer group's committed offset, a
        // share group's window start) against the high watermark this node knows.
        let lag = |(topic, partition): &(String, PartitionId), at: Offset| {
            let high = hw.get(&(topic.clone(), *partition)).copied();
            PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                committed: Some(at),
                high_watermark: high,
                lag: high.map(|h| h.saturating_sub(at)),
            }
        };
        self.with_metadata(|m| {
            let consumer = m.groups().iter().map(|(name, g)| {
                let rows = g.offsets.iter().map(|(tp, c)| lag(tp, c.offset)).collect();
                summary(name, "consumer", g.members.len(), rows)
            });
            let share = m.share_groups().iter().map(|(name, g)| {
                let rows = g.partitions.iter().map(|(tp, p)| lag(tp, p.start)).collect();
                summary(name, "share", g.members.len(), rows)
            });
            consumer.chain(share).collect()
        })
    }
}

fn summary(name: &str, kind: &'static str, members: usize, lag: Vec<PartitionLag>) -> GroupSummary {
    let known: Vec<u64> = lag.iter().filter_map(|l| l.lag).collect();
    GroupSummary {
        name: name.to_string(),
        kind,
        members,
        state: if members > 0 { "stable" } else { "empty" },
        total_lag: (!known.is_empty()).then(|| known.iter().sum()),
        lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PartitionInfo;

    #[test]
    fn a_partition_is_leaderless_without_a_leader_on_a_serving_node() {
        let broker = |id, state: &str| BrokerInfo { state: state.into(), ..BrokerInfo::bare(id, format!("h:{id}")) };
        let part = |partition, leader| PartitionInfo {
            partition,
            group_id: u64::from(partition) + 1,
            leader,
            replicas: vec![1, 2, 3],
            high_watermark: None,
        };
        let view = ClusterView {
            brokers: vec![broker(1, "alive"), broker(2, "suspected"), broker(3, "draining")],
            metadata_leader: Some(1),
            topics: vec![TopicInfo {
                name: "t".into(),
                replication_factor: 3,
                partitions: vec![part(0, Some(1)), part(1, Some(2)), part(2, None), part(3, Some(3))],
            }],
            answered_by: 1,
            now_ms: 0,
        };
        let refs: Vec<PartitionId> = leaderless(&view).iter().map(|r| r.partition).collect();
        assert_eq!(refs, vec![1, 2], "a suspected leader or none; a draining node still serves");
    }
}
