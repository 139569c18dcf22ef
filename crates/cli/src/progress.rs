//! Long operations the CLI can wait for, with progress on the terminal (`cluster drain
//! --wait`, `cluster reassign --wait`), and the cluster's health verdict (`cluster
//! health`). Progress bars go to standard error and only to a terminal; the final answer
//! goes to standard output as text or JSON, as for every command.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use flotilla_client::{Client, ClusterInfo};
use flotilla_types::cluster::Attention;
use flotilla_types::{NodeId, PartitionId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::client_cmds::{Output, one_line};

/// How often a wait asks the cluster again.
const POLL: Duration = Duration::from_millis(500);

/// The cluster's health, as `flotilla cluster health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub metadata_leader: Option<NodeId>,
    pub nodes: usize,
    /// Nodes suspected, dead or removed... that still hold replicas or vote.
    pub nodes_down: Vec<NodeId>,
    pub partitions: usize,
    /// `topic/partition` with no leader on a serving node.
    pub leaderless: Vec<String>,
    /// `topic/partition` with a replica on a node that does not serve, or fewer
    /// replicas than the topic's replication factor.
    pub under_replicated: Vec<String>,
}

impl Health {
    /// One line of verdict, then one line per reason.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: {} nodes, {} partitions\n",
            if self.healthy { "healthy" } else { "unhealthy" },
            self.nodes,
            self.partitions
        );
        if self.metadata_leader.is_none() {
            out.push_str("  no metadata leader known\n");
        }
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
            let more = if v.len() > 10 { format!(" and {} more", v.len() - 10) } else { String::new() };
            format!("{}{more}", shown.join(", "))
        };
        if !self.nodes_down.is_empty() {
            let ids: Vec<String> = self.nodes_down.iter().map(u64::to_string).collect();
            out.push_str(&format!("  nodes down (suspected or dead): {}\n", ids.join(", ")));
        }
        if !self.leaderless.is_empty() {
            out.push_str(&format!("  {} leaderless partitions: {}\n", self.leaderless.len(), list(&self.leaderless)));
        }
        if !self.under_replicated.is_empty() {
            out.push_str(&format!(
                "  {} under-replicated partitions: {}\n",
                self.under_replicated.len(),
                list(&self.under_replicated)
            ));
        }
        out
    }
}

/// Judges `info`: healthy when a metadata leader is known, no node is suspected or dead,
/// and every partition has a leader on a serving node and all its replicas on serving
/// nodes. (Whether each replica keeps up is its leader's to judge: the
/// `flotilla_partition_under_replicated` metric.)
pub fn health(info: &ClusterInfo) -> Health {
    let nodes_down: Vec<NodeId> =
        info.brokers.iter().filter(|b| matches!(b.state.as_str(), "suspected" | "dead")).map(|b| b.id).collect();
    let attention = Attention::of(&info.brokers, &info.topics);
    let leaderless: Vec<String> = attention.leaderless.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    let under_replicated: Vec<String> = attention.under_replicated.iter().map(|(t, p, _)| format!("{t}/{p}")).collect();
    let partitions = info.topics.iter().map(|t| t.partitions.len()).sum();
    Health {
        healthy: info.metadata_leader.is_some()
            && nodes_down.is_empty()
            && leaderless.is_empty()
            && under_replicated.is_empty(),
        metadata_leader: info.metadata_leader,
        nodes: info.brokers.len(),
        nodes_down,
        partitions,
        leaderless,
        under_replicated,
    }
}

