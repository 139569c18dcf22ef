//! Prometheus metrics of one node, kept and encoded by `prometheus-client` (served at
//! `/metrics` by the `rpc` crate).
//!
//! Two kinds of figure:
//!
//! - **events**, counted as they happen in the long-lived [`Registry`]: request latencies
//!   (the `rpc` layer calls [`Registry::observe`]), fetch long-poll waits, records and
//!   bytes in and out per topic, elections woken;
//! - **state**, read at scrape time into a registry made for that scrape
//!   ([`Node::render_metrics`]): per-partition role, offsets and Raft lag, under-replicated
//!   partitions, disk and engine sizes, the process. Figures about the whole cluster
//!   (nodes by state, leaderless partitions, moves) are exported by the metadata leader
//!   only, so that a sum over the nodes does not count them once per node.
//!
//! Every name is listed in docs/operations.md; `deploy/grafana` and `deploy/prometheus`
//! use them, and `crates/cli/tests/observe.rs` checks every name they use answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use flotilla_raft::RaftTransport;

use crate::Node;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A help text without its final full stop: the encoder adds one.
fn unstop(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type RequestLabels = [(&'static str, &'static str); 2];
type TopicLabels = [(&'static str, String); 1];
type QuotaLabels = [(&'static str, &'static str); 1];
/// A counter of fractional values (seconds).
type FloatCounter = Counter<f64, AtomicU64>;
/// A gauge read at scrape time with a fractional value (seconds).
type FloatGauge = Gauge<f64, AtomicU64>;
type Labels = Vec<(&'static str, String)>;

/// The node's event metrics: counted as requests are served.
pub struct Registry {
    registry: prometheus_client::registry::Registry,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    fetch_wait: Histogram,
    records_in: Family<TopicLabels, Counter>,
    bytes_in: Family<TopicLabels, Counter>,
    records_out: Family<TopicLabels, Counter>,
    bytes_out: Family<TopicLabels, Counter>,
    elections_woken: Counter,
    quota_throttled: Family<QuotaLabels, Counter>,
    quota_held: Family<QuotaLabels, FloatCounter>,
    node_refused: Family<QuotaLabels, Counter>,
    access_refused: Family<QuotaLabels, Counter>,
    /// The data directory's filesystem: total and free bytes (`set_disk_space`).
    disk_total: AtomicU64,
    disk_free: AtomicU64,
}

impl Default for Registry {
    fn default() -> Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "flotilla_request_duration_seconds",
            "Time to answer a client or admin request, by method and outcome (ok or the error code); a fetch's long-poll wait is not in it (flotilla_fetch_wait_seconds)",
            latency.clone(),
        );
        let fetch_wait = latency_histogram();
        registry.register(
            "flotilla_fetch_wait_seconds",
            "Time fetches waited for records to arrive (long polls)",
            fetch_wait.clone(),
        );
        let topic_counter = |registry: &mut prometheus_client::registry::Registry, name: &str, help: &str| {
            let f = Family::<TopicLabels, Counter>::default();
            registry.register(name, unstop(help), f.clone());
            f
        };
        let records_in = topic_counter(
            &mut registry,
            "flotilla_topic_records_in",
            "Records appended to the topic's partitions led by this node (counted once acknowledged).",
        );
        let bytes_in =
            topic_counter(&mut registry, "flotilla_topic_bytes_in", "Batch bytes appended, as records_in counts them.");
        let records_out =
            topic_counter(&mut registry, "flotilla_topic_records_out", "Records this node served to fetches.");
        let bytes_out =
            topic_counter(&mut registry, "flotilla_topic_bytes_out", "Batch bytes this node served to fetches.");
        let elections_woken = Counter::default();
        registry.register(
            "flotilla_elections_woken",
            "Elections started because the leader's node was suspected",
            elections_woken.clone(),
        );
        let quota_throttled = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "flotilla_quota_throttled_requests",
            "Produce and fetch answers held back because their principal was over a quota, by the kind of quota (produce_bytes, fetch_bytes)",
            quota_throttled.clone(),
        );
        let quota_held = Family::<QuotaLabels, FloatCounter>::default();
        registry.register(
            "flotilla_quota_throttle_seconds",
            "Time answers were held back for quotas, by the kind of request",
            quota_held.clone(),
        );
        let node_refused = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "flotilla_node_messages_refused",
            "Node-to-node messages refused before reaching a Raft group, by reason (sender: the sender's certificate is not the node it claims to be; recipient: meant for another node)",
            node_refused.clone(),
        );
        // Present from the first scrape, so that an alert can watch the rate.
        for reason in ["sender", "recipient"] {
            let _ = node_refused.get_or_create(&[("reason", reason)]);
        }
        let access_refused = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "flotilla_requests_refused",
            "Client and admin requests refused by authentication or authorization, by reason (unauthenticated: wrong credentials, or none while authorization is on; unauthorized: no ACL allows it)",
            access_refused.clone(),
        );
        for reason in ["unauthenticated", "unauthorized"] {
            let _ = access_refused.get_or_create(&[("reason", reason)]);
        }
        Registry {
            registry,
            node_refused,
            access_refused,
            latency,
            fetch_wait,
            records_in,
            bytes_in,
            records_out,
            bytes_out,
            elections_woken,
            quota_throttled,
            quota_held,
            disk_total: AtomicU64::new(0),
            disk_free: AtomicU64::new(0),
        }
    }
}

