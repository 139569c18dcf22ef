//! `flotilla bench`: load generators that measure a cluster. `bench produce` sends records
//! either closed-loop (N producers, each with one record in flight) or open-loop (a fixed
//! rate, each record's latency counted from the time it was meant to be sent, so a stall
//! is not hidden), optionally tailing the topic for end-to-end latency; `bench consume`
//! reads a topic from its beginning. Both print a line per second, then a report with
//! throughput, latency percentiles and the CPU time the cluster's node processes on this
//! machine spent over the measured interval (read from /proc).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use flotilla_client::{Client, ClientError, Consumer, ErrorCode, PartitionId, ProducerConfig, Record, StartAt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client_cmds::{Output, one_line, print_json};

/// The header each `bench produce` record carries: its send time (the intended one under
/// `--rate`) in microseconds since the Unix epoch, as decimal digits.
pub const SENT_HEADER: &str = "flotilla-bench-sent-us";

/// An open-loop send issued later than this after its intended time counts as late.
const LATE: Duration = Duration::from_millis(10);

/// How `bench produce` runs, for its `--help`.
const PRODUCE_HELP: &str = "\
Modes:
  closed loop (default)   --producers N tasks, each sends one record and waits for its
                          acknowledgement: N records in flight; the load adapts to the
                          cluster, so a stall lowers the rate instead of showing in latency
  open loop (--rate R)    R records/s in total at fixed intended times (record i at
                          start + i/R, sent by task i mod N); latency counts from the
                          intended time, so time spent waiting behind a stall is measured
                          (no coordinated omission); at most --max-in-flight records are
                          outstanding, and sends issued over 10 ms late are counted

Records acknowledged during the --warmup-secs are left out of the figures; --records and
--duration-secs count from the end of the warm-up. Node CPU is the utime+stime of the
`flotilla node ... --listen ADDR` processes on this machine whose ADDR is a broker of
the cluster, read from /proc before and after the measured interval.

Examples:
  flotilla bench produce --topic bench --create --partitions 6 --producers 64 --duration-secs 20
  flotilla bench produce --topic bench --rate 2000 --duration-secs 20 --e2e
  flotilla bench consume --topic bench --duration-secs 10";

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Produce under a bounded load (closed loop, or open loop at --rate); report
    /// throughput, acknowledgement latency (and end-to-end latency with --e2e) and the
    /// CPU time the nodes spent.
    #[command(after_help = PRODUCE_HELP)]
    Produce(BenchProduceArgs),
    /// Read a topic from its beginning, one consumer per partition; report throughput
    /// and the CPU time the nodes spent.
    Consume(BenchConsumeArgs),
}

#[derive(Args, Clone, Serialize)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["records", "duration_secs"])))]
pub struct BenchProduceArgs {
    /// The topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Create the topic first when it does not exist (and wait for its leaders).
    #[arg(long)]
    pub create: bool,
    /// Partitions of the topic, when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replication factor of the topic, when it is created.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Closed loop: concurrent producers, each waiting for one record's acknowledgement
    /// before sending the next, so this is the number of records in flight. With --rate:
    /// the tasks the schedule is spread over.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Open loop: send this many records per second in total, at fixed intended times,
    /// whatever the acknowledgements do.
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Open loop: records sent and not yet acknowledged at most; a send that finds none
    /// free waits (and its latency, counted from its intended time, shows it).
    #[arg(long, default_value_t = 10_000, requires = "rate")]
    pub max_in_flight: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Values that do not compress: each record's value is a different slice of 64 MiB
    /// of pseudo-random bytes (default: every record carries the same value).
    #[arg(long)]
    pub random_values: bool,
    /// Records to send after the warm-up.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds to send for after the warm-up.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Seconds sent first and left out of the figures (records acknowledged then).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Producer linger, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Compress batches: none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = flotilla_client::Compression::parse)]
    pub compression: flotilla_client::Compression,
    /// Send without idempotence (at-least-once, as producers did before it was the
    /// default), to measure what it costs.
    #[arg(long)]
    pub no_idempotence: bool,
    /// When a record counts as written: all (the default) or leader.
    #[arg(long, default_value = "all", value_parser = flotilla_client::Acks::parse)]
    pub acks: flotilla_client::Acks,
    /// Batches per partition in flight at most (1 to 5; default 1).
    #[arg(long, default_value_t = 1)]
    pub batches_in_flight: usize,
    /// Also measure end-to-end latency: one consumer per partition tails the topic from
    /// its end and counts, for each record, the time from its send to its arrival.
    #[arg(long)]
    pub e2e: bool,
    /// With --e2e: the tailing consumers are members of this consumer group (started at
    /// the end when the group has no offsets), so the latency includes the group's
    /// assignment and fetch path.
    #[arg(long, requires = "e2e", conflicts_with = "e2e_share_group")]
    pub e2e_group: Option<String>,
    /// With --e2e: the tailing consumers are members of this share group (started at the
    /// end), so the latency includes acquiring each record at the coordinator.
    #[arg(long, requires = "e2e")]
    pub e2e_share_group: Option<String>,
    /// With --e2e-group or --e2e-share-group: this many members.
    #[arg(long, default_value_t = 1)]
    pub e2e_members: u32,
    /// Measure unavailability: producer k sends to partition k mod the partition count
    /// (so every partition gets records all the time; use at least as many producers as
    /// partitions), and the report lists every interval longer than this between two
    /// acknowledgements of one partition, with its wall-clock start and end (what
    /// `scripts/failover.py` matches against its kills).
    #[arg(long, value_name = "MS")]
    pub ack_gaps_over_ms: Option<u64>,
}

#[derive(Args, Clone, Serialize)]
#[command(group(clap::ArgGroup::new("amount").args(["records", "duration_secs"])))]
pub struct BenchConsumeArgs {
    /// The topic to read.
    #[arg(long)]
    pub topic: String,
    /// Read this partition only (default: all of them, one consumer each).
    #[arg(long)]
    pub partition: Option<PartitionId>,
    /// Stop after this many records in all (waiting for more when fewer are stored).
    /// Default: read what the partitions hold when the bench starts.
    #[arg(long)]
    pub records: Option<u64>,
    /// Read for this many seconds (waiting for more at the end of the partitions).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Give up when no record has come for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Read as members of this consumer group (from its committed offsets, or the
    /// beginning), committing every 5 s, instead of one plain consumer per partition.
    #[arg(long, conflicts_with = "partition")]
    pub group: Option<String>,
    /// Read as members of this share group (a queue: each record to one member,
    /// accepted when the next poll starts), from the beginning for partitions the group
    /// never read.
    #[arg(long, conflicts_with_all = ["partition", "group"])]
    pub share_group: Option<String>,
    /// With --group or --share-group: this many members, in one process.
    #[arg(long, default_value_t = 1)]
    pub members: u32,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?}: expected records per second, a number above 0")),
    }
}

/// Runs one `bench` command.
pub async fn run(client: &Client, cmd: BenchCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(a) => produce(client, a, output).await,
        BenchCmd::Consume(a) => consume(client, a, output).await,
    }
}

