//! `flotilla group ...`, `flotilla consume --group` and `--share-group`: consumer groups
//! (RFC 0005) and share groups (RFC 0007) from the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use flotilla_client::{
    AckMode, Client, ConsumedRecord, GroupConfig, GroupInfo, Offset, OffsetReset, PartitionId, ShareGroupConfig,
    ShareInfo, ShareStart, TopicPartition,
};
use serde::Serialize;

use crate::client_cmds::{ConsumeArgs, Output, Piece, StartSpec, one_line, show, write_record};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Every consumer group, with its member count.
    List,
    /// A group's members (zone, epoch, assigned partitions), committed offsets, and each
    /// partition's lag in records and in seconds.
    Describe {
        /// The group.
        group: String,
    },
    /// Delete a group that has no members, with its committed offsets.
    Delete {
        /// The group.
        group: String,
    },
    /// Set a group's committed offsets, also while its members read: each member seeks
    /// to the new offsets at its next heartbeat (within about a second).
    ResetOffsets(ResetArgs),
    /// A share group's dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// Put dead-lettered records back into the topic they came from (same partition, key,
    /// value and headers, without the dead-letter headers), from where the last replay
    /// stopped: the position is kept as consumer group `<dead-letter topic>.replay`.
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The share group.
    pub group: String,
    /// The topic whose dead letters to replay.
    #[arg(long)]
    pub topic: String,
    /// The dead-letter topic (default `<topic>.<group>.dlq`).
    #[arg(long)]
    pub dlq_topic: Option<String>,
    /// Replay at most this many records.
    #[arg(long, short = 'n')]
    pub max: Option<u64>,
    /// Print what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct ResetArgs {
    /// The group.
    pub group: String,
    /// Reset this topic's partitions (repeatable; default: every topic the group has
    /// offsets for or its members read).
    #[arg(long)]
    pub topic: Vec<String>,
    /// Only this partition (with one --topic).
    #[arg(long, short = 'p')]
    pub partition: Option<PartitionId>,
    /// earliest | latest | offset N | timestamp MS (the first record stamped at or after
    /// it) | shift ±N (from the committed offset). Offsets are kept within the partition.
    #[arg(long, num_args = 1..=2, value_names = ["WHERE", "N"], allow_negative_numbers = true, required = true)]
    pub to: Vec<String>,
    /// Print the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where `reset-offsets --to` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(u64),
    Shift(i64),
}

fn parse_reset_to(to: &[String]) -> anyhow::Result<ResetTo> {
    let arg = |what: &str| -> anyhow::Result<&str> {
        match to {
            [_, v] => Ok(v.as_str()),
            _ => bail!("--to {what} needs a number: --to {what} N"),
        }
    };
    let kind = to.first().map(String::as_str).unwrap_or_default();
    let extra = |r: ResetTo| -> anyhow::Result<ResetTo> {
        match to.len() {
            1 => Ok(r),
            _ => bail!("--to {kind} takes no number"),
        }
    };
    match kind {
        "earliest" | "beginning" => extra(ResetTo::Earliest),
        "latest" | "end" => extra(ResetTo::Latest),
        "offset" => Ok(ResetTo::Offset(arg("offset")?.parse().context("--to offset N: N is an offset")?)),
        "timestamp" => Ok(ResetTo::Timestamp(
            arg("timestamp")?.parse().context("--to timestamp MS: milliseconds since the epoch")?,
        )),
        "shift" => Ok(ResetTo::Shift(arg("shift")?.parse().context("--to shift N: N is a signed number")?)),
        other => bail!("--to {other:?}: earliest, latest, offset N, timestamp MS or shift N"),
    }
}

/// One line of a reset plan.
#[derive(Debug, Clone, Serialize)]
struct Planned {
    topic: String,
    partition: PartitionId,
    current: Option<Offset>,
    new: Offset,
}

