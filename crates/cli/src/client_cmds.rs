//! The client-side commands: `topic`, `produce`, `consume`, `cluster` and `bench` (whose
//! code is in `bench.rs`). They use the `flotilla-client` library only, as an
//! application would.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use flotilla_client::{
    Client, ClientConfig, ClientError, ClusterInfo, ControllersInfo, ErrorCode, Labels, MoveInfo, NodeId, PartitionId,
    PlanInfo, PlanScenario, ProducerConfig, Record, StartAt, TopicInfo, TopicPolicy,
};
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
    /// Show and operate the cluster: nodes, partition moves, plans, controllers.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Consumer groups: list, describe (members, offsets, lag), delete, reset offsets.
    #[command(subcommand)]
    Group(crate::group_cmds::GroupCmd),
    /// Measure the cluster under a bounded load.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// The cluster's users: create (or change a password), delete, list.
    #[command(subcommand)]
    User(crate::security_cmds::UserCmd),
    /// The cluster's ACL entries: add, remove, list (docs/security.md).
    #[command(subcommand)]
    Acl(crate::security_cmds::AclCmd),
    /// Quotas set for the whole cluster: set, delete, list (docs/security.md).
    #[command(subcommand)]
    Quota(crate::security_cmds::QuotaCmd),
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
    /// Change a topic's replication factor, placement policy or retention; the cluster
    /// then moves the replicas that break it. Only the keys given change (and those
    /// named by --reset go back to their defaults); the others stay as they are.
    Config(TopicConfigArgs),
    /// Delete a partition's records below an offset (Kafka's DeleteRecords): its log
    /// start moves there on every replica, and the disk space is given back.
    DeleteRecords {
        /// The topic.
        name: String,
        /// The partition.
        #[arg(long)]
        partition: u32,
        /// Records below this offset are deleted (at most the high watermark).
        #[arg(long)]
        before: u64,
    },
    /// Add partitions to a topic (`--num N` adds N, as rpk does; `--total T` grows it
    /// to T). Partitions are never removed.
    #[command(group(clap::ArgGroup::new("count").args(["num", "total"]).required(true)))]
    AddPartitions {
        /// The topic.
        name: String,
        /// How many partitions to add.
        #[arg(long, short = 'n')]
        num: Option<u32>,
        /// The partition count afterwards.
        #[arg(long)]
        total: Option<u32>,
    },
}

#[derive(Args)]
pub struct TopicCreateArgs {
    /// The topic's name: letters, digits, '.', '_' and '-'.
    pub name: String,
    /// Number of partitions.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub replication_factor: u32,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Args)]
pub struct TopicConfigArgs {
    /// The topic.
    pub name: String,
    /// Replicas per partition (default: unchanged).
    #[arg(long, short = 'r')]
    pub replication_factor: Option<u32>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Put these policy keys back to their defaults (repeatable): allowed-regions,
    /// preferred-leader-region, exclude-nodes, exclude-zones, retention-ms,
    /// retention-bytes.
    #[arg(long, value_name = "KEY", value_delimiter = ',')]
    pub reset: Vec<String>,
}

/// Where a topic's replicas may go and where its leaders should be.
#[derive(Args, Clone, Default)]
pub struct PolicyArgs {
    /// Replicas only in these regions (default: any).
    #[arg(long, value_delimiter = ',', value_name = "REGION,...")]
    pub allowed_regions: Vec<String>,
    /// Preferred leaders in this region while it has a healthy replica.
    #[arg(long, value_name = "REGION")]
    pub preferred_leader_region: Option<String>,
    /// Never place a replica on these nodes.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub exclude_nodes: Vec<NodeId>,
    /// Never place a replica in these zones.
    #[arg(long, value_delimiter = ',', value_name = "ZONE,...")]
    pub exclude_zones: Vec<String>,
    /// Delete records older than this many ms (default: the nodes' `retention-ms`; 0:
    /// keep forever).
    #[arg(long, value_name = "MS")]
    pub retention_ms: Option<u64>,
    /// Keep at most this many bytes of records per partition (default: the nodes'
    /// `retention-bytes`; 0: no limit).
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
}

impl PolicyArgs {
    fn policy(&self) -> TopicPolicy {
        TopicPolicy {
            allowed_regions: self.allowed_regions.clone(),
            preferred_leader_region: self.preferred_leader_region.clone(),
            excluded_nodes: self.exclude_nodes.clone(),
            excluded_zones: self.exclude_zones.clone(),
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
        }
    }

    fn is_empty(&self) -> bool {
        self.policy() == TopicPolicy::default()
    }
}

/// How `produce` reads its input, for its `--help`.
const PRODUCE_HELP: &str = "\
Examples:
  echo hello | flotilla produce demo
  flotilla produce demo -K :                    lines key:value
  flotilla produce demo -H source=web -H v=2    headers on every record
  flotilla produce demo --format '%k\\t%h\\t%s'  key, headers and value per line
  flotilla produce demo --compression zstd --linger-ms 5

Each line of standard input is one record. --format takes the fields of consume's
--format, parsed instead of printed: %s value (required), %k key, %h headers
(name=value,name=value; empty for none), %T timestamp (ms since the epoch), %p
partition; \\t, \\n, \\r and \\\\ are escapes, %% a percent sign. Fields are separated by
text (each field ends at the first occurrence of the text that follows it; the last
field takes the rest of the line). A line that does not match is reported and counted as
failed; the other lines are still sent.";

#[derive(Args)]
#[command(after_help = PRODUCE_HELP)]
pub struct ProduceArgs {
    /// The topic to write to.
    pub topic: String,
    /// Split each line into key and value at the first occurrence of this string
    /// (kcat's -K).
    #[arg(long, short = 'K', conflicts_with = "format")]
    pub key_separator: Option<String>,
    /// Parse each line with this kcat-style format, e.g. '%k\t%h\t%s' (see below).
    #[arg(long, short = 'F')]
    pub format: Option<String>,
    /// Write every record to this partition (default: by key, the sticky partitioner
    /// without one).
    #[arg(long, short = 'p')]
    pub partition: Option<PartitionId>,
    /// Records in flight (sent, not yet acknowledged) at most.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// A header on every record, NAME=VALUE (repeatable), like kcat's -H.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// How long a batch waits for more records before it is sent, milliseconds
    /// (Kafka's linger.ms).
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Produce as the named idempotent producer: a new `produce` with the same name fences
    /// this one (Kafka's transactional.id, for fencing only).
    #[arg(long)]
    pub producer_name: Option<String>,
    /// Compress batches: none, lz4 or zstd (Kafka's compression.type).
    #[arg(long, default_value = "none", value_parser = flotilla_client::Compression::parse)]
    pub compression: flotilla_client::Compression,
    /// Send without idempotence: a retry after a lost answer may then write a record
    /// twice (Kafka's enable.idempotence=false).
    #[arg(long, conflicts_with = "producer_name")]
    pub no_idempotence: bool,
    /// When a record counts as written: all (a quorum has it durably; the default) or
    /// leader (the leader has it durably: faster, lost if the leader is lost before a
    /// quorum has it). Kafka's acks (-1 and 1 are accepted too).
    #[arg(long, default_value = "all", value_parser = flotilla_client::Acks::parse)]
    pub acks: flotilla_client::Acks,
    /// Batches per partition in flight at most, 1 to 5 (Kafka's
    /// max.in.flight.requests.per.connection); order is kept across retries. Default 1.
    #[arg(long, default_value_t = 1)]
    pub batches_in_flight: usize,
}

/// One line of `produce` input, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
struct InputRecord {
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: Option<u64>,
    partition: Option<PartitionId>,
}

/// Parses a `produce --format` string: fields %s (once, required), %k, %h, %T, %p, each
/// at most once, separated by text.
fn parse_input_format(f: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = parse_format(f)?;
    // A line arrives without its line ending.
    if let Some(Piece::Text(t)) = pieces.last_mut() {
        while t.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            t.pop();
        }
        if t.is_empty() {
            pieces.pop();
        }
    }
    let mut seen = vec![];
    for (i, p) in pieces.iter().enumerate() {
        if let Piece::Field(c) = p {
            if !matches!(c, 's' | 'k' | 'h' | 'T' | 'p') {
                bail!("--format: %{c} cannot be read from input (produce reads %s, %k, %h, %T and %p)");
            }
            if seen.contains(c) {
                bail!("--format: %{c} appears twice");
            }
            seen.push(*c);
            if let Some(Piece::Field(next)) = pieces.get(i + 1) {
                bail!("--format: %{c} and %{next} need text between them to tell where one ends");
            }
        }
    }
    if !seen.contains(&'s') {
        bail!("--format: no %s (the value)");
    }
    Ok(pieces)
}