impl Registry {
    /// Elections this node started because a leader's node was suspected.
    pub fn elections_woken(&self) -> u64 {
        self.elections_woken.get()
    }

    pub(crate) fn count_woken_election(&self) {
        self.elections_woken.inc();
    }

    /// Records one request: its method (`produce`, `fetch`, ...), outcome (`ok` or an
    /// error code name) and how long it took.
    pub fn observe(&self, method: &'static str, outcome: &'static str, took: Duration) {
        self.latency.get_or_create(&[("method", method), ("outcome", outcome)]).observe(took.as_secs_f64());
    }

    /// A fetch's long-poll wait.
    pub(crate) fn observe_fetch_wait(&self, waited: Duration) {
        self.fetch_wait.observe(waited.as_secs_f64());
    }

    /// A batch appended to `topic` and acknowledged.
    pub(crate) fn count_in(&self, topic: &str, records: u64, bytes: u64) {
        let labels = [("topic", topic.to_string())];
        self.records_in.get_or_create(&labels).inc_by(records);
        self.bytes_in.get_or_create(&labels).inc_by(bytes);
    }

    /// Batches of `topic` served to a fetch.
    pub(crate) fn count_out(&self, topic: &str, records: u64, bytes: u64) {
        let labels = [("topic", topic.to_string())];
        self.records_out.get_or_create(&labels).inc_by(records);
        self.bytes_out.get_or_create(&labels).inc_by(bytes);
    }

    /// An answer held back `held` for a quota of `kind`.
    pub(crate) fn count_throttle(&self, kind: crate::quota::QuotaKind, held: Duration) {
        let labels = [("kind", kind.name())];
        self.quota_throttled.get_or_create(&labels).inc();
        self.quota_held.get_or_create(&labels).inc_by(held.as_secs_f64());
    }