pub async fn run(client: &Client, cmd: GroupCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::List => {
            let groups = client.list_groups().await.map_err(one_line)?;
            show(output, &groups, || {
                if groups.is_empty() {
                    return "no groups\n".into();
                }
                let mut s = format!("{:<30} {:<9} {:>8} {:>8} {}\n", "GROUP", "KIND", "MEMBERS", "EPOCH", "ASSIGNOR");
                for g in &groups {
                    let assignor = if g.assignor.is_empty() { "-" } else { &g.assignor };
                    s += &format!("{:<30} {:<9} {:>8} {:>8} {}\n", g.name, g.kind, g.members, g.epoch, assignor);
                }
                s
            })
        }
        GroupCmd::Describe { group } => {
            let info = client.describe_group(&group).await.map_err(one_line)?;
            show(output, &info, || describe_text(&info))
        }
        GroupCmd::Delete { group } => {
            client.delete_group(&group).await.map_err(one_line)?;
            show(output, &serde_json::json!({ "deleted_group": group }), || format!("deleted group {group}\n"))
        }
        GroupCmd::ResetOffsets(a) => reset(client, a, output).await,
        GroupCmd::Dlq(DlqCmd::Replay(a)) => replay(client, a, output).await,
    }
}

fn describe_text(info: &GroupInfo) -> String {
    if let Some(share) = &info.share {
        return describe_share_text(info, share);
    }
    let mut s = format!(
        "group {} (epoch {}, assignor {}, {} members)\n",
        info.group,
        info.epoch,
        info.assignor,
        info.members.len()
    );
    if !info.members.is_empty() {
        s += &format!("\n{:<36} {:<10} {:>6} {:>8}  ASSIGNED\n", "MEMBER", "ZONE", "EPOCH", "HEARD");
        for m in &info.members {
            let assigned: Vec<String> = m.assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            let revoking = match m.revoking.is_empty() {
                true => String::new(),
                false => format!(
                    " (revoking {})",
                    m.revoking.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",")
                ),
            };
            s += &format!(
                "{:<36} {:<10} {:>6} {:>6}ms  {}{}\n",
                m.member_id,
                if m.zone.is_empty() { "-" } else { &m.zone },
                m.epoch,
                m.heard_ms_ago,
                assigned.join(","),
                revoking
            );
        }
    }
    s += &format!(
        "\n{:<24} {:>5} {:>12} {:>14} {:>10} {:>10}  MEMBER\n",
        "TOPIC", "PART", "COMMITTED", "HIGH-WATERMARK", "LAG", "LAG-SECS"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &info.partitions {
        s += &format!(
            "{:<24} {:>5} {:>12} {:>14} {:>10} {:>10}  {}\n",
            p.topic,
            p.partition,
            opt(p.committed),
            opt(p.high_watermark),
            opt(p.lag),
            p.lag_seconds.map_or("-".to_string(), |v| format!("{v:.1}")),
            p.member.as_deref().unwrap_or("-")
        );
    }
    s
}

fn start_name(s: ShareStart) -> &'static str {
    match s {
        ShareStart::Earliest => "beginning",
        ShareStart::Latest => "end",
    }
}