/// Reads one line as `pieces` say.
fn parse_input(pieces: &[Piece], line: &[u8]) -> Result<InputRecord, String> {
    let mut r = InputRecord::default();
    let mut rest = line;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(t) => {
                rest = rest.strip_prefix(t.as_slice()).ok_or_else(|| {
                    format!("expected {:?} at byte {}", String::from_utf8_lossy(t), line.len() - rest.len())
                })?;
            }
            Piece::Field(f) => {
                let field = match pieces.get(i + 1) {
                    Some(Piece::Text(t)) => {
                        let at = rest
                            .windows(t.len())
                            .position(|w| w == t.as_slice())
                            .ok_or_else(|| format!("no {:?} after the %{f} field", String::from_utf8_lossy(t)))?;
                        let (field, after) = rest.split_at(at);
                        rest = after;
                        field
                    }
                    _ => std::mem::take(&mut rest),
                };
                let text = || std::str::from_utf8(field).map_err(|_| format!("%{f} is not UTF-8"));
                match f {
                    's' => r.value = Bytes::copy_from_slice(field),
                    'k' => r.key = Some(Bytes::copy_from_slice(field)),
                    'T' => {
                        r.timestamp_ms = Some(
                            text()?
                                .parse()
                                .map_err(|_| format!("%T {:?} is not a number of ms", text().unwrap_or("")))?,
                        )
                    }
                    'p' => {
                        r.partition = Some(
                            text()?
                                .parse()
                                .map_err(|_| format!("%p {:?} is not a partition number", text().unwrap_or("")))?,
                        )
                    }
                    'h' => {
                        for h in text()?.split(',').filter(|h| !h.is_empty()) {
                            let (name, value) = parse_header(h)?;
                            r.headers.push((name, Bytes::from(value.into_bytes())));
                        }
                    }
                    _ => unreachable!("checked by parse_input_format"),
                }
            }
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes left after the format's end", rest.len()));
    }
    Ok(r)
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// How `consume` prints records and where it starts, for its `--help`.
const CONSUME_HELP: &str = "\
Examples:
  flotilla consume demo                    every record stored, then exit
  flotilla consume demo -f                 ... and keep waiting for new ones
  flotilla consume demo -o end -f          new records only
  flotilla consume demo -p 0 -o -10        the last 10 records of partition 0
  flotilla consume demo -o @1700000000000  from the first record stamped at or after then
  flotilla consume demo -n 5 --format '%p %o %k %s %h\\n'

--format takes kcat's format string: %s value, %k key, %t topic, %p partition,
%o offset, %T timestamp (ms since the epoch), %h headers (name=value,...),
%K key length, %S value length, %% a percent sign; \\n, \\t, \\r and \\\\ are
escapes. Without it each record prints as its value and a newline.

-o @TIMESTAMP is done by the client: the server keeps no time index, so each
partition is read from its beginning and printing starts at the first record whose
timestamp is at or after TIMESTAMP (later records print whatever their timestamp).";

#[derive(Args)]
#[command(after_help = CONSUME_HELP)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Read this partition only (default: all of them).
    #[arg(long, short = 'p')]
    pub partition: Option<PartitionId>,
    /// Where to start in each partition: beginning (the default), end (new records
    /// only), N (offset N), -N (N records before the end), @TIMESTAMP (the first record
    /// stamped at or after it, in milliseconds since the epoch, found with the
    /// partition's time index), @-AGO (that long ago: @-90s, @-15m, @-1h, @-2d).
    #[arg(long, short = 'o', value_name = "beginning|end|N|-N|@TS|@-AGO", allow_hyphen_values = true, value_parser = parse_start)]
    pub offset: Option<StartSpec>,
    /// The same as `-o beginning`, the default.
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long, short = 'n', value_name = "N")]
    pub max: Option<u64>,
    /// Keep waiting for new records (default: stop at the end seen at start).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print each record by this format string (kcat's; see below).
    #[arg(long, value_name = "FORMAT", conflicts_with_all = ["print_key", "print_offset"])]
    pub format: Option<String>,
    /// Print each record's key before its value, tab-separated.
    #[arg(long)]
    pub print_key: bool,
    /// Print each record's partition:offset before it, tab-separated.
    #[arg(long)]
    pub print_offset: bool,
    /// The zone this consumer runs in: read from a replica in that zone when there is
    /// one (follower fetching), else from the leader.
    #[arg(long)]
    pub zone: Option<String>,
    /// Read as a member of this consumer group: its coordinator assigns the partitions,
    /// each starts at the group's committed offset (where there is none: the beginning,
    /// or with `-o end` the end), and what was printed is committed (every 5 s and on
    /// exit). Without `-f`, stops once no record came for 3 s.
    #[arg(long, short = 'G', conflicts_with = "partition")]
    pub group: Option<String>,
    /// Read as a member of this share group (a queue): records go to any member and each
    /// printed record is accepted. A group created here starts partitions it never read
    /// at the end, or with `-o beginning` at the beginning; a later member reads on from
    /// the group's position. Without `-f`, stops once no record came for 3 s.
    #[arg(long, conflicts_with_all = ["partition", "group"])]
    pub share_group: Option<String>,
    /// With --share-group, when it creates the group: deliveries before a record goes to
    /// the dead-letter topic (default 5).
    #[arg(long, requires = "share_group")]
    pub max_deliveries: Option<u32>,
    /// With --share-group, when it creates the group: how long a member holds a record
    /// before it is given to another (default 30000).
    #[arg(long, requires = "share_group")]
    pub lock_timeout_ms: Option<u32>,
    /// With --share-group, when it creates the group: at most one record of a key in
    /// flight in the group at a time, in offset order.
    #[arg(long, requires = "share_group")]
    pub key_ordered: bool,
}