// ---------------------------------------------------------------------------------------
// CPU time from /proc.

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so fields are counted
/// from the last ')'.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state): field n is fields[n - 3].
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn process_ticks(pid: &str) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The address a `flotilla node` process listens on, from its arguments
/// (`flotilla node ... --listen ADDR` or `--listen=ADDR`); `None` for any other process.
fn node_listen<S: AsRef<str>>(args: &[S]) -> Option<String> {
    let exe = args.first()?.as_ref();
    let name = exe.rsplit('/').next().unwrap_or(exe);
    if !name.starts_with("flotilla") || args.get(1).map(|a| a.as_ref()) != Some("node") {
        return None;
    }
    let mut rest = args[2..].iter().map(|a| a.as_ref());
    while let Some(a) = rest.next() {
        if a == "--listen" {
            return rest.next().map(String::from);
        }
        if let Some(addr) = a.strip_prefix("--listen=") {
            return Some(addr.to_string());
        }
    }
    None
}

/// Whether a node listening on `listen` serves the broker address `broker`: the same
/// address, a wildcard address (0.0.0.0, [::]) with the same port, or both loopback.
fn serves(listen: &str, broker: &str) -> bool {
    if listen == broker {
        return true;
    }
    let (Some((lhost, lport)), Some((bhost, bport))) = (listen.rsplit_once(':'), broker.rsplit_once(':')) else {
        return false;
    };
    let loopback = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "[::1]");
    lport == bport && (matches!(lhost, "0.0.0.0" | "[::]" | "::" | "") || (loopback(lhost) && loopback(bhost)))
}

/// The processes on this machine that are nodes of the cluster whose brokers are at
/// `brokers`: pid → its listen address.
fn find_nodes(brokers: &[String]) -> BTreeMap<u32, String> {
    let mut found = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(listen) = node_listen(&args)
            && brokers.iter().any(|b| serves(&listen, b))
        {
            found.insert(pid, listen);
        }
    }
    found
}

/// The node processes of the cluster `client` talks to that run on this machine.
async fn cluster_nodes(client: &Client) -> BTreeMap<u32, String> {
    match client.describe_cluster().await {
        Ok(info) => {
            let brokers: Vec<String> = info.brokers.iter().map(|b| b.addr.clone()).collect();
            find_nodes(&brokers)
        }
        Err(e) => {
            eprintln!("bench: cannot list the cluster's nodes ({e}); node CPU is not measured");
            BTreeMap::new()
        }
    }
}

/// CPU ticks of the node processes and of this process at one moment.
struct CpuSample {
    nodes: BTreeMap<u32, u64>,
    own: Option<u64>,
    at: Instant,
}

impl CpuSample {
    fn take(nodes: &BTreeMap<u32, String>) -> CpuSample {
        CpuSample {
            nodes: nodes.keys().filter_map(|pid| Some((*pid, process_ticks(&pid.to_string())?))).collect(),
            own: process_ticks("self"),
            at: Instant::now(),
        }
    }
}

/// CPU time over the measured interval, as reported.
#[derive(Serialize, Debug)]
struct CpuReport {
    /// Node processes of the cluster found on this machine and measured (0: the cluster
    /// runs elsewhere).
    processes: usize,
    /// Their user + system CPU time over the measured interval.
    cpu_secs: Option<f64>,
    /// `cpu_secs` per million records measured.
    cpu_secs_per_million_records: Option<f64>,
    /// `cpu_secs` over the interval's length: cores kept busy on average.
    cores: Option<f64>,
}

fn cpu_report(before: &CpuSample, after: &CpuSample, records: u64) -> (CpuReport, Option<f64>) {
    let tick = ticks_per_sec();
    let measured: Vec<u64> =
        before.nodes.iter().filter_map(|(pid, t0)| after.nodes.get(pid).map(|t1| t1.saturating_sub(*t0))).collect();
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64().max(1e-9);
    let node = if measured.is_empty() {
        CpuReport { processes: 0, cpu_secs: None, cpu_secs_per_million_records: None, cores: None }
    } else {
        let secs = measured.iter().sum::<u64>() as f64 / tick;
        CpuReport {
            processes: measured.len(),
            cpu_secs: Some(secs),
            cpu_secs_per_million_records: (records > 0).then(|| secs * 1e6 / records as f64),
            cores: Some(secs / wall),
        }
    };
    let own = match (before.own, after.own) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tick),
        _ => None,
    };
    (node, own)
}