fn describe_share_text(info: &GroupInfo, share: &ShareInfo) -> String {
    let c = &share.config;
    let mut s = format!(
        "share group {} ({} members; max deliveries {}, lock timeout {} ms{}, new partitions from the {}; {} \
         accepted, {} dead-lettered)\n",
        info.group,
        info.members.len(),
        c.max_deliveries,
        c.lock_timeout_ms,
        if c.key_ordered { ", key-ordered" } else { "" },
        start_name(c.start),
        share.accepted,
        share.dead_lettered
    );
    if !info.members.is_empty() {
        s += &format!("\n{:<36} {:>8}  TOPICS\n", "MEMBER", "HEARD");
        for m in &info.members {
            s += &format!("{:<36} {:>6}ms  {}\n", m.member_id, m.heard_ms_ago, m.topics.join(","));
        }
    }
    s += &format!(
        "\n{:<24} {:>5} {:>10} {:>10} {:>14} {:>10} {:>6} {:>6} {:>6}\n",
        "TOPIC", "PART", "START", "END", "HIGH-WATERMARK", "LAG", "HELD", "FREE", "DEAD"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &info.partitions {
        let state = share.partitions.iter().find(|x| x.topic == p.topic && x.partition == p.partition);
        s += &format!(
            "{:<24} {:>5} {:>10} {:>10} {:>14} {:>10} {:>6} {:>6} {:>6}\n",
            p.topic,
            p.partition,
            opt(state.map(|x| x.start)),
            opt(state.map(|x| x.end)),
            opt(p.high_watermark),
            opt(p.lag),
            state.map_or(0, |x| x.held),
            state.map_or(0, |x| x.free),
            state.map_or(0, |x| x.dead),
        );
    }
    s
}

/// `flotilla group dlq replay`.
async fn replay(client: &Client, a: ReplayArgs, output: Output) -> anyhow::Result<()> {
    let dlq = a.dlq_topic.clone().unwrap_or_else(|| flotilla_client::dead_letter_topic(&a.topic, &a.group));
    let position_group = format!("{dlq}.replay");
    let partitions = client.partition_count(&dlq).await.map_err(one_line)?;
    let source_partitions = client.partition_count(&a.topic).await.map_err(one_line)?;
    let committed: BTreeMap<TopicPartition, Offset> = match client.describe_group(&position_group).await {
        Ok(info) => {
            info.partitions.iter().filter_map(|p| Some(((p.topic.clone(), p.partition), p.committed?))).collect()
        }
        Err(e) if e.code() == Some(flotilla_client::ErrorCode::UnknownGroup) => BTreeMap::new(),
        Err(e) => return Err(one_line(e)),
    };
    let producer = client.producer(a.topic.clone(), flotilla_client::ProducerConfig::default());
    let max = a.max.unwrap_or(u64::MAX);
    let mut replayed = 0u64;
    let mut per_partition = Vec::new();
    for p in 0..partitions {
        let (start, end) = client.list_offsets(&dlq, p).await.map_err(one_line)?;
        let from = committed.get(&(dlq.clone(), p)).copied().unwrap_or(start).max(start);
        let mut consumer = client.consumer(&dlq, p, flotilla_client::StartAt::Offset(from)).await.map_err(one_line)?;
        let mut position = from;
        while position < end && replayed < max {
            let records = consumer.poll(Duration::from_millis(500)).await.map_err(one_line)?;
            for r in records {
                if r.offset >= end || replayed >= max {
                    break;
                }
                if !a.dry_run {
                    let source: Option<PartitionId> = r
                        .record
                        .headers
                        .iter()
                        .find(|(k, _)| k == flotilla_client::dlq_headers::PARTITION)
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                        .filter(|p| *p < source_partitions);
                    let mut record = r.record.clone();
                    record.headers.retain(|(k, _)| !k.starts_with(flotilla_client::dlq_headers::PREFIX));
                    record.timestamp_ms = 0;
                    match source {
                        Some(sp) => producer.send_to(sp, record).await.map(drop),
                        None => producer.send(record).await.map(drop),
                    }
                    .map_err(one_line)
                    .with_context(|| format!("replaying {dlq}/{p} offset {}", r.offset))?;
                }
                position = r.offset + 1;
                replayed += 1;
            }
        }
        if !a.dry_run && position > from {
            client
                .commit_offsets(&position_group, None, &[((dlq.clone(), p), position)])
                .await
                .map_err(one_line)
                .context("recording where the replay stopped")?;
        }
        per_partition.push(serde_json::json!({ "partition": p, "from": from, "to": position }));
    }
    let json = serde_json::json!({
        "group": a.group, "topic": a.topic, "dlq_topic": dlq, "replayed": replayed,
        "dry_run": a.dry_run, "partitions": per_partition,
    });
    show(output, &json, || match a.dry_run {
        true => format!("{replayed} records of {dlq} would be replayed into {} (dry run)\n", a.topic),
        false => format!("replayed {replayed} records of {dlq} into {}\n", a.topic),
    })
}

async fn reset(client: &Client, a: ResetArgs, output: Output) -> anyhow::Result<()> {
    let to = parse_reset_to(&a.to)?;
    if a.partition.is_some() && a.topic.len() != 1 {
        bail!("--partition needs exactly one --topic");
    }
    // The group may not exist yet: offsets can be set before its first member joins.
    let info = match client.describe_group(&a.group).await {
        Ok(i) => Some(i),
        Err(e) if e.code() == Some(flotilla_client::ErrorCode::UnknownGroup) => None,
        Err(e) => return Err(one_line(e)),
    };
    let topics: BTreeSet<String> = match a.topic.is_empty() {
        false => a.topic.iter().cloned().collect(),
        true => info
            .iter()
            .flat_map(|i| {
                i.partitions.iter().map(|p| p.topic.clone()).chain(i.members.iter().flat_map(|m| m.topics.clone()))
            })
            .collect(),
    };
    if topics.is_empty() {
        bail!("group '{}' has no offsets and no members: name the topics with --topic", a.group);
    }
    let mut plan = Vec::new();
    for t in &topics {
        let count = client.partition_count(t).await.map_err(one_line)?;
        let partitions: Vec<PartitionId> = match a.partition {
            Some(p) if p >= count => bail!("topic '{t}' has {count} partitions; there is no partition {p}"),
            Some(p) => vec![p],
            None => (0..count).collect(),
        };
        for p in partitions {
            let current = info
                .as_ref()
                .and_then(|i| i.partitions.iter().find(|x| &x.topic == t && x.partition == p))
                .and_then(|x| x.committed);
            let (start, end) = client.list_offsets(t, p).await.map_err(one_line)?;
            let new = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o,
                ResetTo::Timestamp(ms) => client.offset_for_time(t, p, ms).await.map_err(one_line)?,
                ResetTo::Shift(n) => current.unwrap_or(start).saturating_add_signed(n),
            }
            .clamp(start, end);
            plan.push(Planned { topic: t.clone(), partition: p, current, new });
        }
    }
    if !a.dry_run {
        let offsets: Vec<(TopicPartition, Offset)> =
            plan.iter().map(|p| ((p.topic.clone(), p.partition), p.new)).collect();
        client.reset_offsets(&a.group, &offsets).await.map_err(one_line)?;
    }
    let json = serde_json::json!({ "group": a.group, "dry_run": a.dry_run, "offsets": plan });
    show(output, &json, || {
        let mut s = format!("{:<24} {:>5} {:>12} {:>12}\n", "TOPIC", "PART", "CURRENT", "NEW");
        for p in &plan {
            let current = p.current.map_or("-".to_string(), |c| c.to_string());
            s += &format!("{:<24} {:>5} {:>12} {:>12}\n", p.topic, p.partition, current, p.new);
        }
        s += match a.dry_run {
            true => "dry run: nothing changed\n",
            false => "reset; running members seek to these offsets at their next heartbeat\n",
        };
        s
    })
}