    /// A node-to-node message refused before reaching a group: `sender` (its certificate
    /// is not the node it claims to be) or `recipient` (meant for another node).
    pub fn node_message_refused(&self, reason: &'static str) {
        self.node_refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// A client or admin request refused: `unauthenticated` or `unauthorized`.
    pub fn count_refused_access(&self, reason: &'static str) {
        self.access_refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// The data directory's filesystem, as whoever watches it last read it.
    pub fn set_disk_space(&self, total: u64, free: u64) {
        self.disk_total.store(total, Ordering::Relaxed);
        self.disk_free.store(free, Ordering::Relaxed);
    }

    /// The events in Prometheus' text format.
    fn encode(&self, out: &mut String) {
        prometheus_text::encode(out, &self.registry).expect("writing to a String cannot fail");
    }
}

/// The state figures of one scrape: gauges by name, each a family over its labels.
#[derive(Default)]
struct Scrape {
    registry: prometheus_client::registry::Registry,
    counts: BTreeMap<&'static str, Family<Labels, Gauge>>,
    floats: BTreeMap<&'static str, Family<Labels, FloatGauge>>,
}

impl Scrape {
    /// Sets gauge `name{labels}` to `value` (a count, an offset, bytes), registering the
    /// family with `help` the first time the name is used.
    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: u64) {
        let family = self.counts.entry(name).or_insert_with(|| {
            let f = Family::<Labels, Gauge>::default();
            self.registry.register(name, unstop(help), f.clone());
            f
        });
        family.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// Sets gauge `name{labels}` to a fractional `value` (seconds).
    fn gauge_f(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        let family = self.floats.entry(name).or_insert_with(|| {
            let f = Family::<Labels, FloatGauge>::default();
            self.registry.register(name, unstop(help), f.clone());
            f
        });
        family.get_or_create(&labels).set(value);
    }

    /// A counter whose value (a count, or seconds) is read from elsewhere (the name gets
    /// `_total`).
    fn counter<N>(&mut self, name: &'static str, help: &'static str, value: N)
    where
        ConstCounter<N>: prometheus_client::registry::Metric,
    {
        self.registry.register(name, unstop(help), ConstCounter::new(value));
    }

    fn encode(&self, out: &mut String) {
        prometheus_text::encode(out, &self.registry).expect("writing to a String cannot fail");
    }
}

fn b(v: bool) -> u64 {
    u64::from(v)
}

impl<T: RaftTransport> Node<T> {
    /// Every metric of this node in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let mut s = Scrape::default();
        self.node_metrics(&mut s);
        self.partition_metrics(&mut s);
        if self.metadata_group().is_leader() {
            self.cluster_metrics(&mut s);
        }
        process_metrics(&mut s);
        let mut out = String::new();
        self.inner.metrics.encode(&mut out);
        s.encode(&mut out);
        out
    }

    /// This node: build, readiness, health, role, disk, engine.
    fn node_metrics(&self, s: &mut Scrape) {
        s.gauge(
            "flotilla_build_info",
            "The running build: its version and commit; always 1.",
            vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("commit", crate::BUILD_COMMIT.to_string())],
            1,
        );
        s.gauge(
            "flotilla_ready",
            "1 while /ready answers 200 (the node serves), else 0.",
            vec![],
            b(self.readiness().is_ok()),
        );
        let stopped = self.stopped_groups().len();
        s.gauge(
            "flotilla_groups_stopped",
            "Raft groups (replicas) on this node stopped by a fatal error such as a failed sync; they serve nothing.",
            vec![],
            stopped as u64,
        );
        s.gauge(
            "flotilla_node_healthy",
            "1 while every Raft group on this node runs; 0 once one stopped (see flotilla_groups_stopped).",
            vec![],
            b(stopped == 0),
        );
        s.gauge(
            "flotilla_metadata_leader",
            "1 when this node leads the metadata group.",
            vec![],
            b(self.metadata_group().is_leader()),
        );
        let m = &self.inner.metrics;
        let (total, free) = (m.disk_total.load(Ordering::Relaxed), m.disk_free.load(Ordering::Relaxed));
        if total > 0 {
            s.gauge("flotilla_disk_total_bytes", "Size of the filesystem holding the data directory.", vec![], total);
            s.gauge(
                "flotilla_disk_free_bytes",
                "Bytes free for the node on the filesystem holding the data directory.",
                vec![],
                free,
            );
        }
        let sizes = self.inner.engine.sizes();
        s.gauge(
            "flotilla_storage_sst_bytes",
            "Bytes in the storage engine's files (RocksDB SST files).",
            vec![],
            sizes.files_bytes,
        );
        s.gauge(
            "flotilla_storage_memtable_bytes",
            "Bytes in the storage engine's write buffers not yet in files (RocksDB memtables).",
            vec![],
            sizes.memory_bytes,
        );
        s.counter(
            "flotilla_move_bytes_sent",
            "Log bytes sent to replicas catching up in moves.",
            self.groups().router().throttle().bytes_sent(),
        );
    }