fn bar(len: u64, output: Output) -> ProgressBar {
    let target = match output {
        Output::Text => ProgressDrawTarget::stderr(),
        Output::Json => ProgressDrawTarget::hidden(),
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Waits until node `id` holds no replica and no move involves it, showing the
/// replicas moved off it and the catch-up of the moves in progress.
pub async fn wait_drained(client: &Client, id: NodeId, timeout_s: u64, output: Output) -> anyhow::Result<()> {
    let started = Instant::now();
    let held = |info: &ClusterInfo| {
        info.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.replicas.contains(&id)).count() as u64
    };
    let first = held(&client.describe_cluster().await.map_err(one_line)?);
    let bar = bar(first, output);
    bar.set_message("replicas moved off");
    loop {
        let info = client.describe_cluster().await.map_err(one_line)?;
        let left = held(&info);
        let moves = client.moves().await.map_err(one_line)?;
        let mine: Vec<_> = moves.iter().filter(|m| m.from.contains(&id) || m.to.contains(&id)).collect();
        bar.set_length(first.max(left));
        bar.set_position(first.saturating_sub(left));
        let catching: Vec<String> = mine
            .iter()
            .flat_map(|m| {
                m.progress.iter().map(move |c| format!("{}/{}→{} {}%", m.topic, m.partition, c.node, c.percent()))
            })
            .take(3)
            .collect();
        bar.set_message(format!(
            "replicas moved off node {id}; {} moves in progress {}",
            mine.len(),
            catching.join(" ")
        ));
        if left == 0 && mine.is_empty() {
            bar.finish_and_clear();
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(timeout_s) {
            bar.abandon();
            bail!(
                "node {id} still holds {left} replicas after {timeout_s} s; the drain goes on (see `flotilla cluster moves`)"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id`'s replacement is ready (its old replica left every group),
/// showing the groups left; returns the last report.
pub async fn wait_replaceable(
    client: &Client,
    id: NodeId,
    timeout_s: u64,
    output: Output,
) -> anyhow::Result<flotilla_client::ReplacementInfo> {
    let started = Instant::now();
    let first = client.replace_node(id, true).await.map_err(one_line)?;
    let total = first.groups_left.len() as u64;
    let bar = bar(total, output);
    loop {
        let r = client.replace_node(id, true).await.map_err(one_line)?;
        if r.state != "removing" {
            bar.finish_and_clear();
            return Ok(r);
        }
        let left = r.groups_left.len() as u64;
        bar.set_length(total.max(left));
        bar.set_position(total.saturating_sub(left));
        bar.set_message(format!("groups node {id}'s old replica has left"));
        if started.elapsed() > Duration::from_secs(timeout_s) {
            bar.abandon();
            bail!(
                "node {id}'s old replica is still in {left} groups after {timeout_s} s (their leaders remove it; \
                 a group without a leader waits for one); the replacement goes on"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `topic/partition` has no move in progress and its replicas are
/// `replicas`, showing the new replicas' catch-up.
pub async fn wait_moved(
    client: &Client,
    topic: &str,
    partition: PartitionId,
    replicas: &[NodeId],
    timeout_s: u64,
    output: Output,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = bar(100, output);
    bar.set_message(format!("{topic}/{partition}: catching up"));
    let want: BTreeSet<NodeId> = replicas.iter().copied().collect();
    loop {
        let moves = client.moves().await.map_err(one_line)?;
        let current = moves.iter().find(|m| m.topic == topic && m.partition == partition);
        match current {
            Some(m) => {
                let pct = m.progress.iter().map(|c| c.percent()).min().unwrap_or(0);
                bar.set_position(pct);
                bar.set_message(format!("{topic}/{partition}: new replicas catching up"));
            }
            None => {
                let t = client.describe_topic(topic).await.map_err(one_line)?;
                let now: BTreeSet<NodeId> = t
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .map(|p| p.replicas.iter().copied().collect())
                    .unwrap_or_default();
                if now == want {
                    bar.set_position(100);
                    bar.finish_and_clear();
                    return Ok(());
                }
                bar.set_message(format!("{topic}/{partition}: finishing"));
            }
        }
        if started.elapsed() > Duration::from_secs(timeout_s) {
            bar.abandon();
            bail!(
                "{topic}/{partition} is still moving after {timeout_s} s; the move goes on (see `flotilla cluster moves`)"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_client::{BrokerInfo, PartitionInfo, TopicInfo};

    fn broker(id: NodeId, state: &str) -> BrokerInfo {
        BrokerInfo { state: state.into(), ..BrokerInfo::bare(id, format!("127.0.0.1:{}", 7069 + id)) }
    }

    #[test]
    fn health_names_what_is_wrong() {
        let part = |partition, leader, replicas: &[NodeId]| PartitionInfo {
            partition,
            group_id: 10 + u64::from(partition),
            leader,
            replicas: replicas.to_vec(),
            high_watermark: None,
        };
        let mut info = ClusterInfo {
            brokers: vec![broker(1, "alive"), broker(2, "alive"), broker(3, "alive")],
            metadata_leader: Some(1),
            topics: vec![TopicInfo {
                name: "t".into(),
                replication_factor: 3,
                partitions: vec![part(0, Some(1), &[1, 2, 3]), part(1, Some(3), &[3, 1, 2])],
            }],
            answered_by: Some(1),
        };
        let h = health(&info);
        assert!(h.healthy, "{h:?}");
        assert!(h.text().starts_with("healthy: 3 nodes, 2 partitions"), "{}", h.text());
        info.brokers[2].state = "suspected".into();
        let h = health(&info);
        assert!(!h.healthy);
        assert_eq!((h.nodes_down.clone(), h.leaderless.clone()), (vec![3], vec!["t/1".to_string()]));
        assert_eq!(h.under_replicated, vec!["t/0".to_string(), "t/1".to_string()]);
        let text = h.text();
        assert!(text.starts_with("unhealthy:") && text.contains("1 leaderless partitions: t/1"), "{text}");
        info.brokers[2].state = "alive".into();
        info.metadata_leader = None;
        assert!(health(&info).text().contains("no metadata leader"));
    }
}