/// `flotilla consume TOPIC --group G`.
pub async fn consume_group(
    client: &Client,
    a: ConsumeArgs,
    format: Option<Vec<Piece>>,
    output: Output,
) -> anyhow::Result<()> {
    let group = a.group.clone().expect("called with --group");
    let reset = match a.offset {
        None | Some(StartSpec::Beginning) => OffsetReset::Earliest,
        Some(StartSpec::End) => OffsetReset::Latest,
        Some(_) => bail!(
            "with --group, -o is only beginning or end (where partitions without a committed offset start); \
             move the group's offsets with `flotilla group reset-offsets`"
        ),
    };
    let config = GroupConfig { auto_offset_reset: reset, client_id: "flotilla-cli".into(), ..GroupConfig::default() };
    let mut member = client.group_consumer(&group, &[a.topic.as_str()], config).await.map_err(one_line)?;
    let max = a.max.unwrap_or(u64::MAX);
    let idle_exit = Duration::from_secs(3);
    let mut idle_since = tokio::time::Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result: anyhow::Result<()> = async {
        'outer: while printed < max {
            let records = tokio::select! {
                r = member.poll(Duration::from_millis(500)) => r.map_err(one_line)?,
                _ = tokio::signal::ctrl_c() => break,
            };
            if records.is_empty() {
                if !a.follow && idle_since.elapsed() >= idle_exit {
                    break;
                }
                continue;
            }
            idle_since = tokio::time::Instant::now();
            // Past -n: what this poll returned beyond it is not printed, so not committed.
            let room = (max - printed) as usize;
            if records.len() > room {
                let mut first_unprinted: BTreeMap<PartitionId, Offset> = BTreeMap::new();
                for r in &records[room..] {
                    first_unprinted.entry(r.partition).or_insert(r.offset);
                }
                for (p, offset) in first_unprinted {
                    member.seek(&a.topic, p, offset);
                }
            }
            for r in records.into_iter().take(room) {
                let r = ConsumedRecord { partition: r.partition, offset: r.offset, record: r.record };
                if let Err(e) = write_record(&mut out, output, format.as_deref(), &a, &r) {
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
            out.flush().context("writing standard output")?;
        }
        Ok(())
    }
    .await;
    let _ = out.flush();
    // Commits what was printed and leaves: the partitions go to the other members now.
    let closed = member.close().await.map_err(one_line);
    result.and(closed)
}

/// `flotilla consume TOPIC --share-group G`: every record printed is accepted.
pub async fn consume_share(
    client: &Client,
    a: ConsumeArgs,
    format: Option<Vec<Piece>>,
    output: Output,
) -> anyhow::Result<()> {
    let group = a.share_group.clone().expect("called with --share-group");
    let start = match a.offset {
        Some(StartSpec::Beginning) => Some(ShareStart::Earliest),
        _ if a.from_beginning => Some(ShareStart::Earliest),
        Some(StartSpec::End) => Some(ShareStart::Latest),
        None => None,
        Some(_) => {
            bail!("with --share-group, -o is only beginning or end (where partitions the group never read start)")
        }
    };
    let mut group_config = flotilla_client::ShareConfig { start: start.unwrap_or_default(), ..Default::default() };
    if let Some(n) = a.max_deliveries {
        group_config.max_deliveries = n;
    }
    if let Some(ms) = a.lock_timeout_ms {
        group_config.lock_timeout_ms = ms;
    }
    group_config.key_ordered = a.key_ordered;
    let max = a.max.unwrap_or(u64::MAX);
    let config = ShareGroupConfig {
        client_id: "flotilla-cli".into(),
        group: group_config,
        ack_mode: AckMode::Explicit,
        max_records: max.clamp(1, 500) as u32,
        ..ShareGroupConfig::default()
    };
    let mut member = client.share_consumer(&group, &[a.topic.as_str()], config).await.map_err(one_line)?;
    if let Some(asked) = start
        && member.group_config().start != asked
    {
        eprintln!(
            "note: share group '{group}' starts partitions it never read at the {}, as set when it was created; \
             -o applies to a new group",
            start_name(member.group_config().start)
        );
    }
    let idle_exit = Duration::from_secs(3);
    let mut idle_since = tokio::time::Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result: anyhow::Result<()> = async {
        'outer: while printed < max {
            let records = tokio::select! {
                r = member.poll(Duration::from_millis(500)) => r.map_err(one_line)?,
                _ = tokio::signal::ctrl_c() => break,
            };
            if records.is_empty() {
                if !a.follow && idle_since.elapsed() >= idle_exit {
                    break;
                }
                continue;
            }
            idle_since = tokio::time::Instant::now();
            for r in records {
                if printed >= max {
                    // Not printed: given back to the group at once.
                    member.release(&r, "not printed (consume -n)");
                    continue;
                }
                let c = ConsumedRecord { partition: r.partition, offset: r.offset, record: r.record.clone() };
                if let Err(e) = write_record(&mut out, output, format.as_deref(), &a, &c) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        member.release(&r, "not printed (output closed)");
                        break 'outer;
                    }
                    return Err(e).context("writing standard output");
                }
                member.accept(&r);
                printed += 1;
            }
            out.flush().context("writing standard output")?;
        }
        Ok(())
    }
    .await;
    let _ = out.flush();
    // Sends the acknowledgements and leaves: what it still holds goes to others now.
    let closed = member.close().await.map_err(one_line);
    result.and(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--to earliest --dry-run`: the flag after a one-word target is not taken as its
    /// number (it was, before `allow_negative_numbers` replaced `allow_hyphen_values`).
    #[test]
    fn reset_to_takes_a_negative_shift_but_not_the_next_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            reset: ResetArgs,
        }
        let a = Cli::try_parse_from(["x", "g", "--to", "earliest", "--dry-run"]).unwrap().reset;
        assert_eq!((a.to, a.dry_run), (vec!["earliest".to_string()], true));
        let a = Cli::try_parse_from(["x", "g", "--to", "shift", "-5", "--dry-run"]).unwrap().reset;
        assert_eq!(parse_reset_to(&a.to).unwrap(), ResetTo::Shift(-5));
        assert!(a.dry_run);
    }

    #[test]
    fn reset_targets_parse() {
        let p = |v: &[&str]| parse_reset_to(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["earliest"]).unwrap(), ResetTo::Earliest);
        assert_eq!(p(&["latest"]).unwrap(), ResetTo::Latest);
        assert_eq!(p(&["offset", "42"]).unwrap(), ResetTo::Offset(42));
        assert_eq!(p(&["shift", "-5"]).unwrap(), ResetTo::Shift(-5));
        assert_eq!(p(&["timestamp", "1700000000000"]).unwrap(), ResetTo::Timestamp(1_700_000_000_000));
        assert!(p(&["offset"]).is_err());
        assert!(p(&["earliest", "3"]).is_err());
        assert!(p(&["sideways"]).is_err());
    }
}