    /// The partition replicas on this node: role, offsets, Raft lag, under-replication,
    /// consumer group lag where it leads.
    fn partition_metrics(&self, s: &mut Scrape) {
        let me = self.id();
        let partitions: Vec<(String, u32, u64, usize)> = self.with_metadata(|m| {
            m.topics()
                .values()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .filter(|p| p.hosts().contains(&me))
                        .map(move |p| (t.name.clone(), p.partition, p.group, t.replication_factor as usize))
                })
                .collect()
        });
        let (mut hosted, mut leading, mut quiesced, mut under_total) = (0, 0, 0, 0);
        for (topic, partition, group, rf) in &partitions {
            let Some(g) = self.groups().partition(*group) else { continue };
            hosted += 1;
            let status = g.status();
            let hw = g.read(|p| p.high_watermark());
            let labels =
                || vec![("topic", topic.clone()), ("partition", partition.to_string()), ("group", group.to_string())];
            s.gauge(
                "flotilla_partition_leader",
                "1 when this node leads the partition, else 0.",
                labels(),
                b(status.is_leader),
            );
            s.gauge(
                "flotilla_partition_high_watermark",
                "The partition's high watermark on this replica.",
                labels(),
                hw,
            );
            // Offsets are assigned when an entry is applied, that is once committed, so a
            // replica's log end offset is its applied end; the Raft index shows the
            // entries it holds beyond that.
            s.gauge("flotilla_partition_log_end_offset", "The next offset this replica has applied.", labels(), hw);
            let last = status.last_log_index.unwrap_or(0);
            let committed = status.committed.unwrap_or(0);
            let applied = status.applied.unwrap_or(0);
            s.gauge(
                "flotilla_partition_raft_last_index",
                "The last Raft log index this replica holds.",
                labels(),
                last,
            );
            s.gauge(
                "flotilla_partition_commit_lag_entries",
                "Raft entries this replica holds that it does not know committed.",
                labels(),
                last.saturating_sub(committed),
            );
            s.gauge(
                "flotilla_partition_apply_lag_entries",
                "Raft entries this replica knows committed and has not applied.",
                labels(),
                committed.saturating_sub(applied),
            );
            if !g.is_ticking() {
                quiesced += 1;
            }
            if status.is_leader {
                leading += 1;
                // Under-replicated, judged by the leader: fewer in-sync voters (the
                // leader itself and those `mover::in_sync` accepts) than the replication
                // factor.
                let others: Vec<u64> = g.membership().voters().into_iter().filter(|v| *v != me).collect();
                let in_sync = 1 + self.catch_up(&g, &others).iter().filter(|c| c.in_sync).count();
                let under = in_sync < *rf;
                under_total += u64::from(under);
                s.gauge(
                    "flotilla_partition_under_replicated",
                    "1 when the partition (led here) has fewer in-sync replicas than its replication factor.",
                    labels(),
                    b(under),
                );
                // Consumer group lag, exported once per partition: by its leader, which
                // knows the high watermark (the committed offsets are in every node's
                // metadata).
                for (group, lag, secs) in self.group_lag_rows(topic, *partition, &g) {
                    let labels = vec![("group", group), ("topic", topic.clone()), ("partition", partition.to_string())];
                    s.gauge(
                        "flotilla_group_lag_records",
                        "Records between a consumer group's committed offset and the partition's high watermark (at the partition's leader).",
                        labels.clone(),
                        lag,
                    );
                    s.gauge_f(
                        "flotilla_group_lag_seconds",
                        "How old the first record a consumer group has not committed is (by its batch's index time); 0 when none is left.",
                        labels,
                        secs,
                    );
                }
            }
        }
        s.gauge("flotilla_partition_replicas", "Partition replicas running on this node.", vec![], hosted);
        s.gauge("flotilla_partitions_leading", "Partitions this node leads.", vec![], leading);
        s.gauge(
            "flotilla_partitions_quiesced",
            "Partition replicas on this node whose Raft timers are stopped (idle groups).",
            vec![],
            quiesced,
        );
        s.gauge(
            "flotilla_under_replicated_partitions",
            "Partitions led by this node that are under-replicated.",
            vec![],
            under_total,
        );
    }

    /// The whole cluster as the metadata leader sees it (exported by it alone).
    fn cluster_metrics(&self, s: &mut Scrape) {
        let brokers: Vec<(u64, &'static str)> =
            self.with_metadata(|m| m.brokers().values().map(|b| (b.id, b.state_name())).collect());
        let mut by_state: BTreeMap<&'static str, u64> =
            ["alive", "suspected", "dead", "draining", "removed"].into_iter().map(|st| (st, 0)).collect();
        for (id, state) in &brokers {
            *by_state.entry(state).or_default() += 1;
            s.gauge(
                "flotilla_node_state",
                "1 for each node's state as the metadata group records it (exported by the metadata leader).",
                vec![("node", id.to_string()), ("state", state.to_string())],
                1,
            );
        }
        for (state, n) in by_state {
            s.gauge(
                "flotilla_cluster_nodes",
                "Nodes in each state (exported by the metadata leader).",
                vec![("state", state.to_string())],
                n,
            );
        }
        let view = self.describe_cluster();
        let partitions: usize = view.topics.iter().map(|t| t.partitions.len()).sum();
        let leaderless = flotilla_types::cluster::Attention::of(&view.brokers, &view.topics).leaderless.len();
        s.gauge(
            "flotilla_cluster_topics",
            "Topics in the cluster (exported by the metadata leader).",
            vec![],
            view.topics.len() as u64,
        );
        s.gauge(
            "flotilla_cluster_partitions",
            "Partitions in the cluster (exported by the metadata leader).",
            vec![],
            partitions as u64,
        );
        s.gauge(
            "flotilla_cluster_leaderless_partitions",
            "Partitions with no leader known on a live node (exported by the metadata leader).",
            vec![],
            leaderless as u64,
        );
        let moves = self.with_metadata(|m| m.moves().len());
        s.gauge(
            "flotilla_moves_in_progress",
            "Partition moves in progress in the cluster (exported by the metadata leader).",
            vec![],
            moves as u64,
        );
    }

    /// Each consumer group's lag on a partition this node leads: groups with an offset
    /// for it or a member reading its topic (from the log start when nothing is
    /// committed). Rows: group, records, seconds.
    pub(crate) fn group_lag_rows(
        &self,
        topic: &str,
        partition: flotilla_types::PartitionId,
        g: &flotilla_raft::PartitionGroup,
    ) -> Vec<(String, u64, f64)> {
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
            return Vec::new();
        }
        let (hw, start) = g.read(|p| (p.high_watermark(), p.log_start_offset()));
        let now = self.inner.clock.now_ms();
        committed
            .into_iter()
            .map(|(group, c)| {
                let next = c.unwrap_or(start).max(start);
                let lag = hw.saturating_sub(next);
                let secs = match lag {
                    0 => 0.0,
                    _ => match g.group().batch_at(next) {
                        Ok(Some(b)) => now.saturating_sub(b.timestamp_ms) as f64 / 1000.0,
                        _ => 0.0,
                    },
                };
                (group, lag, secs)
            })
            .collect()
    }
}