/// Where `consume` starts in each partition (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartSpec {
    Beginning,
    End,
    /// This offset.
    Offset(u64),
    /// This many records before the end.
    FromEnd(u64),
    /// The first record stamped at or after this (milliseconds since the epoch).
    Timestamp(u64),
    /// The first record stamped at or after this many milliseconds ago.
    Ago(u64),
}

/// `90s`, `15m`, `1h`, `2d`, `500ms` (or plain milliseconds) as milliseconds.
fn parse_ago(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

fn parse_start(s: &str) -> Result<StartSpec, String> {
    let number =
        |n: &str| n.parse::<u64>().map_err(|_| format!("{s:?}: expected beginning, end, N, -N, @TIMESTAMP or @-AGO"));
    match s {
        "beginning" | "earliest" => Ok(StartSpec::Beginning),
        "end" | "latest" => Ok(StartSpec::End),
        _ => match (s.strip_prefix('-'), s.strip_prefix('@')) {
            (Some(n), _) => number(n).map(StartSpec::FromEnd),
            (_, Some(ago)) if ago.starts_with('-') => parse_ago(&ago[1..])
                .map(StartSpec::Ago)
                .ok_or_else(|| format!("{s:?}: expected @-AGO such as @-90s, @-15m, @-1h or @-2d")),
            (_, Some(ts)) => number(ts).map(StartSpec::Timestamp),
            _ => number(s).map(StartSpec::Offset),
        },
    }
}

/// One piece of a `--format` string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(Vec<u8>),
    /// A `%` field: the letter after it.
    Field(char),
}

/// Parses a kcat-style format string.
pub(crate) fn parse_format(f: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = vec![];
    let mut text = vec![];
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('%') => text.push(b'%'),
                Some(f @ ('s' | 'k' | 't' | 'p' | 'o' | 'T' | 'h' | 'K' | 'S')) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(f));
                }
                Some(other) => bail!("--format: unknown field %{other} (see `flotilla consume --help`)"),
                None => bail!("--format: a lone % at the end (write %% for a percent sign)"),
            },
            '\\' => match chars.next() {
                Some('n') => text.push(b'\n'),
                Some('t') => text.push(b'\t'),
                Some('r') => text.push(b'\r'),
                Some('\\') => text.push(b'\\'),
                Some(other) => {
                    text.push(b'\\');
                    text.extend_from_slice(other.to_string().as_bytes());
                }
                None => text.push(b'\\'),
            },
            c => text.extend_from_slice(c.to_string().as_bytes()),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Appends `r` as `pieces` say to `out`.
fn render(pieces: &[Piece], topic: &str, r: &flotilla_client::ConsumedRecord, out: &mut Vec<u8>) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.extend_from_slice(t),
            Piece::Field('s') => out.extend_from_slice(&r.record.value),
            Piece::Field('k') => out.extend_from_slice(r.record.key.as_deref().unwrap_or_default()),
            Piece::Field('t') => out.extend_from_slice(topic.as_bytes()),
            Piece::Field('p') => out.extend_from_slice(r.partition.to_string().as_bytes()),
            Piece::Field('o') => out.extend_from_slice(r.offset.to_string().as_bytes()),
            Piece::Field('T') => out.extend_from_slice(r.record.timestamp_ms.to_string().as_bytes()),
            Piece::Field('K') => {
                out.extend_from_slice(r.record.key.as_ref().map_or(0, |k| k.len()).to_string().as_bytes())
            }
            Piece::Field('S') => out.extend_from_slice(r.record.value.len().to_string().as_bytes()),
            Piece::Field('h') => {
                for (i, (name, value)) in r.record.headers.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(value);
                }
            }
            Piece::Field(_) => {}
        }
    }
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes with their labels, state, metadata role and load (replicas, partitions led
    /// now, partitions that prefer it as leader); the metadata leader; every partition's
    /// leader and replicas.
    Describe,
    /// Register a node that joins the cluster (what `flotilla node --join` does).
    AddNode(AddNodeArgs),
    /// One-line verdict on the cluster with the reasons (nodes down, leaderless and
    /// under-replicated partitions, no metadata leader); exits with status 1 when
    /// unhealthy, like `rpk cluster health`.
    Health,
    /// Move every replica off a node (or, with --undo, make it active again).
    Drain {
        /// The node.
        id: NodeId,
        /// Undrain: the node takes replicas again.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove an empty node for good (drain it first; its id is never reused).
    Remove {
        /// The node.
        id: NodeId,
    },
    /// Take back a node that lost its data under its old id: stop it, run this, and once
    /// it says ready start the node on an empty data directory (docs/operating.md).
    ReplaceNode {
        /// The node.
        id: NodeId,
        /// Only report how far its replacement got.
        #[arg(long)]
        status: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move a partition to new replicas; the first becomes its preferred leader.
    Reassign {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
        /// The replicas once moved.
        #[arg(long, value_delimiter = ',', required = true, value_name = "ID,...")]
        replicas: Vec<NodeId>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Make a replica the partition's preferred leader; leadership moves once it has
    /// caught up.
    TransferLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
        /// The new leader.
        #[arg(long)]
        to: NodeId,
    },
    /// Run the planner now and start what it finds.
    Balance,
    /// Show what the controller would do, now or in a scenario, without doing it.
    Plan(PlanArgs),
    /// Partition moves in progress, with the new replicas' catch-up.
    Moves,
    /// Cancel a partition's move: it goes back to its replicas.
    Cancel {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
    },
    /// Show the metadata group's voters and learners, or change the voters.
    Controllers {
        /// Make these nodes the voters (1 to 7; only the metadata leader can).
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        set: Option<Vec<NodeId>>,
    },
}

/// Waiting for a long operation to finish.
#[derive(Args, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until it is done, showing progress (replicas moved, catch-up).
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Give up waiting after this many seconds (the operation goes on).
    #[arg(long, default_value_t = 600, value_name = "SECS", requires = "wait")]
    pub timeout: u64,
}

/// What `flotilla cluster replace-node` says of a replacement, and what to do next.
fn replacement_text(r: &flotilla_client::ReplacementInfo) -> String {
    let id = r.node;
    match r.state.as_str() {
        "ready" => format!(
            "node {id}'s old replica has left every group: start node {id} now on an empty data directory, \
             with its id, addresses and certificate; it comes back as a new replica of each of its groups{}\n",
            if r.metadata_voter { " and votes in the metadata group again once caught up" } else { "" }
        ),
        "removing" => {
            let groups: Vec<String> = r.groups_left.iter().take(10).map(|g| g.to_string()).collect();
            format!(
                "replacing node {id}: its old replica is still in {} groups ({}{}); keep the node stopped, and \
                 start it on an empty data directory once this says ready (--wait waits)\n",
                r.groups_left.len(),
                groups.join(", "),
                if r.groups_left.len() > 10 { ", ..." } else { "" }
            )
        }
        _ => format!("node {id} is not being replaced\n"),
    }
}

#[derive(Args)]
pub struct AddNodeArgs {
    /// The node's id.
    #[arg(long)]
    pub id: NodeId,
    /// The node's client address (host:port).
    #[arg(long)]
    pub addr: String,
    /// The node's node-to-node address (host:port; default: --addr's host and port + 100,
    /// what `flotilla node` listens on without --rpc-listen).
    #[arg(long)]
    pub rpc_addr: Option<String>,
    #[arg(long, default_value = "")]
    pub region: String,
    #[arg(long, default_value = "")]
    pub zone: String,
    #[arg(long, default_value = "")]
    pub rack: String,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("scenario").args(["drain", "dead", "add_node", "topic"])))]
