//! What the built-in console shows (`GET /api/cluster` on the metrics listener; the page
//! itself is in the `rpc` crate): the cluster as this node sees it, with the partitions
//! that need attention picked out, moves with their progress and consumer groups with
//! their lag. Read-only, built from the node's metadata replica and its own replicas.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use flotilla_raft::RaftTransport;
use flotilla_types::{NodeId, Offset, PartitionId};

use crate::{BrokerInfo, Node, TopicInfo};
use flotilla_types::cluster::{Attention, MoveInfo};

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

impl<T: RaftTransport> Node<T> {
    /// The console's view of the cluster.
    pub fn console_view(&self) -> ConsoleView {
        let view = self.describe_cluster();
        let attention = Attention::of(&view.brokers, &view.topics);
        let mut missing: BTreeMap<(String, PartitionId), BTreeSet<NodeId>> = attention
            .under_replicated
            .into_iter()
            .map(|(topic, partition, missing)| ((topic, partition), missing.into_iter().collect()))
            .collect();
        // Where this node leads, it also knows which replicas keep up.
        let me = self.id();
        for t in &view.topics {
            for p in t.partitions.iter().filter(|p| p.leader == Some(me)) {
                let Some(g) = self.groups().partition(p.group_id) else { continue };
                let others: Vec<NodeId> = p.replicas.iter().copied().filter(|r| *r != me).collect();
                let lagging: Vec<NodeId> =
                    self.catch_up(&g, &others).iter().filter(|c| !c.in_sync).map(|c| c.node).collect();
                if !lagging.is_empty() {
                    missing.entry((t.name.clone(), p.partition)).or_default().extend(lagging);
                }
            }
        }
        let under_replicated = missing
            .into_iter()
            .map(|((topic, partition), missing)| UnderReplicated {
                topic,
                partition,
                missing: missing.into_iter().collect(),
            })
            .collect();
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
            leaderless: attention
                .leaderless
                .into_iter()
                .map(|(topic, partition)| PartitionRef { topic, partition })
                .collect(),
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
