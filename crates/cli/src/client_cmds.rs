//! The client-side commands: `topic`, `produce`, `consume`, `cluster` and `bench`. They
//! use the `flotilla-client` library only, as an application would.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use flotilla_client::{
    Client, ClientError, ClusterInfo, ErrorCode, PartitionId, ProducerConfig, Record, StartAt, TopicInfo,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

/// How results are printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// For people: aligned tables and sentences.
    Text,
    /// For programs: JSON (one object per record for `consume`).
    Json,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Write one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records, one value per line.
    Consume(ConsumeArgs),
    /// Show the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Measure the cluster under a bounded load.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create(TopicCreateArgs),
    /// List every topic.
    List,
    /// Show a topic's partitions, leaders and replicas.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// The topic.
        name: String,
    },
}

#[derive(Args)]
pub struct TopicCreateArgs {
    /// The topic's name: letters, digits, '.', '_' and '-'.
    pub name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// The topic to write to.
    pub topic: String,
    /// Split each line into key and value at the first occurrence of this string.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Write every record to this partition (default: by key, round-robin without one).
    #[arg(long)]
    pub partition: Option<PartitionId>,
    /// Records in flight (sent, not yet acknowledged) at most.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
}

#[derive(Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Read this partition only (default: all of them).
    #[arg(long)]
    pub partition: Option<PartitionId>,
    /// Start at the earliest stored record (default: the end, new records only).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long)]
    pub offset: Option<u64>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Keep waiting for new records (default: stop at the end seen at start).
    #[arg(long)]
    pub follow: bool,
    /// Print each record's key before its value, tab-separated.
    #[arg(long)]
    pub print_key: bool,
    /// Print each record's partition:offset before it, tab-separated.
    #[arg(long)]
    pub print_offset: bool,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes with their labels and state, the metadata leader, every partition's leader
    /// and replicas.
    Describe,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Produce with N concurrent producers, each sending one record at a time; report
    /// throughput and acknowledgement latency.
    Produce(BenchProduceArgs),
}

#[derive(Args, Clone, Serialize)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["records", "duration_secs"])))]
pub struct BenchProduceArgs {
    /// The topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Create the topic first when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Partitions of the topic, when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replication factor of the topic, when it is created.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Concurrent producers; each waits for one record's acknowledgement before sending
    /// the next, so this is the number of records in flight.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records to send in all.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds to send for.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Producer linger, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
}

/// Runs one client command against the cluster at `bootstrap`.
pub async fn run(cmd: ClientCommand, bootstrap: &str, output: Output) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap).await.map_err(one_line)?;
    match cmd {
        ClientCommand::Topic(c) => topic(&client, c, output).await,
        ClientCommand::Produce(a) => produce(&client, a, output).await,
        ClientCommand::Consume(a) => consume(&client, a, output).await,
        ClientCommand::Cluster(ClusterCmd::Describe) => {
            let info = client.describe_cluster().await.map_err(one_line)?;
            match output {
                Output::Json => print_json(&info),
                Output::Text => {
                    print!("{}", cluster_text(&info));
                    Ok(())
                }
            }
        }
        ClientCommand::Bench(BenchCmd::Produce(a)) => bench_produce(&client, a, output).await,
    }
}