pub struct PlanArgs {
    /// If this node were drained.
    #[arg(long, value_name = "ID")]
    pub drain: Option<NodeId>,
    /// If this node were dead.
    #[arg(long, value_name = "ID")]
    pub dead: Option<NodeId>,
    /// If a node with this id (and --region/--zone/--rack) joined.
    #[arg(long, value_name = "ID")]
    pub add_node: Option<NodeId>,
    /// The new node's region (with --add-node).
    #[arg(long, requires = "add_node", default_value = "local")]
    pub region: String,
    /// The new node's zone (with --add-node).
    #[arg(long, requires = "add_node")]
    pub zone: Option<String>,
    /// The new node's rack (with --add-node).
    #[arg(long, requires = "add_node")]
    pub rack: Option<String>,
    /// If this topic had the replication factor and policy given.
    #[arg(long)]
    pub topic: Option<String>,
    /// The topic's replication factor (with --topic; default: unchanged).
    #[arg(long, requires = "topic")]
    pub replication_factor: Option<u32>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// How client commands reach the cluster: `client_id` is what the cluster's quotas
/// charge when no user is proven; `tls` is TLS to the nodes (`--tls-ca`), or
/// plaintext; `credentials` the user to act as.
pub struct Connection {
    pub bootstrap: String,
    pub client_id: String,
    pub tls: Option<flotilla_client::ClientTls>,
    pub credentials: Option<flotilla_client::Credentials>,
}

/// Runs one client command against the cluster.
pub async fn run(cmd: ClientCommand, conn: Connection, output: Output) -> anyhow::Result<()> {
    let config = ClientConfig {
        client_id: conn.client_id,
        tls: conn.tls,
        credentials: conn.credentials,
        ..ClientConfig::default()
    };
    let bootstrap = conn.bootstrap.as_str();
    let config = match &cmd {
        ClientCommand::Consume(a) => ClientConfig { zone: a.zone.clone(), ..config },
        _ => config,
    };
    let client = Client::connect_with(bootstrap, config).await.map_err(one_line)?;
    match cmd {
        ClientCommand::Topic(c) => topic(&client, c, output).await,
        ClientCommand::Produce(a) => produce(&client, a, output).await,
        ClientCommand::Consume(a) => consume(&client, a, output).await,
        ClientCommand::Cluster(c) => cluster(&client, c, output).await,
        ClientCommand::Group(c) => crate::group_cmds::run(&client, c, output).await,
        ClientCommand::Bench(c) => crate::bench::run(&client, c, output).await,
        ClientCommand::User(c) => crate::security_cmds::user(&client, c, output).await,
        ClientCommand::Acl(c) => crate::security_cmds::acl(&client, c, output).await,
        ClientCommand::Quota(c) => crate::security_cmds::quota(&client, c, output).await,
    }
}

/// A node's node-to-node address when only its client address is given: the same host,
/// the port + `RPC_PORT_OFFSET`, as `flotilla node` defaults `rpc-listen`.
fn default_rpc_addr(addr: &str) -> anyhow::Result<String> {
    let config = flotilla_node::NodeConfig { listen: addr.to_string(), ..flotilla_node::NodeConfig::default() };
    config.default_rpc_listen().map_err(|e| anyhow::anyhow!("--addr: {e}; give --rpc-addr"))
}

/// Prints `value` as JSON, or `text` for people.
pub(crate) fn show<T: Serialize>(output: Output, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(value),
        Output::Text => {
            print!("{}", text());
            Ok(())
        }
    }
}

async fn cluster(client: &Client, cmd: ClusterCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Describe => {
            let info = client.describe_cluster().await.map_err(one_line)?;
            show(output, &cluster_json(&info)?, || cluster_text(&info))
        }
        ClusterCmd::AddNode(a) => {
            let labels = Labels { region: a.region, zone: a.zone, rack: a.rack };
            let rpc_addr = match &a.rpc_addr {
                Some(r) => r.clone(),
                None => default_rpc_addr(&a.addr)?,
            };
            client.add_node(a.id, &a.addr, &rpc_addr, &labels).await.map_err(one_line)?;
            let json =
                serde_json::json!({ "added_node": a.id, "addr": a.addr, "rpc_addr": rpc_addr, "labels": labels });
            show(output, &json, || {
                format!(
                    "added node {} at {} (region {}, zone {}, rack {})\n",
                    a.id,
                    a.addr,
                    dash(&labels.region),
                    dash(&labels.zone),
                    dash(&labels.rack)
                )
            })
        }
        ClusterCmd::Health => {
            let info = client.describe_cluster().await.map_err(one_line)?;
            let health = crate::progress::health(&info);
            show(output, &health, || health.text())?;
            if !health.healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        ClusterCmd::Drain { id, undo: false, wait } => {
            client.drain_node(id).await.map_err(one_line)?;
            if wait.wait {
                crate::progress::wait_drained(client, id, wait.timeout, output).await?;
            }
            show(output, &serde_json::json!({ "draining": id, "drained": wait.wait }), || match wait.wait {
                true => format!("node {id} is drained: it holds no replicas\n"),
                false => format!(
                    "draining node {id}: its replicas move to other nodes (see `flotilla cluster moves`, or --wait)\n"
                ),
            })
        }
        ClusterCmd::Drain { id, undo: true, .. } => {
            client.undrain_node(id).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "undrained": id }), || format!("node {id} takes replicas again\n"))
        }
        ClusterCmd::ReplaceNode { id, status, wait } => {
            let mut r = client.replace_node(id, status).await.map_err(one_line)?;
            if wait.wait && r.state == "removing" {
                r = crate::progress::wait_replaceable(client, id, wait.timeout, output).await?;
            }
            show(output, &r, || replacement_text(&r))
        }
        ClusterCmd::Remove { id } => {
            client.remove_node(id).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "removed_node": id }), || format!("removed node {id}\n"))
        }
        ClusterCmd::Reassign { topic, partition, replicas, wait } => {
            let move_id = client.reassign(&topic, partition, &replicas).await.map_err(one_line)?;
            if wait.wait {
                crate::progress::wait_moved(client, &topic, partition, &replicas, wait.timeout, output).await?;
                let json = serde_json::json!({ "topic": topic, "partition": partition, "replicas": replicas, "move_id": move_id, "done": true });
                return show(output, &json, || {
                    format!("moved {topic}/{partition} to replicas {} (move {move_id})\n", join_ids(&replicas))
                });
            }
            let json =
                serde_json::json!({ "topic": topic, "partition": partition, "replicas": replicas, "move_id": move_id });
            show(output, &json, || {
                format!(
                    "moving {topic}/{partition} to replicas {} (move {move_id}); see `flotilla cluster moves`\n",
                    join_ids(&replicas)
                )
            })
        }
        ClusterCmd::TransferLeader { topic, partition, to } => {
            client.transfer_leader(&topic, partition, to).await.map_err(one_line)?;
            let json = serde_json::json!({ "topic": topic, "partition": partition, "preferred_leader": to });
            show(output, &json, || {
                format!(
                    "node {to} is now the preferred leader of {topic}/{partition}; leadership moves once it has caught up\n"
                )
            })
        }
        ClusterCmd::Balance => {
            let plan = client.balance().await.map_err(one_line)?;
            show(output, &plan, || {
                let mut out = plan_text(&plan);
                if !plan.actions.is_empty() {
                    out.push_str("started; see `flotilla cluster moves`\n");
                }
                out
            })
        }
        ClusterCmd::Plan(a) => {
            let scenario = scenario(client, a).await?;
            let plan = client.plan(&scenario).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "scenario": scenario, "plan": plan }), || plan_text(&plan))
        }
        ClusterCmd::Moves => {
            let moves = client.moves().await.map_err(one_line)?;
            show(output, &moves, || moves_text(&moves))
        }
        ClusterCmd::Cancel { topic, partition } => {
            client.cancel_move(&topic, partition).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "cancelled": { "topic": topic, "partition": partition } }), || {
                format!("cancelled the move of {topic}/{partition}: it goes back to its replicas\n")
            })
        }
        ClusterCmd::Controllers { set: None } => {
            let c = client.controllers().await.map_err(one_line)?;
            show(output, &c, || controllers_text(&c))
        }
        ClusterCmd::Controllers { set: Some(voters) } => {
            let c = client.set_controllers(&voters).await.map_err(one_line)?;
            show(output, &c, || controllers_text(&c))
        }
    }
}