fn cpu_text(node: &CpuReport, own: Option<f64>) -> String {
    let mut out = match (node.processes, node.cpu_secs) {
        (0, _) | (_, None) => {
            "node CPU: no node process of this cluster runs on this machine: not measured\n".to_string()
        }
        (n, Some(secs)) => format!(
            "node CPU: {n} node process{} on this machine: {secs:.2} CPU-s ({:.2} cores), {} CPU-s per million records\n",
            if n == 1 { "" } else { "es" },
            node.cores.unwrap_or(0.0),
            node.cpu_secs_per_million_records.map_or_else(|| "-".to_string(), |c| format!("{c:.0}"))
        ),
    };
    if let Some(own) = own {
        out.push_str(&format!("bench CPU: {own:.2} CPU-s\n"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Latency bookkeeping.

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 2 minutes, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    fn text(&self) -> String {
        format!("p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}", self.p50, self.p99, self.p999, self.max)
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Wall-clock microseconds since the Unix epoch of monotonic instants, from one reading
/// of both clocks (so that send and receive times in this process agree).
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    base_us: u64,
}

impl Clock {
    fn new() -> Clock {
        let base_us =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Clock { base: Instant::now(), base_us }
    }

    fn micros(&self, at: Instant) -> u64 {
        self.base_us + at.saturating_duration_since(self.base).as_micros() as u64
    }
}

/// The send time a record carries in [`SENT_HEADER`].
fn sent_micros(r: &Record) -> Option<u64> {
    let (_, v) = r.headers.iter().find(|(name, _)| name == SENT_HEADER)?;
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One line of the per-second output.
#[derive(Serialize, Debug)]
struct Second {
    /// Seconds since the bench began sending.
    second: u64,
    /// In the warm-up: not in the figures.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    warmup: bool,
    records_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mb_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e2e_p99_ms: Option<f64>,
    errors: u64,
}

impl Second {
    fn text(&self) -> String {
        let mut s = format!("{:>4}s  {:>9.0} records/s", self.second, self.records_per_sec);
        if let Some(mb) = self.mb_per_sec {
            s.push_str(&format!("  {mb:>7.2} MB/s"));
        }
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        if self.p50_ms.is_some() || self.p99_ms.is_some() {
            s.push_str(&format!("  p50 {} ms  p99 {} ms", opt(self.p50_ms), opt(self.p99_ms)));
        }
        if let Some(e) = self.e2e_p99_ms {
            s.push_str(&format!("  e2e p99 {e:.3} ms"));
        }
        s.push_str(&format!("  errors {}", self.errors));
        if self.warmup {
            s.push_str("  (warm-up)");
        }
        s
    }
}

/// Prints per-second lines where the output format wants them: stdout for text,
/// stderr when stdout carries the JSON report.
fn progress(output: Output, line: &str) {
    match output {
        Output::Text => println!("{line}"),
        Output::Json => eprintln!("{line}"),
    }
}

/// An end-to-end consumer that is a group member.
enum E2eMember {
    Group(flotilla_client::GroupConsumer),
    Share(flotilla_client::ShareConsumer),
}

/// What the producers and end-to-end consumers of `bench produce` have seen so far.
struct ProduceStats {
    /// The end of the warm-up: acknowledgements from then on are measured.
    measure_from: Instant,
    /// Acknowledgement latency of the measured records, µs.
    ack: Histogram<u64>,
    /// ... and of this second's records, measured or not.
    ack_second: Histogram<u64>,
    e2e: Histogram<u64>,
    e2e_second: Histogram<u64>,
    measured: u64,
    measured_errors: u64,
    warmup_acked: u64,
    warmup_errors: u64,
    second_acked: u64,
    second_errors: u64,
    /// Records with a send time seen by the end-to-end consumers, warm-up included.
    e2e_seen: u64,
    last_ack: Option<Instant>,
    first_error: Option<String>,
    /// With --ack-gaps-over-ms: the gap threshold, each partition's last acknowledgement,
    /// and the gaps found.
    gaps_over: Option<Duration>,
    last_ack_of: BTreeMap<PartitionId, Instant>,
    gaps: Vec<AckGap>,
}

/// An interval with no acknowledgement from one partition (--ack-gaps-over-ms).
#[derive(Serialize, Clone)]
struct AckGap {
    partition: PartitionId,
    /// The acknowledgements on either side, in milliseconds since the Unix epoch.
    from_unix_ms: u64,
    to_unix_ms: u64,
    ms: f64,
}

impl ProduceStats {
    fn new(measure_from: Instant) -> ProduceStats {
        ProduceStats {
            measure_from,
            ack: histogram(),
            ack_second: histogram(),
            e2e: histogram(),
            e2e_second: histogram(),
            measured: 0,
            measured_errors: 0,
            warmup_acked: 0,
            warmup_errors: 0,
            second_acked: 0,
            second_errors: 0,
            e2e_seen: 0,
            last_ack: None,
            first_error: None,
            gaps_over: None,
            last_ack_of: BTreeMap::new(),
            gaps: vec![],
        }
    }

    /// `partition` acknowledged a record at `at`: notes the gap since its previous one
    /// when it is over the threshold.
    fn acked_on(&mut self, partition: PartitionId, at: Instant, clock: &Clock) {
        let Some(over) = self.gaps_over else { return };
        if let Some(prev) = self.last_ack_of.insert(partition, at).filter(|p| *p < at) {
            let gap = at - prev;
            if gap > over {
                self.gaps.push(AckGap {
                    partition,
                    from_unix_ms: clock.micros(prev) / 1000,
                    to_unix_ms: clock.micros(at) / 1000,
                    ms: gap.as_secs_f64() * 1000.0,
                });
            }
        }
    }

    /// A record sent (or meant to be sent) at `from` was answered at `at`.
    fn answered<T>(&mut self, from: Instant, at: Instant, r: Result<T, ClientError>) {
        let measured = at >= self.measure_from;
        match r {
            Ok(_) => {
                let us = micros(at.saturating_duration_since(from));
                self.ack_second.saturating_record(us);
                self.second_acked += 1;
                if measured {
                    self.ack.saturating_record(us);
                    self.measured += 1;
                    self.last_ack = Some(self.last_ack.map_or(at, |l| l.max(at)));
                } else {
                    self.warmup_acked += 1;
                }
            }
            Err(e) => {
                self.second_errors += 1;
                if measured {
                    self.measured_errors += 1;
                } else {
                    self.warmup_errors += 1;
                }
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// End-to-end latencies (µs) of records received at `at`.
    fn received(&mut self, at: Instant, latencies: &[u64]) {
        for us in latencies {
            self.e2e_second.saturating_record((*us).max(1));
            if at >= self.measure_from {
                self.e2e.saturating_record((*us).max(1));
            }
        }
        self.e2e_seen += latencies.len() as u64;
    }

    fn acked_total(&self) -> u64 {
        self.measured + self.warmup_acked
    }

    /// The line for the second that ends now (`secs` long), and a fresh second.
    fn take_second(&mut self, second: u64, secs: f64, warmup: bool, e2e: bool) -> Second {
        let has = !self.ack_second.is_empty();
        let line = Second {
            second,
            warmup,
            records_per_sec: self.second_acked as f64 / secs.max(1e-9),
            mb_per_sec: None,
            p50_ms: has.then(|| ms(self.ack_second.value_at_quantile(0.5))),
            p99_ms: has.then(|| ms(self.ack_second.value_at_quantile(0.99))),
            e2e_p99_ms: (e2e && !self.e2e_second.is_empty()).then(|| ms(self.e2e_second.value_at_quantile(0.99))),
            errors: self.second_errors,
        };
        self.ack_second.reset();
        self.e2e_second.reset();
        self.second_acked = 0;
        self.second_errors = 0;
        line
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// bench produce

/// What `bench produce` reports.
#[derive(Serialize)]
struct ProduceReport {
    parameters: BenchProduceArgs,
    /// `closed-loop` or `open-loop`.
    mode: &'static str,
    /// The topic's partitions.
    partitions: u32,
    /// Records acknowledged after the warm-up: the figures are theirs.
    records: u64,
    /// Records that failed after the warm-up.
    errors: u64,
    /// Value bytes of `records`.
    bytes: u64,
    /// From the end of the warm-up to the last acknowledgement (at least the duration).
    elapsed_secs: f64,
    records_per_sec: f64,
    /// Value bytes per second, in 10^6 bytes.
    mb_per_sec: f64,
    /// Acknowledgement latency: from the send (closed loop) or the intended send time
    /// (open loop) to the acknowledgement.
    latency_ms: Latency,
    /// From the send (or intended send) time to a consumer's receipt (with --e2e).
    #[serde(skip_serializing_if = "Option::is_none")]
    e2e_latency_ms: Option<Latency>,
    /// Records the end-to-end latency figures cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    e2e_records: Option<u64>,
    warmup: WarmupReport,
    /// Every record acknowledged, warm-up included: what the topic gained.
    acknowledged_total: u64,
    /// Open-loop scheduling: how well the intended times were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_loop: Option<OpenLoopReport>,
    node_cpu: CpuReport,
    /// CPU time of this bench process over the measured interval.
    bench_cpu_secs: Option<f64>,
    per_second: Vec<Second>,
    /// With --ack-gaps-over-ms: every longer interval between two acknowledgements of a
    /// partition, warm-up included.
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_gaps: Option<Vec<AckGap>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Serialize)]
struct WarmupReport {
    secs: u64,
    /// Records acknowledged during the warm-up (not in the figures).
    records: u64,
    errors: u64,
}

#[derive(Serialize, Default, Clone, Copy)]
struct OpenLoopReport {
    /// Sends issued more than `late_threshold_ms` after their intended time.
    late_sends: u64,
    late_threshold_ms: u64,
    /// Sends that found --max-in-flight records outstanding and waited for one.
    capped_sends: u64,
    /// The most a send was issued after its intended time.
    max_send_lag_ms: f64,
}

impl OpenLoopReport {
    fn add(&mut self, o: OpenLoopReport) {
        self.late_sends += o.late_sends;
        self.capped_sends += o.capped_sends;
        self.max_send_lag_ms = self.max_send_lag_ms.max(o.max_send_lag_ms);
    }
}

/// When and how much `bench produce` sends; shared by its tasks.
#[derive(Clone)]
struct Plan {
    producer: flotilla_client::Producer,
    value: Bytes,
    /// With `--random-values`: where values are cut from.
    pool: Option<Bytes>,
    /// Records made so far (picks each one's place in the pool).
    sent: Arc<AtomicU64>,
    clock: Clock,
    e2e: bool,
    start: Instant,
    measure_from: Instant,
    /// No send at or after this (with --duration-secs).
    send_end: Option<Instant>,
    /// Sends after the warm-up at most (with --records).
    budget: u64,
    /// Sends after the warm-up so far.
    issued: Arc<AtomicU64>,
    stats: Arc<Mutex<ProduceStats>>,
    /// With --ack-gaps-over-ms: the topic's partitions, each sent to in turn.
    pin: Option<u32>,
}

impl Plan {
    /// Whether a send at `at` may go: before the end, and within the budget (counted
    /// once the warm-up is over).
    fn may_send(&self, at: Instant) -> bool {
        if self.send_end.is_some_and(|end| at >= end) {
            return false;
        }
        at < self.measure_from || self.issued.fetch_add(1, Ordering::Relaxed) < self.budget
    }

    fn record(&self, sent: Instant) -> Record {
        let value = match &self.pool {
            Some(pool) => {
                // A different place in the pool for each record (a step coprime with the
                // pool's size), so no two values nearby in the log repeat each other.
                let n = self.sent.fetch_add(1, Ordering::Relaxed);
                let size = self.value.len();
                let at = (n.wrapping_mul(1_000_003) as usize) % (pool.len() - size);
                pool.slice(at..at + size)
            }
            None => self.value.clone(),
        };
        let mut r = Record::value(value);
        if self.e2e {
            r.headers.push((SENT_HEADER.to_string(), Bytes::from(self.clock.micros(sent).to_string())));
        }
        r
    }
}

/// `len` pseudo-random bytes (xorshift; at least twice `record_size`), made once.
fn random_pool(len: usize, record_size: usize) -> Bytes {
    let len = len.max(2 * record_size + 8);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// One closed-loop producer: one record in flight at a time; to partition `pin` only,
/// when given.
async fn closed_loop(plan: Plan, pin: Option<PartitionId>) {
    loop {
        let t0 = Instant::now();
        if !plan.may_send(t0) {
            return;
        }
        let r = match pin {
            Some(p) => plan.producer.send_to(p, plan.record(t0)).await.map(|o| (p, o)),
            None => plan.producer.send(plan.record(t0)).await,
        };
        let at = Instant::now();
        let mut stats = lock(&plan.stats);
        if let Ok((p, _)) = &r {
            stats.acked_on(*p, at, &plan.clock);
        }
        stats.answered(t0, at, r);
    }
}

/// Task `k` of `n` of the open-loop schedule: records k, k+n, k+2n, ..., record i meant
/// to be sent at start + i/rate.
async fn open_loop(plan: Plan, rate: f64, k: u64, n: u64, slots: Arc<Semaphore>) -> OpenLoopReport {
    let mut report = OpenLoopReport { late_threshold_ms: LATE.as_millis() as u64, ..Default::default() };
    let mut i = k;
    loop {
        let intended = plan.start + Duration::from_secs_f64(i as f64 / rate);
        if !plan.may_send(intended) {
            return report;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                report.capped_sends += 1;
                match slots.clone().acquire_owned().await {
                    Ok(s) => s,
                    Err(_) => return report,
                }
            }
        };
        let lag = Instant::now().saturating_duration_since(intended);
        if lag > LATE {
            report.late_sends += 1;
        }
        report.max_send_lag_ms = report.max_send_lag_ms.max(lag.as_secs_f64() * 1000.0);
        let queued = match plan.pin {
            Some(partitions) => {
                plan.producer.enqueue_to((i % partitions as u64) as PartitionId, plan.record(intended)).await
            }
            None => plan.producer.enqueue(plan.record(intended)).await,
        };
        match queued {
            Ok(ack) => {
                let (stats, clock) = (plan.stats.clone(), plan.clock);
                tokio::spawn(async move {
                    let r = ack.await;
                    let at = Instant::now();
                    let mut stats = lock(&stats);
                    if let Ok((p, _)) = &r {
                        stats.acked_on(*p, at, &clock);
                    }
                    stats.answered(intended, at, r);
                    drop(slot);
                });
            }
            Err(e) => lock(&plan.stats).answered(intended, Instant::now(), Err::<(), _>(e)),
        }
        i += n;
    }
}

/// Runs the load: returns once every record sent has been answered.
async fn drive(plan: Plan, rate: Option<f64>, producers: usize, max_in_flight: usize) -> Option<OpenLoopReport> {
    let mut tasks = JoinSet::new();
    match rate {
        None => {
            for k in 0..producers {
                let plan = plan.clone();
                let pin = plan.pin.map(|partitions| (k % partitions as usize) as PartitionId);
                tasks.spawn(async move {
                    closed_loop(plan, pin).await;
                    None
                });
            }
        }
        Some(rate) => {
            let slots = Arc::new(Semaphore::new(max_in_flight));
            for k in 0..producers {
                let (plan, slots) = (plan.clone(), slots.clone());
                tasks.spawn(async move { Some(open_loop(plan, rate, k as u64, producers as u64, slots).await) });
            }
            let mut total = OpenLoopReport { late_threshold_ms: LATE.as_millis() as u64, ..Default::default() };
            while let Some(r) = tasks.join_next().await {
                if let Ok(Some(r)) = r {
                    total.add(r);
                }
            }
            // Every slot back: every record answered.
            let _all = slots.acquire_many(max_in_flight as u32).await;
            return Some(total);
        }
    }
    while tasks.join_next().await.is_some() {}
    None
}

/// Creates `topic` unless it exists, then waits (at most 30 s) until every partition
/// has a leader.
async fn create_topic(client: &Client, a: &BenchProduceArgs) -> anyhow::Result<()> {
    match client.create_topic(&a.topic, a.partitions, a.replication_factor).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
        Err(e) => return Err(one_line(e)),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(t) = client.describe_topic(&a.topic).await
            && !t.partitions.is_empty()
            && t.partitions.iter().all(|p| p.leader.is_some())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("bench: some partitions of '{}' still have no leader after 30 s; sending anyway", a.topic);
    Ok(())
}

/// A consumer of one partition, retried for up to 30 s while the partition has no
/// leader yet.
async fn consumer(client: &Client, topic: &str, p: PartitionId, start: StartAt) -> anyhow::Result<Consumer> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.consumer(topic, p, start).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline && e.code() != Some(ErrorCode::UnknownTopic) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(one_line(e)).with_context(|| format!("a consumer of {topic}/{p}")),
        }
    }
}

async fn produce(client: &Client, a: BenchProduceArgs, output: Output) -> anyhow::Result<()> {
    if a.producers == 0 {
        bail!("--producers must be at least 1");
    }
    if a.max_in_flight == 0 || a.max_in_flight > u32::MAX as usize {
        bail!("--max-in-flight must be between 1 and {}", u32::MAX);
    }
    if a.records == Some(0) || a.duration_secs == Some(0) {
        bail!("--records and --duration-secs must be at least 1");
    }
    if a.create {
        create_topic(client, &a).await?;
    }
    // Fails with a clear message when the topic does not exist.
    let partitions = client.partition_count(&a.topic).await.map_err(one_line)?;
    let nodes = cluster_nodes(client).await;
    let clock = Clock::new();

    // The end-to-end consumers start at the end, before anything is sent.
    let mut tails = JoinSet::new();
    let mut e2e_consumers = vec![];
    let e2e_members = a.e2e_group.is_some() || a.e2e_share_group.is_some();
    if a.e2e && !e2e_members {
        for p in 0..partitions {
            e2e_consumers.push(consumer(client, &a.topic, p, StartAt::End).await?);
        }
    }
    let mut members: Vec<E2eMember> = Vec::new();
    for _ in 0..if e2e_members { a.e2e_members.max(1) } else { 0 } {
        if let Some(g) = &a.e2e_group {
            let config = flotilla_client::GroupConfig {
                client_id: "flotilla-bench".into(),
                auto_offset_reset: flotilla_client::OffsetReset::Latest,
                ..Default::default()
            };
            members
                .push(E2eMember::Group(client.group_consumer(g, &[a.topic.as_str()], config).await.map_err(one_line)?));
        }
        if let Some(g) = &a.e2e_share_group {
            let config = flotilla_client::ShareGroupConfig { client_id: "flotilla-bench".into(), ..Default::default() };
            members
                .push(E2eMember::Share(client.share_consumer(g, &[a.topic.as_str()], config).await.map_err(one_line)?));
        }
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs(a.warmup_secs);
    let stats = Arc::new(Mutex::new(ProduceStats::new(measure_from)));
    lock(&stats).gaps_over = a.ack_gaps_over_ms.map(Duration::from_millis);
    for mut c in e2e_consumers {
        let stats = stats.clone();
        tails.spawn(async move {
            loop {
                match c.poll(Duration::from_millis(500)).await {
                    Ok(records) => {
                        let now = Instant::now();
                        let now_us = clock.micros(now);
                        let lat: Vec<u64> = records
                            .iter()
                            .filter_map(|r| sent_micros(&r.record))
                            .map(|sent| now_us.saturating_sub(sent))
                            .collect();
                        if !lat.is_empty() {
                            lock(&stats).received(now, &lat);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }

    for mut m in members {
        let stats = stats.clone();
        tails.spawn(async move {
            loop {
                let polled = match &mut m {
                    E2eMember::Group(g) => {
                        g.poll(Duration::from_millis(500)).await.map(|rs| rs.into_iter().map(|r| r.record).collect())
                    }
                    E2eMember::Share(s) => {
                        s.poll(Duration::from_millis(500)).await.map(|rs| rs.into_iter().map(|r| r.record).collect())
                    }
                };
                let records: Vec<flotilla_client::Record> = match polled {
                    Ok(r) => r,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let now = Instant::now();
                let now_us = clock.micros(now);
                let lat: Vec<u64> =
                    records.iter().filter_map(sent_micros).map(|sent| now_us.saturating_sub(sent)).collect();
                if !lat.is_empty() {
                    lock(&stats).received(now, &lat);
                }
            }
        });
    }

    let plan = Plan {
        producer: client.producer(
            &a.topic,
            ProducerConfig {
                linger: Duration::from_millis(a.linger_ms),
                idempotent: !a.no_idempotence,
                compression: a.compression,
                acks: a.acks,
                max_in_flight: a.batches_in_flight,
                ..Default::default()
            },
        ),
        value: Bytes::from((0..a.record_size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        pool: a.random_values.then(|| random_pool(64 << 20, a.record_size)),
        sent: Arc::new(AtomicU64::new(0)),
        clock,
        e2e: a.e2e,
        start,
        measure_from,
        send_end: a.duration_secs.map(|s| measure_from + Duration::from_secs(s)),
        budget: a.records.unwrap_or(u64::MAX),
        issued: Arc::new(AtomicU64::new(0)),
        stats: stats.clone(),
        pin: a.ack_gaps_over_ms.map(|_| partitions),
    };
    if output == Output::Text {
        println!("{}", produce_header(&a, partitions));
    }

    let mut before = (a.warmup_secs == 0).then(|| CpuSample::take(&nodes));
    let mut load = tokio::spawn(drive(plan, a.rate, a.producers, a.max_in_flight));
    let mut ticks = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut per_second = vec![];
    let mut last_tick = start;
    let schedule = loop {
        tokio::select! {
            r = &mut load => break r.context("the load task")?,
            _ = tokio::time::sleep_until(measure_from.into()), if before.is_none() => {
                before = Some(CpuSample::take(&nodes));
            }
            t = ticks.tick() => {
                let t = t.into_std();
                let second = (t.saturating_duration_since(start).as_secs_f64()).round() as u64;
                let line = lock(&stats).take_second(
                    second,
                    t.saturating_duration_since(last_tick).as_secs_f64(),
                    t <= measure_from,
                    a.e2e,
                );
                last_tick = t;
                progress(output, &line.text());
                per_second.push(line);
            }
        }
    };
    let before = before.unwrap_or_else(|| CpuSample::take(&nodes));
    let done = Instant::now();
    if a.e2e {
        // Until the consumers have seen every record acknowledged, for at most 10 s.
        let deadline = done + Duration::from_secs(10);
        while Instant::now() < deadline {
            let caught_up = {
                let s = lock(&stats);
                s.e2e_seen >= s.acked_total()
            };
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tails.abort_all();
    }
    let after = CpuSample::take(&nodes);

    let s = lock(&stats);
    let end =
        s.last_ack.unwrap_or(done).max(a.duration_secs.map_or(measure_from, |d| measure_from + Duration::from_secs(d)));
    let elapsed = end.saturating_duration_since(measure_from).as_secs_f64().max(1e-9);
    let bytes = s.measured * a.record_size as u64;
    let (node_cpu, bench_cpu_secs) = cpu_report(&before, &after, s.measured);
    let report = ProduceReport {
        parameters: a.clone(),
        mode: if a.rate.is_some() { "open-loop" } else { "closed-loop" },
        partitions,
        records: s.measured,
        errors: s.measured_errors,
        bytes,
        elapsed_secs: elapsed,
        records_per_sec: s.measured as f64 / elapsed,
        mb_per_sec: bytes as f64 / 1e6 / elapsed,
        latency_ms: Latency::of(&s.ack),
        e2e_latency_ms: a.e2e.then(|| Latency::of(&s.e2e)),
        e2e_records: a.e2e.then(|| s.e2e.len()),
        warmup: WarmupReport { secs: a.warmup_secs, records: s.warmup_acked, errors: s.warmup_errors },
        acknowledged_total: s.acked_total(),
        open_loop: schedule,
        node_cpu,
        bench_cpu_secs,
        per_second,
        ack_gaps: a.ack_gaps_over_ms.map(|_| s.gaps.clone()),
        first_error: s.first_error.clone(),
    };
    drop(s);
    match output {
        Output::Json => print_json(&report)?,
        Output::Text => print!("{}", produce_text(&report)),
    }
    let errors = report.errors + report.warmup.errors;
    if errors > 0 {
        bail!("{errors} records failed; first: {}", report.first_error.as_deref().unwrap_or("?"));
    }
    Ok(())
}

fn produce_header(a: &BenchProduceArgs, partitions: u32) -> String {
    let mode = match a.rate {
        None => format!("closed loop, {} producer{}", a.producers, if a.producers == 1 { "" } else { "s" }),
        Some(r) => format!(
            "open loop at {r} records/s ({} task{}, at most {} in flight)",
            a.producers,
            if a.producers == 1 { "" } else { "s" },
            a.max_in_flight
        ),
    };
    let amount = match (a.records, a.duration_secs) {
        (Some(n), _) => format!("records={n}"),
        (None, Some(s)) => format!("duration={s}s"),
        (None, None) => unreachable!("clap requires one"),
    };
    format!(
        "bench produce: topic={} partitions={partitions}{} {mode} record_size={}B {amount} warm-up={}s linger={}ms compression={} acks={} batches-in-flight={}{}{}",
        a.topic,
        if a.create { format!(" (rf={} if created)", a.replication_factor) } else { String::new() },
        a.record_size,
        a.warmup_secs,
        a.linger_ms,
        a.compression.name(),
        a.acks.name(),
        if a.no_idempotence { 1 } else { a.batches_in_flight.clamp(1, flotilla_types::limits::PRODUCER_IN_FLIGHT_MAX) },
        if a.no_idempotence { " not-idempotent" } else { " idempotent" },
        if a.e2e { " e2e" } else { "" }
    )
}

fn produce_text(r: &ProduceReport) -> String {
    let mut out = format!(
        "{} records acknowledged in {:.2} s after a {} s warm-up: {:.0} records/s, {:.2} MB/s\n",
        r.records, r.elapsed_secs, r.warmup.secs, r.records_per_sec, r.mb_per_sec
    );
    let from = if r.open_loop.is_some() { " (from the intended send time)" } else { "" };
    out.push_str(&format!("ack latency ms{from}: {}\n", r.latency_ms.text()));
    if let (Some(l), Some(n)) = (r.e2e_latency_ms, r.e2e_records) {
        out.push_str(&format!("e2e latency ms ({n} records): {}\n", l.text()));
    }
    if let Some(o) = r.open_loop {
        out.push_str(&format!(
            "sends late by over {} ms: {}; waited for an in-flight slot: {}; latest send {:.1} ms after its time\n",
            o.late_threshold_ms, o.late_sends, o.capped_sends, o.max_send_lag_ms
        ));
    }
    out.push_str(&cpu_text(&r.node_cpu, r.bench_cpu_secs));
    if let (Some(gaps), Some(over)) = (&r.ack_gaps, r.parameters.ack_gaps_over_ms) {
        out.push_str(&format!("acknowledgement gaps over {over} ms: {}\n", gaps.len()));
        for g in gaps {
            out.push_str(&format!(
                "  partition {}: {:.0} ms without an acknowledgement (unix ms {} to {})\n",
                g.partition, g.ms, g.from_unix_ms, g.to_unix_ms
            ));
        }
    }
    if r.errors + r.warmup.errors > 0 {
        out.push_str(&format!("errors: {} ({} in the warm-up)\n", r.errors + r.warmup.errors, r.warmup.errors));
    }
    out
}

// ---------------------------------------------------------------------------------------
// bench consume

/// What the consumers of `bench consume` have read so far.
#[derive(Default)]
struct ConsumeStats {
    records: u64,
    bytes: u64,
    errors: u64,
    second_records: u64,
    second_bytes: u64,
    second_errors: u64,
    last_record: Option<Instant>,
    first_error: Option<String>,
}

impl ConsumeStats {
    /// Counts `records` records of `bytes` value bytes read now.
    fn read(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
        self.second_records += records;
        self.second_bytes += bytes;
        self.last_record = Some(Instant::now());
    }

    /// Counts a failed poll, keeping the first error.
    fn failed(&mut self, e: &ClientError) {
        self.errors += 1;
        self.second_errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// What `bench consume` reports.
#[derive(Serialize)]
struct ConsumeReport {
    parameters: BenchConsumeArgs,
    partitions: Vec<PartitionId>,
    records: u64,
    /// Value bytes of `records`.
    bytes: u64,
    /// Failed polls (retried).
    errors: u64,
    /// From the first poll to the last record read (time idle at the end of the
    /// partitions is not counted).
    elapsed_secs: f64,
    records_per_sec: f64,
    /// Value bytes per second, in 10^6 bytes.
    mb_per_sec: f64,
    /// Why it stopped: `records`, `duration`, `end` (the end seen at start) or `idle`.
    stopped_by: &'static str,
    node_cpu: CpuReport,
    bench_cpu_secs: Option<f64>,
    per_second: Vec<Second>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

async fn consume(client: &Client, a: BenchConsumeArgs, output: Output) -> anyhow::Result<()> {
    let count = client.partition_count(&a.topic).await.map_err(one_line)?;
    let partitions: Vec<PartitionId> = match a.partition {
        Some(p) if p >= count => {
            bail!("topic '{}' has {count} partitions; there is no partition {p} (UNKNOWN_PARTITION)", a.topic)
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    if a.records == Some(0) || a.duration_secs == Some(0) || a.idle_secs == 0 {
        bail!("--records, --duration-secs and --idle-secs must be at least 1");
    }
    let nodes = cluster_nodes(client).await;
    let grouped = a.group.is_some() || a.share_group.is_some();
    if grouped && a.members == 0 {
        bail!("--members must be at least 1");
    }
    if !grouped && a.members != 1 {
        bail!("--members goes with --group or --share-group");
    }
    // With --group or --share-group and no amount: what the partitions hold now.
    let group_end: u64 = match (grouped, a.records, a.duration_secs) {
        (true, None, None) => {
            let mut total = 0;
            for &p in &partitions {
                let (start, end) = client.list_offsets(&a.topic, p).await.map_err(one_line)?;
                total += end - start;
            }
            total
        }
        _ => u64::MAX,
    };
    let mut consumers = vec![];
    for &p in partitions.iter().filter(|_| !grouped) {
        let c = consumer(client, &a.topic, p, StartAt::Beginning).await?;
        // Without --records or --duration-secs: up to the end stored now.
        let end = match (a.records, a.duration_secs) {
            (None, None) => client.list_offsets(&a.topic, p).await.map_err(one_line)?.1,
            _ => u64::MAX,
        };
        consumers.push((c, end));
    }
    if output == Output::Text {
        let amount = match (a.records, a.duration_secs) {
            (Some(n), _) => format!("records={n}"),
            (None, Some(s)) => format!("duration={s}s"),
            (None, None) => "to the end".to_string(),
        };
        let how = match (&a.group, &a.share_group) {
            (Some(g), _) => format!("{} member(s) of group {g}, from its committed offsets", a.members),
            (_, Some(g)) => format!("{} member(s) of share group {g}", a.members),
            _ => "from the beginning".to_string(),
        };
        println!("bench consume: topic={} partitions={} {how}, {amount}", a.topic, partitions.len());
    }

    let stats = Arc::new(Mutex::new(ConsumeStats::default()));
    let before = CpuSample::take(&nodes);
    let start = Instant::now();
    let mut readers = JoinSet::new();
    for (mut c, end) in consumers {
        let stats = stats.clone();
        readers.spawn(async move {
            while c.position() < end {
                match c.poll(Duration::from_millis(500)).await {
                    Ok(mut records) => {
                        records.retain(|r| r.offset < end);
                        if records.is_empty() {
                            continue;
                        }
                        let bytes: u64 = records.iter().map(|r| r.record.value.len() as u64).sum();
                        lock(&stats).read(records.len() as u64, bytes);
                    }
                    Err(e) => {
                        lock(&stats).failed(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(group) = &a.group {
        for _ in 0..a.members {
            let config = flotilla_client::GroupConfig { client_id: "flotilla-bench".into(), ..Default::default() };
            let mut member = client.group_consumer(group, &[a.topic.as_str()], config).await.map_err(one_line)?;
            let (stats, stopping) = (stats.clone(), stopping.clone());
            readers.spawn(async move {
                loop {
                    if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        // Commit and leave, so that the group is free at once.
                        let _ = member.close().await;
                        return;
                    }
                    match member.poll(Duration::from_millis(500)).await {
                        Ok(records) if records.is_empty() => {}
                        Ok(records) => {
                            let bytes: u64 = records.iter().map(|r| r.record.value.len() as u64).sum();
                            lock(&stats).read(records.len() as u64, bytes);
                        }
                        Err(e) => lock(&stats).failed(&e),
                    }
                }
            });
        }
    }
    if let Some(group) = &a.share_group {
        for _ in 0..a.members {
            let config = flotilla_client::ShareGroupConfig {
                client_id: "flotilla-bench".into(),
                group: flotilla_client::ShareConfig {
                    start: flotilla_client::ShareStart::Earliest,
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut member = client.share_consumer(group, &[a.topic.as_str()], config).await.map_err(one_line)?;
            let (stats, stopping) = (stats.clone(), stopping.clone());
            readers.spawn(async move {
                loop {
                    if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        // Accepts what was read and leaves.
                        let _ = member.close().await;
                        return;
                    }
                    match member.poll(Duration::from_millis(500)).await {
                        Ok(records) if records.is_empty() => {}
                        Ok(records) => {
                            let bytes: u64 = records.iter().map(|r| r.record.value.len() as u64).sum();
                            lock(&stats).read(records.len() as u64, bytes);
                        }
                        Err(e) => lock(&stats).failed(&e),
                    }
                }
            });
        }
    }
    let stop_at = a.duration_secs.map(|s| start + Duration::from_secs(s));
    let idle = Duration::from_secs(a.idle_secs);
    let mut ticks = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(Duration::from_millis(10));
    let mut per_second = vec![];
    let mut last_tick = start;
    let stopped_by = loop {
        tokio::select! {
            r = readers.join_next(), if !readers.is_empty() => {
                if let Some(Err(e)) = r && e.is_panic() {
                    bail!("a consumer task panicked: {e}");
                }
                if readers.is_empty() && a.records.is_none() && a.duration_secs.is_none() {
                    break "end";
                }
            }
            t = ticks.tick() => {
                let t = t.into_std();
                let secs = t.saturating_duration_since(last_tick).as_secs_f64().max(1e-9);
                last_tick = t;
                let mut s = lock(&stats);
                let line = Second {
                    second: t.saturating_duration_since(start).as_secs_f64().round() as u64,
                    warmup: false,
                    records_per_sec: s.second_records as f64 / secs,
                    mb_per_sec: Some(s.second_bytes as f64 / 1e6 / secs),
                    p50_ms: None,
                    p99_ms: None,
                    e2e_p99_ms: None,
                    errors: s.second_errors,
                };
                s.second_records = 0;
                s.second_bytes = 0;
                s.second_errors = 0;
                drop(s);
                progress(output, &line.text());
                per_second.push(line);
            }
            _ = check.tick() => {
                let now = Instant::now();
                let s = lock(&stats);
                if a.records.is_some_and(|n| s.records >= n) {
                    break "records";
                }
                if s.records >= group_end {
                    break "end";
                }
                if stop_at.is_some_and(|t| now >= t) {
                    break "duration";
                }
                if now.saturating_duration_since(s.last_record.unwrap_or(start)) >= idle {
                    break "idle";
                }
            }
        }
    };
    let after = CpuSample::take(&nodes);
    if grouped {
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while readers.join_next().await.is_some() {} }).await;
    }
    readers.abort_all();
    let s = lock(&stats);
    // Up to the last record: a consumer that caught up early is not timed while idle.
    let end = s.last_record.unwrap_or(after.at);
    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let (node_cpu, bench_cpu_secs) = cpu_report(&before, &after, s.records);
    let report = ConsumeReport {
        parameters: a.clone(),
        partitions,
        records: s.records,
        bytes: s.bytes,
        errors: s.errors,
        elapsed_secs: elapsed,
        records_per_sec: s.records as f64 / elapsed,
        mb_per_sec: s.bytes as f64 / 1e6 / elapsed,
        stopped_by,
        node_cpu,
        bench_cpu_secs,
        per_second,
        first_error: s.first_error.clone(),
    };
    drop(s);
    match output {
        Output::Json => print_json(&report)?,
        Output::Text => {
            print!(
                "{} records read in {:.2} s: {:.0} records/s, {:.2} MB/s (stopped by {})\n{}",
                report.records,
                report.elapsed_secs,
                report.records_per_sec,
                report.mb_per_sec,
                report.stopped_by,
                cpu_text(&report.node_cpu, report.bench_cpu_secs)
            );
            if report.errors > 0 {
                println!(
                    "failed polls (retried): {}; first: {}",
                    report.errors,
                    report.first_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
    if stopped_by == "idle" {
        match a.records {
            Some(n) => bail!("read {} of {n} records: nothing new for {} s", report.records, a.idle_secs),
            None if a.duration_secs.is_none() => {
                bail!("stopped before the end: nothing new for {} s (partitions without a leader?)", a.idle_secs)
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --random-values: values that do not repeat nearby, so the log does not compress.
    #[test]
    fn random_values_differ_record_to_record() {
        let pool = random_pool(1 << 20, 1024);
        let distinct: std::collections::BTreeSet<&[u8]> = (0..64usize)
            .map(|n| n.wrapping_mul(1_000_003) % (pool.len() - 1024))
            .map(|at| &pool[at..at + 1024])
            .collect();
        assert_eq!(distinct.len(), 64);
        assert!(pool.iter().filter(|b| **b == 0).count() < pool.len() / 100, "not mostly zeros");
    }

    #[test]
    fn bench_commands_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: BenchCmd,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()));
        let bench = ["produce", "--topic", "t", "--create", "--partitions", "3", "--producers", "8"];
        assert!(parse(&[&bench[..], &["--record-size", "1024", "--records", "1000"]].concat()).is_ok());
        assert!(parse(&[&bench[..], &["--random-values", "--records", "1000"]].concat()).is_ok());
        assert!(parse(&[&bench[..], &["--duration-secs", "10"]].concat()).is_ok());
        assert!(parse(&bench).is_err(), "--records or --duration-secs is required");
        let Ok(Cli { cmd: BenchCmd::Produce(a) }) = parse(&[&bench[..], &["--duration-secs", "10"]].concat()) else {
            panic!("bench produce parses")
        };
        assert_eq!((a.rate, a.max_in_flight, a.warmup_secs, a.e2e), (None, 10_000, 2, false));

        let open = ["produce", "--topic", "t", "--rate", "2500.5", "--duration-secs", "3"];
        let Ok(Cli { cmd: BenchCmd::Produce(a) }) =
            parse(&[&open[..], &["--max-in-flight", "50", "--warmup-secs", "0", "--e2e"]].concat())
        else {
            panic!("open-loop bench produce parses")
        };
        assert_eq!((a.rate, a.max_in_flight, a.warmup_secs, a.e2e), (Some(2500.5), 50, 0, true));
        assert!(parse(&["produce", "--topic", "t", "--rate", "0", "--records", "5"]).is_err());
        assert!(parse(&["produce", "--topic", "t", "--rate", "-3", "--records", "5"]).is_err());
        assert!(parse(&["produce", "--topic", "t", "--rate", "x", "--records", "5"]).is_err());
        assert!(
            parse(&["produce", "--topic", "t", "--max-in-flight", "5", "--records", "5"]).is_err(),
            "--max-in-flight needs --rate"
        );

        assert!(parse(&["consume", "--topic", "t"]).is_ok());
        assert!(parse(&["consume", "--topic", "t", "--records", "100"]).is_ok());
        assert!(parse(&["consume", "--topic", "t", "--duration-secs", "5", "--partition", "2"]).is_ok());
        assert!(parse(&["consume", "--topic", "t", "--records", "1", "--duration-secs", "5"]).is_err());
        assert!(parse(&["consume"]).is_err(), "--topic is required");
    }

    #[test]
    fn proc_stat_gives_user_and_system_ticks() {
        // The command name may hold spaces and parentheses.
        let stat = "4242 (flotilla (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 731 269 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_ticks(stat), Some(1000));
        assert_eq!(stat_ticks("1 (short) S 0"), None);
        assert!(process_ticks("self").is_some(), "this process's own stat reads");
        assert!(ticks_per_sec() > 0.0);
    }

    #[test]
    fn node_processes_are_found_by_their_listen_address() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let listen = |s: &str| node_listen(&args(s));
        assert_eq!(listen("/usr/bin/flotilla node --id 1 --listen 127.0.0.1:7070"), Some("127.0.0.1:7070".into()));
        assert_eq!(listen("flotilla node --listen=0.0.0.0:7071 --id 2"), Some("0.0.0.0:7071".into()));
        assert_eq!(listen("flotilla dev --nodes 3"), None, "not a node");
        assert_eq!(listen("flotilla node --config node.toml"), None, "no --listen");
        assert_eq!(listen("other node --listen 127.0.0.1:7070"), None, "not flotilla");
        assert_eq!(listen("flotilla consume demo"), None);

        assert!(serves("127.0.0.1:7070", "127.0.0.1:7070"));
        assert!(serves("0.0.0.0:7070", "10.0.0.5:7070"));
        assert!(serves("[::]:7070", "node-1:7070"));
        assert!(serves("localhost:7070", "127.0.0.1:7070"));
        assert!(!serves("127.0.0.1:7071", "127.0.0.1:7070"));
        assert!(!serves("10.0.0.6:7070", "10.0.0.5:7070"));
        assert!(!serves("0.0.0.0:7070", "10.0.0.5:8080"));

        // The nodes of a cluster elsewhere: none here.
        assert!(find_nodes(&["192.0.2.1:1".to_string()]).is_empty());
    }

    #[test]
    fn cpu_reports_say_when_no_node_was_found() {
        let at = Instant::now();
        let before = CpuSample { nodes: BTreeMap::from([(1, 100), (2, 50)]), own: Some(10), at };
        let after = CpuSample {
            nodes: BTreeMap::from([(1, 300), (2, 150), (3, 999)]),
            own: Some(30),
            at: at + Duration::from_secs(2),
        };
        let (node, own) = cpu_report(&before, &after, 500_000);
        let tick = ticks_per_sec();
        assert_eq!(node.processes, 2, "only processes seen at both ends");
        assert!((node.cpu_secs.unwrap() - 300.0 / tick).abs() < 1e-9);
        assert!((node.cpu_secs_per_million_records.unwrap() - 600.0 / tick).abs() < 1e-9);
        assert!((node.cores.unwrap() - 150.0 / tick).abs() < 1e-9);
        assert!((own.unwrap() - 20.0 / tick).abs() < 1e-9);
        assert!(cpu_text(&node, own).starts_with("node CPU: 2 node processes on this machine: "));

        let none = CpuSample { nodes: BTreeMap::new(), own: None, at };
        let (node, own) = cpu_report(&none, &none, 10);
        assert_eq!((node.processes, node.cpu_secs, own), (0, None, None));
        assert!(cpu_text(&node, own).contains("no node process of this cluster runs on this machine"));
    }

    #[test]
    fn warm_up_records_are_left_out() {
        let t0 = Instant::now();
        let measure_from = t0 + Duration::from_secs(1);
        let mut s = ProduceStats::new(measure_from);
        // Acknowledged in the warm-up: in its second, not in the figures.
        s.answered(t0, t0 + Duration::from_millis(5), Ok::<_, ClientError>(()));
        s.answered(t0, t0 + Duration::from_millis(7), Err::<(), _>(ClientError::Closed));
        // Sent in the warm-up, acknowledged after it: measured.
        s.answered(t0 + Duration::from_millis(990), measure_from + Duration::from_millis(10), Ok::<_, ClientError>(()));
        s.answered(measure_from, measure_from + Duration::from_millis(2), Ok::<_, ClientError>(()));
        s.received(measure_from + Duration::from_millis(3), &[3_000, 4_000]);
        s.received(t0, &[1]);
        assert_eq!((s.measured, s.warmup_acked, s.warmup_errors, s.acked_total(), s.e2e_seen), (2, 1, 1, 3, 3));
        let l = Latency::of(&s.ack);
        assert!(l.p50 <= l.p99 && l.p99 <= l.max && (l.max - 20.0).abs() < 0.1, "{l:?}");
        assert_eq!(s.e2e.len(), 2);
        let second = s.take_second(1, 1.0, true, true);
        assert_eq!((second.records_per_sec, second.errors, second.warmup), (3.0, 1, true));
        assert!(second.text().ends_with("errors 1  (warm-up)"), "{}", second.text());
        assert_eq!(s.take_second(2, 1.0, false, true).p50_ms, None, "a fresh second");

        let clock = Clock::new();
        let r = Record::value("v");
        assert_eq!(sent_micros(&r), None);
        let mut r = r;
        r.headers.push((SENT_HEADER.into(), Bytes::from(clock.micros(clock.base).to_string())));
        assert_eq!(sent_micros(&r), Some(clock.base_us));
    }
}