/// A client error as one line; `main` prints it after "error: ".
fn one_line(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn partition_rows(t: &TopicInfo, with_topic: bool) -> Vec<Vec<String>> {
    t.partitions
        .iter()
        .map(|p| {
            let mut row = vec![];
            if with_topic {
                row.push(t.name.clone());
            }
            row.extend([
                p.partition.to_string(),
                p.group_id.to_string(),
                opt(p.leader),
                join_ids(&p.replicas),
                opt(p.high_watermark),
            ]);
            row
        })
        .collect()
}

fn topic_text(t: &TopicInfo) -> String {
    format!(
        "topic '{}': {} partitions, replication factor {}\n{}",
        t.name,
        t.partitions.len(),
        t.replication_factor,
        table(&["PARTITION", "GROUP", "LEADER", "REPLICAS", "HIGH WATERMARK"], &partition_rows(t, false))
    )
}

fn cluster_text(c: &ClusterInfo) -> String {
    let brokers: Vec<Vec<String>> = c
        .brokers
        .iter()
        .map(|b| {
            let role = if Some(b.id) == c.metadata_leader { "metadata leader" } else { "" };
            vec![
                b.id.to_string(),
                b.addr.clone(),
                dash(&b.region),
                dash(&b.zone),
                dash(&b.rack),
                dash(&b.state),
                role.to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "{} nodes; metadata leader: {}; answered by: {}\n",
        c.brokers.len(),
        opt(c.metadata_leader),
        opt(c.answered_by)
    );
    out.push_str(&table(&["NODE", "ADDRESS", "REGION", "ZONE", "RACK", "STATE", "ROLE"], &brokers));
    let partitions: Vec<Vec<String>> = c.topics.iter().flat_map(|t| partition_rows(t, true)).collect();
    out.push('\n');
    if partitions.is_empty() {
        out.push_str("no topics\n");
    } else {
        out.push_str(&table(&["TOPIC", "PARTITION", "GROUP", "LEADER", "REPLICAS", "HIGH WATERMARK"], &partitions));
    }
    out
}

async fn topic(client: &Client, cmd: TopicCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        TopicCmd::Create(a) => {
            let t = client.create_topic(&a.name, a.partitions, a.replication_factor).await.map_err(one_line)?;
            match output {
                Output::Json => print_json(&t),
                Output::Text => {
                    println!(
                        "created topic '{}' with {} partitions, replication factor {}",
                        a.name, a.partitions, a.replication_factor
                    );
                    Ok(())
                }
            }
        }
        TopicCmd::List => {
            let topics = client.list_topics().await.map_err(one_line)?;
            match output {
                Output::Json => print_json(&topics),
                Output::Text => {
                    let rows: Vec<Vec<String>> = topics
                        .iter()
                        .map(|t| vec![t.name.clone(), t.partitions.to_string(), t.replication_factor.to_string()])
                        .collect();
                    if rows.is_empty() {
                        println!("no topics");
                    } else {
                        print!("{}", table(&["TOPIC", "PARTITIONS", "REPLICATION FACTOR"], &rows));
                    }
                    Ok(())
                }
            }
        }
        TopicCmd::Describe { name } => {
            let t = client.describe_topic(&name).await.map_err(one_line)?;
            match output {
                Output::Json => print_json(&t),
                Output::Text => {
                    print!("{}", topic_text(&t));
                    Ok(())
                }
            }
        }
        TopicCmd::Delete { name } => {
            client.delete_topic(&name).await.map_err(one_line)?;
            match output {
                Output::Json => print_json(&serde_json::json!({ "deleted": name })),
                Output::Text => {
                    println!("deleted topic '{name}'");
                    Ok(())
                }
            }
        }
    }
}

/// Splits a line into key and value at the first `sep`.
fn split_line(line: &[u8], sep: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = sep.filter(|s| !s.is_empty())
        && let Some(i) = line.windows(sep.len()).position(|w| w == sep)
    {
        return (Some(Bytes::copy_from_slice(&line[..i])), Bytes::copy_from_slice(&line[i + sep.len()..]));
    }
    (None, Bytes::copy_from_slice(line))
}

/// Standard input's lines, without their line ending, read on a thread of their own.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Counts of acknowledged and failed records, and why they failed.
#[derive(Default)]
struct Tally {
    acked: u64,
    failed: u64,
    maybe_written: u64,
    reasons: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, r: Result<(PartitionId, u64), ClientError>) {
        match r {
            Ok(_) => self.acked += 1,
            Err(e) => {
                self.failed += 1;
                if e.is_indeterminate() {
                    self.maybe_written += 1;
                }
                if self.reasons.len() < 16 || self.reasons.contains_key(&e.to_string()) {
                    *self.reasons.entry(e.to_string()).or_default() += 1;
                }
            }
        }
    }
}

async fn produce(client: &Client, a: ProduceArgs, output: Output) -> anyhow::Result<()> {
    // Fail early, with the clear message, when the topic or partition does not exist.
    let partitions = client.partition_count(&a.topic).await.map_err(one_line)?;
    if let Some(p) = a.partition
        && p >= partitions
    {
        bail!("topic '{}' has {partitions} partitions; there is no partition {p} (UNKNOWN_PARTITION)", a.topic);
    }
    let producer = client.producer(&a.topic, ProducerConfig::default());
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let mut lines = stdin_lines();
    let mut in_flight = JoinSet::new();
    let mut tally = Tally::default();
    let mut refused = None;
    while let Some(line) = lines.recv().await {
        let line = line.context("reading standard input")?;
        let (key, value) = split_line(&line, sep);
        let record = Record { key, value, ..Record::default() };
        // Queued in input order, so records of one partition keep it.
        let queued = match a.partition {
            Some(p) => producer.enqueue_to(p, record).await,
            None => producer.enqueue(record).await,
        };
        match queued {
            Ok(ack) => {
                in_flight.spawn(ack);
            }
            Err(e) => {
                tally.add(Err(e.clone()));
                if e.code() == Some(ErrorCode::UnknownTopic) {
                    refused = Some(e);
                    break;
                }
            }
        }
        while in_flight.len() >= a.max_in_flight.max(1) {
            if let Some(r) = in_flight.join_next().await {
                tally.add(r.context("producer task")?);
            }
        }
    }
    while let Some(r) = in_flight.join_next().await {
        tally.add(r.context("producer task")?);
    }
    if let Some(e) = refused {
        return Err(one_line(e));
    }
    match output {
        Output::Json => print_json(&serde_json::json!({
            "acknowledged": tally.acked,
            "failed": tally.failed,
            "maybe_written": tally.maybe_written,
            "errors": tally.reasons,
        }))?,
        Output::Text => eprintln!("{} record{} acknowledged", tally.acked, if tally.acked == 1 { "" } else { "s" }),
    }
    if tally.failed > 0 {
        let (reason, _) = tally.reasons.iter().max_by_key(|(_, n)| **n).expect("a reason per failure");
        let maybe = if tally.maybe_written > 0 {
            format!(" ({} of them may have been written nonetheless)", tally.maybe_written)
        } else {
            String::new()
        };
        bail!("{} records failed{maybe}; most often: {reason}", tally.failed);
    }
    Ok(())
}

/// One consumed record as `--output json` prints it.
#[derive(Serialize)]
struct JsonRecord<'a> {
    partition: PartitionId,
    offset: u64,
    timestamp_ms: u64,
    key: Option<std::borrow::Cow<'a, str>>,
    value: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
}

