//! Prometheus metrics of one node, rendered in the text exposition format (served at
//! `/metrics` by the `rpc` crate).
//!
//! Request latencies are histograms the `rpc` layer fills (`Registry::observe`); the
//! rest is read from the node's state at scrape time: per-partition role, log end offset
//! and high watermark, under-replicated partitions, moves in progress, node states.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_raft::RaftTransport;

use crate::Node;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Request latency histograms and error counters, per method and outcome.
#[derive(Default)]
pub struct Registry {
    latency: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    elections_woken: AtomicU64,
}

impl Registry {
    /// Elections this node started because a leader's node was suspected.
    pub fn elections_woken(&self) -> u64 {
        self.elections_woken.load(Ordering::Relaxed)
    }

    pub(crate) fn count_woken_election(&self) {
        self.elections_woken.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one request: its method (`produce`, `fetch`, ...), outcome (`ok` or an
    /// error code name) and how long it took.
    pub fn observe(&self, method: &'static str, outcome: &'static str, took: Duration) {
        let mut m = self.latency.lock().expect("metrics lock poisoned");
        m.entry((method, outcome)).or_default().observe(took.as_secs_f64());
    }

    fn render_latency(&self, out: &mut String) {
        let m = self.latency.lock().expect("metrics lock poisoned").clone();
        out.push_str("# HELP flotilla_request_duration_seconds Time to answer a client or admin request.\n");
        out.push_str("# TYPE flotilla_request_duration_seconds histogram\n");
        for ((method, outcome), h) in &m {
            let labels = format!("method=\"{method}\",outcome=\"{outcome}\"");
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                cumulative += c;
                let _ = writeln!(out, "flotilla_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}");
            }
            let _ = writeln!(out, "flotilla_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "flotilla_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "flotilla_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl<T: RaftTransport> Node<T> {
    /// Every metric of this node in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let me = self.id();
        let (partitions, brokers, moves) = self.with_metadata(|m| {
            let parts: Vec<(String, u32, u64, usize, bool)> = m
                .topics()
                .values()
                .flat_map(|t| {
                    t.partitions.iter().filter(|p| p.hosts().contains(&me)).map(move |p| {
                        (t.name.clone(), p.partition, p.group, t.replication_factor as usize, p.moving.is_some())
                    })
                })
                .collect();
            let brokers: Vec<(u64, &'static str)> = m.brokers().values().map(|b| (b.id, b.state_name())).collect();
            (parts, brokers, m.moves().len())
        });
        family(&mut out, "flotilla_partition_leader", "gauge", "1 when this node leads the partition, else 0.");
        let mut rows = Vec::new();
        let mut lags = Vec::new();
        for (topic, partition, group, rf, moving) in &partitions {
            let Some(g) = self.groups().partition(*group) else { continue };
            let status = g.status();
            let (hw, end) = g.read(|p| (p.high_watermark(), p.high_watermark()));
            let voters = g.membership().voters();
            let labels = format!("topic=\"{topic}\",partition=\"{partition}\",group=\"{group}\"");
            let _ = writeln!(out, "flotilla_partition_leader{{{labels}}} {}", u8::from(status.is_leader));
            // Under-replicated, judged by the leader: fewer in-sync voters (the leader
            // itself and those `mover::in_sync` accepts) than the replication factor.
            let under = if status.is_leader {
                let others: Vec<u64> = voters.iter().copied().filter(|v| *v != me).collect();
                let in_sync =
                    1 + crate::mover::catch_up(&g, &others, self.lag_time_max()).iter().filter(|c| c.in_sync).count();
                Some(in_sync < *rf)
            } else {
                None
            };
            if status.is_leader {
                self.group_lag_rows(topic, *partition, &g, &mut lags);
            }
            rows.push((labels, hw, end, status.last_log_index.unwrap_or(0), under, *moving));
        }
        // Consumer group lag, exported once per partition: by its leader, which knows the
        // high watermark (the committed offsets are in every node's metadata).
        family(
            &mut out,
            "flotilla_group_lag_records",
            "gauge",
            "Records between a consumer group's committed offset and the partition's high watermark (at the partition's leader).",
        );
        for (labels, lag, _) in &lags {
            let _ = writeln!(out, "flotilla_group_lag_records{{{labels}}} {lag}");
        }
        family(
            &mut out,
            "flotilla_group_lag_seconds",
            "gauge",
            "How old the first record a consumer group has not committed is (by its batch's index time); 0 when none is left.",
        );
        for (labels, _, secs) in &lags {
            let _ = writeln!(out, "flotilla_group_lag_seconds{{{labels}}} {secs:.3}");
        }
        family(
            &mut out,
            "flotilla_partition_high_watermark",
            "gauge",
            "The partition's high watermark on this replica.",
        );
        for (labels, hw, ..) in &rows {
            let _ = writeln!(out, "flotilla_partition_high_watermark{{{labels}}} {hw}");
        }
        // Offsets are assigned when an entry is applied, that is once committed, so a
        // replica's log end offset is its applied end; the Raft index below shows the
        // entries it holds beyond that.
        family(&mut out, "flotilla_partition_log_end_offset", "gauge", "The next offset this replica has applied.");
        for (labels, _, end, ..) in &rows {
            let _ = writeln!(out, "flotilla_partition_log_end_offset{{{labels}}} {end}");
        }
        family(&mut out, "flotilla_partition_raft_last_index", "gauge", "The last Raft log index this replica holds.");
        for (labels, _, _, last, ..) in &rows {
            let _ = writeln!(out, "flotilla_partition_raft_last_index{{{labels}}} {last}");
        }
        family(
            &mut out,
            "flotilla_partition_under_replicated",
            "gauge",
            "1 when the partition (led here) has fewer in-sync replicas than its replication factor.",
        );
        for (labels, _, _, _, under, _) in &rows {
            if let Some(u) = under {
                let _ = writeln!(out, "flotilla_partition_under_replicated{{{labels}}} {}", u8::from(*u));
            }
        }
        let under_total = rows.iter().filter(|r| r.4 == Some(true)).count();
        family(
            &mut out,
            "flotilla_under_replicated_partitions",
            "gauge",
            "Partitions led by this node that are under-replicated.",
        );
        let _ = writeln!(out, "flotilla_under_replicated_partitions {under_total}");
        family(&mut out, "flotilla_moves_in_progress", "gauge", "Partition moves in progress in the cluster.");
        let _ = writeln!(out, "flotilla_moves_in_progress {moves}");
        family(
            &mut out,
            "flotilla_move_bytes_sent_total",
            "counter",
            "Log bytes sent to replicas catching up in moves.",
        );
        let _ = writeln!(out, "flotilla_move_bytes_sent_total {}", self.groups().router().throttle().bytes_sent());
        family(&mut out, "flotilla_partitions_leading", "gauge", "Partitions this node leads.");
        let _ = writeln!(out, "flotilla_partitions_leading {}", rows.iter().filter(|r| r.4.is_some()).count());
        family(
            &mut out,
            "flotilla_partitions_quiesced",
            "gauge",
            "Partition replicas on this node whose Raft timers are stopped (idle groups).",
        );
        let quiesced = partitions.iter().filter(|p| self.groups().get(p.2).is_some_and(|g| !g.is_ticking())).count();
        let _ = writeln!(out, "flotilla_partitions_quiesced {quiesced}");
        family(&mut out, "flotilla_node_state", "gauge", "1 for each node's state as the metadata group records it.");
        for (id, state) in brokers {
            let _ = writeln!(out, "flotilla_node_state{{node=\"{id}\",state=\"{state}\"}} 1");
        }
        let stopped = self.stopped_groups();
        family(
            &mut out,
            "flotilla_groups_stopped",
            "gauge",
            "Raft groups (replicas) on this node stopped by a fatal error such as a failed sync; they serve nothing.",
        );
        let _ = writeln!(out, "flotilla_groups_stopped {}", stopped.len());
        family(
            &mut out,
            "flotilla_node_healthy",
            "gauge",
            "1 while every Raft group on this node runs; 0 once one stopped (see flotilla_groups_stopped).",
        );
        let _ = writeln!(out, "flotilla_node_healthy {}", u8::from(stopped.is_empty()));
        family(&mut out, "flotilla_metadata_leader", "gauge", "1 when this node leads the metadata group.");
        let _ = writeln!(out, "flotilla_metadata_leader {}", u8::from(self.metadata_group().is_leader()));
        family(
            &mut out,
            "flotilla_elections_woken_total",
            "counter",
            "Elections started because the leader's node was suspected.",
        );
        let _ = writeln!(out, "flotilla_elections_woken_total {}", self.inner.metrics.elections_woken());
        self.inner.metrics.render_latency(&mut out);
        out
    }

    /// Each consumer group's lag on a partition this node leads: groups with an offset
    /// for it or a member reading its topic (from the log start when nothing is
    /// committed). Rows: labels, records, seconds.
    fn group_lag_rows(
        &self,
        topic: &str,
        partition: flotilla_types::PartitionId,
        g: &flotilla_raft::PartitionGroup,
        out: &mut Vec<(String, u64, f64)>,
    ) {
        let tp = (topic.to_string(), partition);
        let committed: Vec<(String, Option<u64>)> = self.with_metadata(|m| {
            m.groups()
                .iter()
                .filter_map(|(name, group)| {
                    let c = group.offsets.get(&tp).map(|c| c.offset);
                    let reads = group.members.values().any(|mem| mem.topics.contains(topic));
                    (c.is_some() || reads).then(|| (name.clone(), c))
                })
                .collect()
        });
        if committed.is_empty() {
            return;
        }
        let (hw, start) = g.read(|p| (p.high_watermark(), p.log_start_offset()));
        let now = self.inner.clock.now_ms();
        for (group, c) in committed {
            let next = c.unwrap_or(start).max(start);
            let lag = hw.saturating_sub(next);
            let secs = match lag {
                0 => 0.0,
                _ => match g.group().batch_at(next) {
                    Ok(Some(b)) => now.saturating_sub(b.timestamp_ms) as f64 / 1000.0,
                    _ => 0.0,
                },
            };
            let labels = format!("group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"");
            out.push((labels, lag, secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let r = Registry::default();
        r.observe("produce", "ok", Duration::from_millis(3));
        r.observe("produce", "ok", Duration::from_millis(30));
        r.observe("produce", "ok", Duration::from_secs(60));
        let mut out = String::new();
        r.render_latency(&mut out);
        assert!(
            out.contains("flotilla_request_duration_seconds_bucket{method=\"produce\",outcome=\"ok\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(out.contains("le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("le=\"10\"} 2"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("flotilla_request_duration_seconds_count{method=\"produce\",outcome=\"ok\"} 3"), "{out}");
    }
}