/// The process, from `/proc/self` (Linux; nothing elsewhere): CPU seconds, resident
/// memory, open file descriptors, start time: the names Prometheus' own clients use.
fn process_metrics(s: &mut Scrape) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // The fields after the command name (which is in parentheses and may hold spaces).
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return };
    let fields: Vec<&str> = after.split(' ').collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        s.counter(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) as f64 / TICKS,
        );
    }
    if let Some(rss_pages) = field(24) {
        s.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", vec![], rss_pages * 4096);
    }
    if let Some(vsize) = field(23) {
        s.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vec![], vsize);
    }
    if let Some(threads) = field(20) {
        s.gauge("process_threads", "Number of OS threads in the process.", vec![], threads);
    }
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
        s.gauge_f(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            vec![],
            boot as f64 + start_ticks as f64 / TICKS,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        s.gauge("process_open_fds", "Number of open file descriptors.", vec![], fds.count() as u64);
    }
}

/// When the machine booted, in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
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
        r.encode(&mut out);
        let line = |s: &str| out.lines().any(|l| l == s);
        assert!(
            line("flotilla_request_duration_seconds_bucket{method=\"produce\",outcome=\"ok\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(out.contains("le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("le=\"10\"} 2"), "{out}");
        assert!(!out.contains(".."), "help texts end in one full stop: {out}");
        assert!(out.contains("le=\"+Inf\"} 3"), "{out}");
        assert!(line("flotilla_request_duration_seconds_count{method=\"produce\",outcome=\"ok\"} 3"), "{out}");
    }

    #[test]
    fn topic_counters_and_scrape_gauges_are_in_the_text() {
        let r = Registry::default();
        r.count_in("orders", 10, 1000);
        r.count_in("orders", 5, 500);
        r.count_out("orders", 7, 700);
        let mut out = String::new();
        r.encode(&mut out);
        assert!(out.lines().any(|l| l == "flotilla_topic_records_in_total{topic=\"orders\"} 15"), "{out}");
        assert!(out.lines().any(|l| l == "flotilla_topic_bytes_in_total{topic=\"orders\"} 1500"), "{out}");
        assert!(out.lines().any(|l| l == "flotilla_topic_bytes_out_total{topic=\"orders\"} 700"), "{out}");
        assert!(out.contains("# TYPE flotilla_topic_records_in_total counter"), "{out}");

        let mut s = Scrape::default();
        s.gauge("flotilla_x", "help", vec![("a", "1".into())], 2);
        s.gauge("flotilla_x", "help", vec![("a", "2".into())], 3);
        s.gauge_f("flotilla_z", "help", vec![], 0.25);
        s.counter("flotilla_y", "help", 9u64);
        process_metrics(&mut s);
        let mut out = String::new();
        s.encode(&mut out);
        assert_eq!(out.matches("# TYPE flotilla_x gauge").count(), 1, "{out}");
        assert!(out.lines().any(|l| l == "flotilla_x{a=\"2\"} 3"), "{out}");
        assert!(out.lines().any(|l| l == "flotilla_z 0.25"), "{out}");
        assert!(out.lines().any(|l| l == "flotilla_y_total 9"), "{out}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(out.lines().any(|l| l.starts_with(name)), "{name} missing: {out}");
        }
    }
}