async fn consume(client: &Client, a: ConsumeArgs, output: Output) -> anyhow::Result<()> {
    let count = client.partition_count(&a.topic).await.map_err(one_line)?;
    let partitions: Vec<PartitionId> = match a.partition {
        Some(p) if p >= count => {
            bail!("topic '{}' has {count} partitions; there is no partition {p} (UNKNOWN_PARTITION)", a.topic)
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let start = match (a.from_beginning, a.offset) {
        (true, _) => StartAt::Beginning,
        (false, Some(o)) => StartAt::Offset(o),
        (false, None) => StartAt::End,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<flotilla_client::ConsumedRecord>>>(64);
    let mut readers = JoinSet::new();
    for p in partitions {
        let client = client.clone();
        let topic = a.topic.clone();
        let tx = tx.clone();
        let follow = a.follow;
        readers.spawn(async move {
            let result: anyhow::Result<()> = async {
                // The end is the high watermark seen now, before the first read.
                let end = if follow { u64::MAX } else { client.list_offsets(&topic, p).await.map_err(one_line)?.1 };
                let mut consumer = client.consumer(&topic, p, start).await.map_err(one_line)?;
                while consumer.position() < end {
                    let wait = if follow { Duration::from_secs(5) } else { Duration::from_millis(500) };
                    let mut records = consumer.poll(wait).await.map_err(one_line)?;
                    records.retain(|r| r.offset < end);
                    if !records.is_empty() && tx.send(Ok(records)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
    }
    drop(tx);
    let max = a.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failure = None;
    'outer: while printed < max {
        let Some(batch) = rx.recv().await else { break };
        let records = match batch {
            Ok(r) => r,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        for r in records {
            let written = match output {
                Output::Json => {
                    let j = JsonRecord {
                        partition: r.partition,
                        offset: r.offset,
                        timestamp_ms: r.record.timestamp_ms,
                        key: r.record.key.as_deref().map(String::from_utf8_lossy),
                        value: String::from_utf8_lossy(&r.record.value),
                        headers: r
                            .record
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v)))
                            .collect(),
                    };
                    serde_json::to_writer(&mut out, &j).map_err(std::io::Error::from).and_then(|_| writeln!(out))
                }
                Output::Text => {
                    let mut line = Vec::with_capacity(r.record.value.len() + 32);
                    if a.print_offset {
                        line.extend_from_slice(format!("{}:{}\t", r.partition, r.offset).as_bytes());
                    }
                    if a.print_key {
                        line.extend_from_slice(r.record.key.as_deref().unwrap_or_default());
                        line.push(b'\t');
                    }
                    line.extend_from_slice(String::from_utf8_lossy(&r.record.value).as_bytes());
                    line.push(b'\n');
                    out.write_all(&line)
                }
            };
            if let Err(e) = written {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    break 'outer;
                }
                return Err(e).context("writing standard output");
            }
            printed += 1;
            if printed >= max {
                break 'outer;
            }
        }
        if rx.is_empty() {
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                r => r.context("writing standard output")?,
            }
        }
    }
    readers.abort_all();
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e).context("writing standard output"),
        _ => {}
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What `bench produce` reports.
#[derive(Serialize)]
struct BenchReport {
    parameters: BenchProduceArgs,
    records: u64,
    errors: u64,
    bytes: u64,
    elapsed_secs: f64,
    records_per_sec: f64,
    /// Value bytes per second, in 10^6 bytes.
    mb_per_sec: f64,
    latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

async fn bench_produce(client: &Client, a: BenchProduceArgs, output: Output) -> anyhow::Result<()> {
    if a.producers == 0 {
        bail!("--producers must be at least 1");
    }
    if a.create {
        match client.create_topic(&a.topic, a.partitions, a.replication_factor).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
            Err(e) => return Err(one_line(e)),
        }
    }
    // Fails with a clear message when the topic does not exist.
    client.partition_count(&a.topic).await.map_err(one_line)?;
    let producer =
        client.producer(&a.topic, ProducerConfig { linger: Duration::from_millis(a.linger_ms), ..Default::default() });
    let value = Bytes::from((0..a.record_size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let budget = a.records.unwrap_or(u64::MAX);
    let stop_at = a.duration_secs.map(|s| Instant::now() + Duration::from_secs(s));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..a.producers {
        let producer = producer.clone();
        let value = value.clone();
        let issued = issued.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                if stop_at.is_some_and(|t| Instant::now() >= t) || issued.fetch_add(1, Ordering::Relaxed) >= budget {
                    break;
                }
                let t0 = Instant::now();
                match producer.send(Record::value(value.clone())).await {
                    Ok(_) => {
                        hist.saturating_record(t0.elapsed().as_micros() as u64);
                        ok += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (hist, ok, errors, first_error)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let (mut records, mut errors, mut first_error) = (0u64, 0u64, None);
    while let Some(r) = tasks.join_next().await {
        let (h, ok, err, first) = r.context("producer task")?;
        hist.add(&h).context("merging latency histograms")?;
        records += ok;
        errors += err;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = records * a.record_size as u64;
    let ms = |us: u64| us as f64 / 1000.0;
    let report = BenchReport {
        parameters: a.clone(),
        records,
        errors,
        bytes,
        elapsed_secs: elapsed,
        records_per_sec: records as f64 / elapsed,
        mb_per_sec: bytes as f64 / 1e6 / elapsed,
        latency_ms: Latency {
            p50: ms(hist.value_at_quantile(0.5)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        },
        first_error,
    };
    match output {
        Output::Json => print_json(&report)?,
        Output::Text => {
            let amount = match (a.records, a.duration_secs) {
                (Some(n), _) => format!("records={n}"),
                (None, Some(s)) => format!("duration={s}s"),
                (None, None) => unreachable!("clap requires one"),
            };
            println!(
                "bench produce: topic={} producers={} record_size={}B {amount} linger={}ms acks=all{}",
                a.topic,
                a.producers,
                a.record_size,
                a.linger_ms,
                if a.create {
                    format!(" (created with partitions={} rf={})", a.partitions, a.replication_factor)
                } else {
                    String::new()
                }
            );
            println!(
                "{} records acknowledged in {:.2} s: {:.0} records/s, {:.2} MB/s",
                report.records, report.elapsed_secs, report.records_per_sec, report.mb_per_sec
            );
            println!(
                "ack latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
                report.latency_ms.p50, report.latency_ms.p99, report.latency_ms.p999, report.latency_ms.max
            );
            if errors > 0 {
                println!("errors: {errors}");
            }
        }
    }
    if errors > 0 {
        bail!("{errors} records failed; first: {}", report.first_error.as_deref().unwrap_or("?"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(split_line(b"k:v:w", Some(b":")), (Some(Bytes::from("k")), Bytes::from("v:w")));
        assert_eq!(split_line(b"no sep", Some(b":")), (None, Bytes::from("no sep")));
        assert_eq!(split_line(b"k::v", Some(b"::")), (Some(Bytes::from("k")), Bytes::from("v")));
        assert_eq!(split_line(b"a:b", None), (None, Bytes::from("a:b")));
        assert_eq!(split_line(b":v", Some(b":")), (Some(Bytes::new()), Bytes::from("v")));
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn commands_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: ClientCommand,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied()));
        assert!(parse(&["topic", "create", "t", "--partitions", "3", "--replication-factor", "3"]).is_ok());
        assert!(parse(&["topic", "list"]).is_ok());
        assert!(parse(&["topic", "describe", "t"]).is_ok());
        assert!(parse(&["topic", "delete", "t"]).is_ok());
        assert!(parse(&["produce", "t", "--key-separator", ":", "--partition", "0"]).is_ok());
        assert!(parse(&["consume", "t", "--from-beginning", "--max", "5", "--print-key", "--print-offset"]).is_ok());
        assert!(parse(&["consume", "t", "--from-beginning", "--offset", "3"]).is_err());
        assert!(parse(&["consume", "t", "--partition", "1", "--offset", "3", "--follow"]).is_ok());
        assert!(parse(&["cluster", "describe"]).is_ok());
        let bench = ["bench", "produce", "--topic", "t", "--create", "--partitions", "3", "--producers", "8"];
        assert!(parse(&[&bench[..], &["--record-size", "1024", "--records", "1000"]].concat()).is_ok());
        assert!(parse(&[&bench[..], &["--duration-secs", "10"]].concat()).is_ok());
        assert!(parse(&bench).is_err(), "--records or --duration-secs is required");
    }
}