/// The scenario `flotilla cluster plan` asks about.
async fn scenario(client: &Client, a: PlanArgs) -> anyhow::Result<PlanScenario> {
    if a.topic.is_none() && !a.policy.is_empty() {
        bail!(
            "policy flags (--allowed-regions, --preferred-leader-region, --exclude-nodes, --exclude-zones) need --topic"
        );
    }
    Ok(match (a.drain, a.dead, a.add_node, a.topic) {
        (Some(id), ..) => PlanScenario::Drain(id),
        (_, Some(id), ..) => PlanScenario::Dead(id),
        (_, _, Some(id), _) => PlanScenario::AddNode {
            id,
            labels: Labels { region: a.region, zone: a.zone.unwrap_or_default(), rack: a.rack.unwrap_or_default() },
        },
        (_, _, _, Some(name)) => {
            let replication_factor = match a.replication_factor {
                Some(rf) => rf,
                None => client.describe_topic(&name).await.map_err(one_line)?.replication_factor,
            };
            PlanScenario::TopicConfig { name, replication_factor, policy: a.policy.policy() }
        }
        (None, None, None, None) => PlanScenario::Now,
    })
}

fn plan_text(p: &PlanInfo) -> String {
    let mut out = String::new();
    if p.actions.is_empty() {
        out.push_str("nothing to do\n");
    }
    for a in &p.actions {
        out.push_str(&a.text);
        out.push('\n');
    }
    for n in &p.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn moves_text(moves: &[MoveInfo]) -> String {
    if moves.is_empty() {
        return "no moves in progress\n".into();
    }
    let mut out = String::new();
    for m in moves {
        out.push_str(&format!(
            "{}/{} (group {}, move {}): {} -> {}: {}; leader {}\n",
            m.topic,
            m.partition,
            m.group_id,
            m.move_id,
            join_ids(&m.from),
            join_ids(&m.to),
            m.reason,
            opt(m.leader)
        ));
        if m.progress.is_empty() {
            out.push_str(&format!("  group {}: no catch-up progress reported by its leader\n", m.group_id));
        }
        for c in &m.progress {
            match c.matched {
                Some(matched) => out.push_str(&format!(
                    "  group {}: node {} at {matched}/{} entries ({}%)\n",
                    m.group_id,
                    c.node,
                    c.leader_last,
                    c.percent()
                )),
                None => out.push_str(&format!(
                    "  group {}: node {} has not answered yet (leader at {} entries)\n",
                    m.group_id, c.node, c.leader_last
                )),
            }
        }
    }
    out
}

fn controllers_text(c: &ControllersInfo) -> String {
    format!(
        "metadata leader: {}\nvoters: {}\nlearners: {}\n{}",
        opt(c.leader),
        dash(&join_ids(&c.voters)),
        dash(&join_ids(&c.learners)),
        if c.changing { "a membership change is in progress\n" } else { "" }
    )
}

/// A client error as one line; `main` prints it after "error: ".
pub(crate) fn one_line(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
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

/// How many partitions each node leads now, by the partitions' current leaders.
fn leaders_now(c: &ClusterInfo) -> BTreeMap<NodeId, u64> {
    let mut led = BTreeMap::new();
    for p in c.topics.iter().flat_map(|t| &t.partitions) {
        if let Some(l) = p.leader {
            *led.entry(l).or_default() += 1;
        }
    }
    led
}

/// `cluster describe --output json`: the cluster, each node with `leaders`, the
/// partitions it leads now (beside `preferred_leaders`).
fn cluster_json(c: &ClusterInfo) -> anyhow::Result<serde_json::Value> {
    let led = leaders_now(c);
    let mut v = serde_json::to_value(c)?;
    if let Some(brokers) = v.get_mut("brokers").and_then(|b| b.as_array_mut()) {
        for (b, info) in brokers.iter_mut().zip(&c.brokers) {
            if let Some(o) = b.as_object_mut() {
                o.insert("leaders".into(), led.get(&info.id).copied().unwrap_or(0).into());
            }
        }
    }
    Ok(v)
}

fn cluster_text(c: &ClusterInfo) -> String {
    let led = leaders_now(c);
    let brokers: Vec<Vec<String>> = c
        .brokers
        .iter()
        .map(|b| {
            let mut role = dash(&b.role);
            if Some(b.id) == c.metadata_leader {
                role.push_str(" (leader)");
            }
            vec![
                b.id.to_string(),
                b.addr.clone(),
                dash(&b.region),
                dash(&b.zone),
                dash(&b.rack),
                dash(&b.state),
                role,
                b.replicas.to_string(),
                led.get(&b.id).copied().unwrap_or(0).to_string(),
                b.preferred_leaders.to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "{} nodes; metadata leader: {}; answered by: {}\n",
        c.brokers.len(),
        opt(c.metadata_leader),
        opt(c.answered_by)
    );
    out.push_str(&table(
        &["NODE", "ADDRESS", "REGION", "ZONE", "RACK", "STATE", "ROLE", "REPLICAS", "LEADERS", "PREFERRED"],
        &brokers,
    ));
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
            let policy = a.policy.policy();
            let t = client
                .create_topic_with(&a.name, a.partitions, a.replication_factor, &policy)
                .await
                .map_err(one_line)?;
            match output {
                Output::Json => print_json(&t),
                Output::Text => {
                    println!(
                        "created topic '{}' with {} partitions, replication factor {}{}",
                        a.name,
                        a.partitions,
                        a.replication_factor,
                        if policy == TopicPolicy::default() {
                            String::new()
                        } else {
                            format!(" ({})", policy_text(&policy))
                        }
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
        TopicCmd::Config(a) => {
            let given = a.policy.policy();
            if a.replication_factor.is_none() && given == TopicPolicy::default() && a.reset.is_empty() {
                bail!("nothing to change: give --replication-factor, a policy flag or --reset KEY");
            }
            client.alter_topic_config(&a.name, a.replication_factor, &given, &a.reset).await.map_err(one_line)?;
            let json = serde_json::json!({
                "topic": a.name, "replication_factor": a.replication_factor, "changed": given, "reset": a.reset,
            });
            show(output, &json, || {
                let mut changed = Vec::new();
                if let Some(rf) = a.replication_factor {
                    changed.push(format!("replication factor {rf}"));
                }
                if given != TopicPolicy::default() {
                    changed.push(policy_text(&given));
                }
                if !a.reset.is_empty() {
                    changed.push(format!("reset {}", a.reset.join(", ")));
                }
                format!(
                    "topic '{}': {}; other keys unchanged; replicas that break it move (see `flotilla cluster moves`)\n",
                    a.name,
                    changed.join("; ")
                )
            })
        }
        TopicCmd::DeleteRecords { name, partition, before } => {
            let start = client.delete_records(&name, partition, before).await.map_err(one_line)?;
            let json = serde_json::json!({ "topic": name, "partition": partition, "log_start_offset": start });
            show(output, &json, || format!("{name}/{partition}: records below {start} deleted; log start {start}\n"))
        }
        TopicCmd::AddPartitions { name, num, total } => {
            let total = match (num, total) {
                (_, Some(t)) => t,
                (Some(n), None) => {
                    let now = client.describe_topic(&name).await.map_err(one_line)?.partitions.len() as u32;
                    now.checked_add(n).ok_or_else(|| anyhow::anyhow!("--num {n} is too many"))?
                }
                (None, None) => unreachable!("clap requires one of them"),
            };
            client.add_partitions(&name, total).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "topic": name, "partitions": total }), || {
                format!("topic '{name}' now has {total} partitions\n")
            })
        }
    }
}

fn policy_text(p: &TopicPolicy) -> String {
    let mut parts = vec![];
    if !p.allowed_regions.is_empty() {
        parts.push(format!("regions {}", p.allowed_regions.join(",")));
    }
    if let Some(r) = &p.preferred_leader_region {
        parts.push(format!("leaders in {r}"));
    }
    if !p.excluded_nodes.is_empty() {
        parts.push(format!("not on nodes {}", join_ids(&p.excluded_nodes)));
    }
    if !p.excluded_zones.is_empty() {
        parts.push(format!("not in zones {}", p.excluded_zones.join(",")));
    }
    if parts.is_empty() {
        parts.push("no placement constraints".into());
    }
    match p.retention_ms {
        Some(0) => parts.push("kept forever".into()),
        Some(ms) => parts.push(format!("records kept {ms} ms")),
        None => {}
    }
    match p.retention_bytes {
        Some(0) => parts.push("no size limit".into()),
        Some(b) => parts.push(format!("at most {b} bytes per partition")),
        None => {}
    }
    parts.join("; ")
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
    if !(1..=flotilla_types::limits::PRODUCER_IN_FLIGHT_MAX).contains(&a.batches_in_flight) {
        bail!(
            "--batches-in-flight {}: from 1 to {} (what a partition remembers of a producer)",
            a.batches_in_flight,
            flotilla_types::limits::PRODUCER_IN_FLIGHT_MAX
        );
    }
    let format = a.format.as_deref().map(parse_input_format).transpose()?;
    let config = ProducerConfig {
        linger: std::time::Duration::from_millis(a.linger_ms),
        idempotent: !a.no_idempotence,
        name: a.producer_name.clone(),
        compression: a.compression,
        max_in_flight: a.batches_in_flight,
        acks: a.acks,
        ..ProducerConfig::default()
    };
    let producer = client.producer(&a.topic, config);
    let headers: Vec<(String, Bytes)> =
        a.headers.iter().map(|(n, v)| (n.clone(), Bytes::from(v.clone().into_bytes()))).collect();
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let mut lines = stdin_lines();
    let mut in_flight = JoinSet::new();
    let mut tally = Tally::default();
    let mut refused = None;
    let mut bad_lines = 0u64;
    let mut line_no = 0u64;
    while let Some(line) = lines.recv().await {
        let line = line.context("reading standard input")?;
        line_no += 1;
        let input = match &format {
            Some(pieces) => match parse_input(pieces, &line) {
                Ok(r) => r,
                Err(why) => {
                    eprintln!("line {line_no}: does not match --format: {why}; not sent");
                    bad_lines += 1;
                    continue;
                }
            },
            None => {
                let (key, value) = split_line(&line, sep);
                InputRecord { key, value, ..InputRecord::default() }
            }
        };
        let mut record_headers = headers.clone();
        record_headers.extend(input.headers);
        let record = Record {
            key: input.key,
            value: input.value,
            headers: record_headers,
            timestamp_ms: input.timestamp_ms.unwrap_or(0),
        };
        // Queued in input order, so records of one partition keep it.
        let queued = match input.partition.or(a.partition) {
            Some(p) if p >= partitions => {
                eprintln!("line {line_no}: topic '{}' has no partition {p}; not sent", a.topic);
                bad_lines += 1;
                continue;
            }
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
            "bad_lines": bad_lines,
        }))?,
        Output::Text => eprintln!("{} record{} acknowledged", tally.acked, if tally.acked == 1 { "" } else { "s" }),
    }
    if bad_lines > 0 && tally.failed == 0 {
        bail!("{bad_lines} input line{} not sent (see above)", if bad_lines == 1 { "" } else { "s" });
    }
    if tally.failed > 0 {
        let (reason, _) = tally.reasons.iter().max_by_key(|(_, n)| **n).expect("a reason per failure");
        let maybe = if tally.maybe_written > 0 {
            format!(" ({} of them may have been written nonetheless)", tally.maybe_written)
        } else {
            String::new()
        };
        let bad = match bad_lines {
            0 => String::new(),
            n => format!(", and {n} input line{} not sent", if n == 1 { "" } else { "s" }),
        };
        bail!("{} records failed{maybe}; most often: {reason}{bad}", tally.failed);
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
    let format = match (&a.format, output) {
        (Some(_), Output::Json) => bail!("--format and --output json do not go together"),
        (Some(f), Output::Text) => Some(parse_format(f)?),
        (None, _) => None,
    };
    if a.group.is_some() {
        return crate::group_cmds::consume_group(client, a, format, output).await;
    }
    if a.share_group.is_some() {
        return crate::group_cmds::consume_share(client, a, format, output).await;
    }
    let count = client.partition_count(&a.topic).await.map_err(one_line)?;
    let partitions: Vec<PartitionId> = match a.partition {
        Some(p) if p >= count => {
            bail!("topic '{}' has {count} partitions; there is no partition {p} (UNKNOWN_PARTITION)", a.topic)
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let start = a.offset.unwrap_or(StartSpec::Beginning);
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
                let (earliest, latest) = client.list_offsets(&topic, p).await.map_err(one_line)?;
                let end = if follow { u64::MAX } else { latest };
                // Records below `skip_below` are read but not printed.
                let (from, skip_below) = match start {
                    StartSpec::Beginning => (earliest, 0),
                    StartSpec::End => (latest, 0),
                    StartSpec::Offset(o) => (o.clamp(earliest, latest), o),
                    StartSpec::FromEnd(n) => (latest.saturating_sub(n).max(earliest), 0),
                    StartSpec::Timestamp(ts) => (client.offset_for_time(&topic, p, ts).await.map_err(one_line)?, 0),
                    StartSpec::Ago(ago) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        (client.offset_for_time(&topic, p, now.saturating_sub(ago)).await.map_err(one_line)?, 0)
                    }
                };
                let mut consumer = client.consumer(&topic, p, StartAt::Offset(from)).await.map_err(one_line)?;
                while consumer.position() < end {
                    let wait = if follow { Duration::from_secs(5) } else { Duration::from_millis(500) };
                    let mut records = consumer.poll(wait).await.map_err(one_line)?;
                    records.retain(|r| r.offset < end && r.offset >= skip_below);
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
            let written = write_record(&mut out, output, format.as_deref(), &a, &r);
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

/// Writes one consumed record as `consume` prints it (`--output json`, `--format`, or
/// the value with `--print-offset`/`--print-key`).
pub(crate) fn write_record(
    out: &mut impl Write,
    output: Output,
    format: Option<&[Piece]>,
    a: &ConsumeArgs,
    r: &flotilla_client::ConsumedRecord,
) -> std::io::Result<()> {
    match output {
        Output::Json => {
            let j = JsonRecord {
                partition: r.partition,
                offset: r.offset,
                timestamp_ms: r.record.timestamp_ms,
                key: r.record.key.as_deref().map(String::from_utf8_lossy),
                value: String::from_utf8_lossy(&r.record.value),
                headers: r.record.headers.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v))).collect(),
            };
            serde_json::to_writer(&mut *out, &j).map_err(std::io::Error::from).and_then(|_| writeln!(out))
        }
        Output::Text => {
            let mut line = Vec::with_capacity(r.record.value.len() + 32);
            if let Some(pieces) = format {
                render(pieces, &a.topic, r, &mut line);
                out.write_all(&line)
            } else {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_input_formats_read_keys_headers_timestamps_and_partitions() {
        let f = parse_input_format("%k\\t%h\\t%T|%p|%s\\n").unwrap();
        let r = parse_input(&f, b"user-1\tsource=web,v=2\t1700000000000|3|hello\tworld|!").unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(r.headers, vec![("source".to_string(), Bytes::from("web")), ("v".to_string(), Bytes::from("2"))]);
        assert_eq!(r.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(r.partition, Some(3));
        assert_eq!(&r.value[..], b"hello\tworld|!", "the last field takes the rest of the line");

        // Empty headers and keys are allowed; text before the first field must match.
        let f = parse_input_format("[%k] %h %s").unwrap();
        let r = parse_input(&f, b"[] a=1 v").unwrap();
        assert_eq!(r.key.as_deref(), Some(&b""[..]));
        assert_eq!(r.headers.len(), 1);
        assert!(parse_input(&f, b"k] a=1 v").unwrap_err().contains("expected \"[\""));
        assert!(parse_input(&f, b"[k]").unwrap_err().contains("after the %k field"));
        let f = parse_input_format("%T:%s").unwrap();
        assert!(parse_input(&f, b"soon:v").unwrap_err().contains("not a number"));
        let f = parse_input_format("%h:%s").unwrap();
        assert!(parse_input(&f, b"novalue:v").unwrap_err().contains("NAME=VALUE"));
    }

    #[test]
    fn produce_input_formats_that_cannot_be_read_are_refused() {
        assert!(parse_input_format("%k%s").unwrap_err().to_string().contains("need text between"));
        assert!(parse_input_format("%k:%k:%s").unwrap_err().to_string().contains("twice"));
        assert!(parse_input_format("%k").unwrap_err().to_string().contains("no %s"));
        assert!(parse_input_format("%o %s").unwrap_err().to_string().contains("cannot be read"));
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(split_line(b"k:v:w", Some(b":")), (Some(Bytes::from("k")), Bytes::from("v:w")));
        assert_eq!(split_line(b"no sep", Some(b":")), (None, Bytes::from("no sep")));
        assert_eq!(split_line(b"k::v", Some(b"::")), (Some(Bytes::from("k")), Bytes::from("v")));
        assert_eq!(split_line(b"a:b", None), (None, Bytes::from("a:b")));
        assert_eq!(split_line(b":v", Some(b":")), (Some(Bytes::new()), Bytes::from("v")));
    }

    #[test]
    fn plans_moves_and_controllers_read_well() {
        use flotilla_client::{ActionKind, CatchUpInfo, PlanAction};
        let plan = PlanInfo {
            actions: vec![PlanAction {
                kind: ActionKind::Move,
                topic: "t".into(),
                partition: 0,
                group_id: 7,
                from: vec![1, 2, 3],
                to: vec![1, 2, 5],
                reason: "drain node 3".into(),
                text: "t/0 (group 7): [1,2,3] -> [1,2,5]: drain node 3".into(),
            }],
            notes: vec!["leader balance waits".into()],
        };
        assert_eq!(plan_text(&plan), "t/0 (group 7): [1,2,3] -> [1,2,5]: drain node 3\nnote: leader balance waits\n");
        assert_eq!(plan_text(&PlanInfo::default()), "nothing to do\n");

        let m = MoveInfo {
            topic: "t".into(),
            partition: 0,
            group_id: 7,
            move_id: 42,
            from: vec![1, 2, 3],
            to: vec![1, 2, 5],
            reason: "drain node 3".into(),
            leader: Some(1),
            progress: vec![
                CatchUpInfo { node: 5, matched: Some(1234), leader_last: 2000 },
                CatchUpInfo { node: 6, matched: None, leader_last: 2000 },
            ],
        };
        let text = moves_text(&[m]);
        assert!(text.starts_with("t/0 (group 7, move 42): 1,2,3 -> 1,2,5: drain node 3; leader 1\n"), "{text}");
        assert!(text.contains("  group 7: node 5 at 1234/2000 entries (61%)\n"), "{text}");
        assert!(text.contains("  group 7: node 6 has not answered yet (leader at 2000 entries)\n"), "{text}");
        assert_eq!(moves_text(&[]), "no moves in progress\n");

        let c = ControllersInfo { leader: Some(2), voters: vec![1, 2, 3], learners: vec![], changing: true };
        assert_eq!(
            controllers_text(&c),
            "metadata leader: 2\nvoters: 1,2,3\nlearners: -\na membership change is in progress\n"
        );
        assert_eq!(policy_text(&TopicPolicy::default()), "no placement constraints");
    }

    #[test]
    fn consume_offsets_and_formats_parse() {
        assert_eq!(parse_start("beginning"), Ok(StartSpec::Beginning));
        assert_eq!(parse_start("end"), Ok(StartSpec::End));
        assert_eq!(parse_start("42"), Ok(StartSpec::Offset(42)));
        assert_eq!(parse_start("-10"), Ok(StartSpec::FromEnd(10)));
        assert_eq!(parse_start("@1700000000000"), Ok(StartSpec::Timestamp(1_700_000_000_000)));
        assert!(parse_start("soon").is_err());
        assert!(parse_start("-x").is_err());
        assert!(parse_start("@").is_err());
        assert_eq!(parse_start("@-90s"), Ok(StartSpec::Ago(90_000)));
        assert_eq!(parse_start("@-1h"), Ok(StartSpec::Ago(3_600_000)));
        assert_eq!(parse_start("@-2d"), Ok(StartSpec::Ago(172_800_000)));
        assert_eq!(parse_start("@-250ms"), Ok(StartSpec::Ago(250)));
        assert!(parse_start("@-1y").is_err());
        assert!(parse_start("@-").is_err());

        let record = Record {
            key: Some("k".into()),
            value: "v".into(),
            headers: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            timestamp_ms: 5,
        };
        let r = flotilla_client::ConsumedRecord { partition: 2, offset: 7, record };
        let mut out = vec![];
        render(&parse_format("%t/%p@%o %k=%s (%K,%S) [%h] %T 100%%\\t\\\\\\n").unwrap(), "demo", &r, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "demo/2@7 k=v (1,1) [a=1,b=2] 5 100%\t\\\n");
        assert!(parse_format("%x").is_err());
        assert!(parse_format("50%").is_err());
    }

    #[test]
    fn cluster_text_counts_leaders_apart_from_preferred() {
        use flotilla_client::{BrokerInfo, PartitionInfo};
        let broker = |id: u64, state: &str, preferred_leaders: u64| BrokerInfo {
            id,
            addr: format!("h:{id}"),
            region: String::new(),
            zone: String::new(),
            rack: String::new(),
            state: state.into(),
            role: "voter".into(),
            replicas: 2,
            preferred_leaders,
            rpc_addr: format!("h:{}", id + 100),
        };
        let partition = |partition: u32, leader: Option<u64>| PartitionInfo {
            partition,
            group_id: u64::from(partition) + 1,
            leader,
            replicas: vec![1, 2],
            high_watermark: None,
        };
        let c = ClusterInfo {
            brokers: vec![broker(1, "alive", 1), broker(2, "suspected", 1)],
            metadata_leader: Some(1),
            topics: vec![TopicInfo {
                name: "t".into(),
                replication_factor: 2,
                partitions: vec![partition(0, Some(1)), partition(1, Some(1))],
            }],
            answered_by: Some(1),
        };
        let text = cluster_text(&c);
        assert!(text.contains("REPLICAS  LEADERS  PREFERRED\n"), "{text}");
        assert!(text.contains("suspected  voter           2         0        1\n"), "{text}");
        assert!(text.contains("alive      voter (leader)  2         2        1\n"), "{text}");
        let json = cluster_json(&c).unwrap();
        assert_eq!(json["brokers"][0]["leaders"], 2);
        assert_eq!(json["brokers"][1]["leaders"], 0);
        assert_eq!(json["brokers"][1]["preferred_leaders"], 1);
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
        assert!(parse(&["produce", "t", "-H", "trace=abc", "-H", "k=", "--linger-ms", "5"]).is_ok());
        assert!(parse(&["produce", "t", "-H", "novalue"]).is_err());
        assert!(parse(&["produce", "t", "--compression", "zstd"]).is_ok());
        assert!(parse(&["produce", "t", "--compression", "brotli"]).is_err());
        assert!(parse(&["produce", "t", "--producer-name", "w", "--no-idempotence"]).is_err());
        assert!(parse(&["consume", "t", "--from-beginning", "--max", "5", "--print-key", "--print-offset"]).is_ok());
        assert!(parse(&["consume", "t", "--from-beginning", "--offset", "3"]).is_err());
        assert!(parse(&["consume", "t", "--partition", "1", "--offset", "3", "--follow"]).is_ok());
        assert!(parse(&["consume", "t", "-p", "1", "-o", "-5", "-n", "3", "-f"]).is_ok());
        assert!(parse(&["consume", "t", "-o", "@1700000000000", "--format", "%k %s\\n"]).is_ok());
        assert!(parse(&["consume", "t", "-o", "soon"]).is_err());
        assert!(parse(&["consume", "t", "--format", "%s", "--print-key"]).is_err());
        assert!(parse(&["cluster", "describe"]).is_ok());
        let create = ["topic", "create", "t", "--allowed-regions", "eu,us", "--preferred-leader-region", "eu"];
        assert!(parse(&[&create[..], &["--exclude-nodes", "1,2", "--exclude-zones", "z"]].concat()).is_ok());
        assert!(parse(&["topic", "config", "t", "--replication-factor", "5", "--exclude-zones", "a,b"]).is_ok());
        assert!(parse(&["topic", "config", "t"]).is_ok());
        assert!(parse(&["topic", "add-partitions", "t", "--total", "12"]).is_ok());
        assert!(parse(&["topic", "add-partitions", "t"]).is_err(), "--total is required");
        assert!(parse(&["cluster", "add-node", "--id", "4", "--addr", "h:7073", "--zone", "c"]).is_ok());
        assert!(parse(&["cluster", "drain", "3"]).is_ok());
        assert!(parse(&["cluster", "drain", "3", "--undo"]).is_ok());
        assert!(parse(&["cluster", "remove", "3"]).is_ok());
        assert!(parse(&["cluster", "reassign", "t", "0", "--replicas", "1,2,4"]).is_ok());
        assert!(parse(&["cluster", "reassign", "t", "0"]).is_err(), "--replicas is required");
        assert!(parse(&["cluster", "transfer-leader", "t", "0", "--to", "2"]).is_ok());
        assert!(parse(&["cluster", "balance"]).is_ok());
        assert!(parse(&["cluster", "moves"]).is_ok());
        assert!(parse(&["cluster", "cancel", "t", "0"]).is_ok());
        assert!(parse(&["cluster", "controllers"]).is_ok());
        assert!(parse(&["cluster", "controllers", "--set", "1,2,3,4,5"]).is_ok());
        assert!(parse(&["cluster", "plan"]).is_ok());
        assert!(parse(&["cluster", "plan", "--drain", "3"]).is_ok());
        assert!(parse(&["cluster", "plan", "--dead", "3"]).is_ok());
        assert!(parse(&["cluster", "plan", "--add-node", "7", "--zone", "c", "--region", "eu"]).is_ok());
        assert!(
            parse(&["cluster", "plan", "--topic", "t", "--replication-factor", "5", "--exclude-nodes", "2"]).is_ok()
        );
        assert!(parse(&["cluster", "plan", "--drain", "3", "--dead", "2"]).is_err(), "one scenario at a time");
        assert!(parse(&["cluster", "plan", "--zone", "c"]).is_err(), "--zone needs --add-node");
        assert!(parse(&["cluster", "plan", "--replication-factor", "3"]).is_err(), "needs --topic");
        assert!(parse(&["consume", "t", "--zone", "a"]).is_ok());
        // The bench commands' own cases are in bench.rs.
        assert!(parse(&["bench", "produce", "--topic", "t", "--rate", "100", "--duration-secs", "10"]).is_ok());
        assert!(parse(&["bench", "consume", "--topic", "t"]).is_ok());
    }
}
