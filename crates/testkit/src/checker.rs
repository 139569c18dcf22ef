//! The history checker: what a run's [`History`] must not contain (docs/checker.md items
//! 1–10), and how quickly the cluster recovered.
//!
//! [`check`] judges a history; [`check_replicas`] judges the replicas' logs read at the end
//! of a run. Every anomaly names its kind, partition, offsets, values and the history
//! indexes of the events involved, so a failure can be read without a debugger.
//! Partitions are keyed by (topic, partition): topic names are unique per creation in the
//! workload, so a deleted topic is never recreated under its name.
//!
//! Everything is one pass or a sort over the history (hash indexes, a sweep in history
//! order for real-time order), so 10^5-event histories check in well under a second. Maps
//! whose order reaches the report are `BTreeMap`s, and anomalies are sorted, so a report is
//! deterministic.
//!
//! Layout: `ops` pairs invokes with completions; `values` checks what was written and read
//! where (inconsistent offsets, duplicates, lost and unseen writes, unexpected and aborted
//! reads); `order` checks orders (monotonic sends, contiguous batches, real-time order,
//! high watermarks, poll continuity); `groups` checks consumer groups (item 9); `share`
//! checks share groups (each record accepted once or dead-lettered, key order);
//! `liveness` measures recovery; `replicas` compares replica logs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{History, Kind, Op};

mod groups;
mod liveness;
mod ops;
mod order;
mod replicas;
pub mod share;
mod values;

#[cfg(test)]
mod tests;

/// Anomalies of one kind shown by `Display for Verdict`; the rest are counted.
const ANOMALIES_SHOWN_PER_KIND: usize = 20;
/// Items of one list (offsets, values, events) shown by `Display for Anomaly`.
const LIST_SHOWN_MAX: usize = 10;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AnomalyKind {
    /// Two different values observed at one offset of a partition (acks and/or polls).
    InconsistentOffsets,
    /// One value at more than one offset or in more than one partition, though its send
    /// was idempotent or could not be retried.
    Duplicate,
    /// An acknowledged value never read, though polls read past its offset.
    LostWrite,
    /// An acknowledged value the final drain did not read.
    UnseenAtEnd,
    /// A value read that no send carried (to that partition).
    Unexpected,
    /// A value read whose send definitely failed.
    AbortedRead,
    /// Within one producer session and partition, acknowledged offsets do not increase
    /// in invoke order.
    NonMonotonicSend,
    /// The offsets of one acknowledged batch are not consecutive in record order.
    NonContiguousBatch,
    /// A send invoked after another was acknowledged got an offset not above it.
    RealTimeOrder,
    /// A list-offsets invoked after a send was acknowledged answered a latest offset not
    /// above the send's.
    StaleHighWatermark,
    /// A consumer session did not continue exactly where its previous poll ended, or a
    /// poll's records do not start at its position or are not consecutive.
    PollSkip,
    /// Two replicas disagree below both their commit offsets.
    ReplicaDivergence,
    /// A consumer group's committed offset of a partition went down (docs/checker.md
    /// item 9).
    CommitWentBack,
    /// A group member's commit succeeded although another member had been granted the
    /// partition at a later epoch before the commit was sent: a stale generation committed.
    StaleCommit,
    /// Two members of a group read one partition under the same grant epoch.
    SharedGrant,
    /// An offset below the group's final committed offset was never delivered to any member.
    UndeliveredBelowCommit,
    /// A member's first record of a partition granted to it lies beyond every offset the
    /// group had committed (or might have) before: records were skipped at the hand-over.
    HandOverSkip,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 17] = [
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::Duplicate,
        AnomalyKind::LostWrite,
        AnomalyKind::UnseenAtEnd,
        AnomalyKind::Unexpected,
        AnomalyKind::AbortedRead,
        AnomalyKind::NonMonotonicSend,
        AnomalyKind::NonContiguousBatch,
        AnomalyKind::RealTimeOrder,
        AnomalyKind::StaleHighWatermark,
        AnomalyKind::PollSkip,
        AnomalyKind::ReplicaDivergence,
        AnomalyKind::CommitWentBack,
        AnomalyKind::StaleCommit,
        AnomalyKind::SharedGrant,
        AnomalyKind::UndeliveredBelowCommit,
        AnomalyKind::HandOverSkip,
    ];

    /// The name reports use, e.g. `LOST WRITE`.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::InconsistentOffsets => "INCONSISTENT OFFSETS",
            AnomalyKind::Duplicate => "DUPLICATE",
            AnomalyKind::LostWrite => "LOST WRITE",
            AnomalyKind::UnseenAtEnd => "UNSEEN AT END",
            AnomalyKind::Unexpected => "UNEXPECTED",
            AnomalyKind::AbortedRead => "ABORTED READ",
            AnomalyKind::NonMonotonicSend => "NON-MONOTONIC SEND",
            AnomalyKind::NonContiguousBatch => "NON-CONTIGUOUS BATCH",
            AnomalyKind::RealTimeOrder => "REAL-TIME ORDER",
            AnomalyKind::StaleHighWatermark => "STALE HIGH WATERMARK",
            AnomalyKind::PollSkip => "POLL SKIP",
            AnomalyKind::ReplicaDivergence => "REPLICA DIVERGENCE",
            AnomalyKind::CommitWentBack => "COMMIT WENT BACK",
            AnomalyKind::StaleCommit => "STALE COMMIT",
            AnomalyKind::SharedGrant => "SHARED GRANT",
            AnomalyKind::UndeliveredBelowCommit => "UNDELIVERED BELOW COMMIT",
            AnomalyKind::HandOverSkip => "HAND-OVER SKIP",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation, with what is needed to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub topic: String,
    pub partition: u32,
    /// The offsets involved, in the order the detail names them.
    pub offsets: Vec<u64>,
    /// The values involved, in the order the detail names them.
    pub values: Vec<String>,
    /// History indexes of the events of the operations involved, ascending. Empty for
    /// [`AnomalyKind::ReplicaDivergence`].
    pub events: Vec<usize>,
    /// What happened, naming the events by index (`#812`).
    pub detail: String,
}

impl Anomaly {
    fn new(
        kind: AnomalyKind,
        (topic, partition): ops::Part<'_>,
        offsets: Vec<u64>,
        values: Vec<String>,
        mut events: Vec<usize>,
        detail: String,
    ) -> Anomaly {
        events.sort_unstable();
        events.dedup();
        Anomaly { kind, topic: topic.to_string(), partition, offsets, values, events, detail }
    }
}

/// `a, b, c` with at most [`LIST_SHOWN_MAX`] items, then how many more.
fn list<T: fmt::Display>(items: &[T], prefix: &str) -> String {
    let mut s: Vec<String> = items.iter().take(LIST_SHOWN_MAX).map(|i| format!("{prefix}{i}")).collect();
    if items.len() > LIST_SHOWN_MAX {
        s.push(format!("... ({} more)", items.len() - LIST_SHOWN_MAX));
    }
    s.join(", ")
}

/// `#3, #9`.
fn event_list(events: &[usize]) -> String {
    list(events, "#")
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.topic, self.partition)?;
        match self.offsets.len() {
            0 => {}
            1 => write!(f, " offset {}", self.offsets[0])?,
            _ => write!(f, " offsets {}", list(&self.offsets, ""))?,
        }
        match self.values.len() {
            0 => {}
            1 => write!(f, " value {}", self.values[0])?,
            _ => write!(f, " values {}", list(&self.values, ""))?,
        }
        write!(f, ": {}", self.detail)
    }
}

/// Counts of what the history holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub events: usize,
    pub sends_invoked: usize,
    pub sends_ok: usize,
    pub sends_fail: usize,
    /// Indeterminate sends, those that never returned included.
    pub sends_info: usize,
    /// Records in send invokes.
    pub records_sent: usize,
    /// Records in send oks.
    pub records_acknowledged: usize,
    /// Polls invoked.
    pub polls: usize,
    pub polls_ok: usize,
    /// Records in poll oks.
    pub records_read: usize,
    pub distinct_values_read: usize,
    pub faults: usize,
    pub heals: usize,
    /// Consumer group polls that delivered records, and the records.
    #[serde(default)]
    pub group_polls: usize,
    #[serde(default)]
    pub group_records: usize,
    /// Group commits accepted and refused.
    #[serde(default)]
    pub group_commits_ok: usize,
    #[serde(default)]
    pub group_commits_refused: usize,
}

/// How long one fault took to be followed by an acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverFigure {
    /// The fault's history index.
    pub event: usize,
    pub note: String,
    pub time_ms: u64,
    /// From the fault to the first send ok (any partition) of a send invoked after it;
    /// `None` when there was none.
    pub ms_to_next_ack: Option<u64>,
}

/// Liveness figures: reported, not judged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// The history index of the last heal.
    pub last_heal: Option<usize>,
    /// From the last heal to the first send ok of a send invoked after it.
    pub recovery_ms_after_heal: Option<u64>,
    /// One figure per fault, in history order.
    pub failover: Vec<FailoverFigure>,
    /// Partitions with a send invoked after the last heal but no send ok after it.
    pub partitions_without_ack_after_heal: Vec<(String, u32)>,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.last_heal, self.recovery_ms_after_heal) {
            (None, _) => write!(f, "no heal")?,
            (Some(h), Some(ms)) => write!(f, "first ack {ms} ms after the last heal (#{h})")?,
            (Some(h), None) => write!(f, "no ack after the last heal (#{h})")?,
        }
        if !self.failover.is_empty() {
            let figures: Vec<String> = self
                .failover
                .iter()
                .map(|x| match x.ms_to_next_ack {
                    Some(ms) => format!("#{} {}: {ms} ms", x.event, x.note),
                    None => format!("#{} {}: no ack", x.event, x.note),
                })
                .collect();
            write!(f, "; failover {}", list(&figures, ""))?;
        }
        if !self.partitions_without_ack_after_heal.is_empty() {
            let parts: Vec<String> =
                self.partitions_without_ack_after_heal.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            write!(f, "; no ack after the heal on {}", list(&parts, ""))?;
        }
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Sorted by kind, partition, offsets and events.
    pub anomalies: Vec<Anomaly>,
    pub liveness: Liveness,
    pub stats: Stats,
}

impl Verdict {
    /// True when no anomaly was found.
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// The anomalies of `kind`.
    pub fn of_kind(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.kind == kind)
    }

    /// How many anomalies of each kind were found (kinds with none left out).
    pub fn counts(&self) -> BTreeMap<AnomalyKind, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.anomalies {
            *counts.entry(a.kind).or_insert(0) += 1;
        }
        counts
    }

    /// One line: valid or not, the anomaly counts and the history's size.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let head = if self.is_valid() {
            "VALID".to_string()
        } else {
            let counts: Vec<String> = self.counts().iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!("INVALID ({} anomalies: {})", self.anomalies.len(), counts.join(", "))
        };
        let group = match s.group_polls + s.group_commits_ok + s.group_commits_refused {
            0 => String::new(),
            _ => format!(
                "; group: {} polls, {} records, {} commits ok, {} refused",
                s.group_polls, s.group_records, s.group_commits_ok, s.group_commits_refused
            ),
        };
        format!(
            "{head}; {} events; sends {} invoked, {} ok, {} fail, {} info; {} records acknowledged; \
             {} polls, {} records read, {} distinct values{group}",
            s.events,
            s.sends_invoked,
            s.sends_ok,
            s.sends_fail,
            s.sends_info,
            s.records_acknowledged,
            s.polls,
            s.records_read,
            s.distinct_values_read
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        for (kind, n) in self.counts() {
            for a in self.of_kind(kind).take(ANOMALIES_SHOWN_PER_KIND) {
                writeln!(f, "  {a}")?;
            }
            if n > ANOMALIES_SHOWN_PER_KIND {
                writeln!(f, "  ... and {} more {kind}", n - ANOMALIES_SHOWN_PER_KIND)?;
            }
        }
        write!(f, "liveness: {}", self.liveness)
    }
}

/// One replica's log of one partition, read at the end of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLog {
    pub node: u64,
    pub topic: String,
    pub partition: u32,
    /// Records below this offset are committed on this replica.
    pub commit_offset: u64,
    /// (offset, value), strictly ascending by offset.
    pub records: Vec<(u64, String)>,
}

/// Judges a history: every safety anomaly of docs/checker.md items 1–9, plus liveness
/// figures and counts. Item 10 is [`check_replicas`]'s.
pub fn check(history: &History) -> Verdict {
    let ops = ops::pair(history);
    let mut anomalies = vec![];
    let distinct_values_read = values::check(&ops, &mut anomalies);
    order::check(history, &ops, &mut anomalies);
    groups::check(&ops, &mut anomalies);
    anomalies.sort_by(|a, b| {
        (a.kind, &a.topic, a.partition, &a.offsets, &a.events, &a.values).cmp(&(
            b.kind,
            &b.topic,
            b.partition,
            &b.offsets,
            &b.events,
            &b.values,
        ))
    });
    let mut stats = stats(history, &ops);
    stats.distinct_values_read = distinct_values_read;
    Verdict { anomalies, liveness: liveness::measure(history, &ops), stats }
}

/// Replica divergence (docs/checker.md item 10): for each partition, every pair of replicas
/// agrees at every offset both hold below the lower of their commit offsets, so each
/// one's committed log is a prefix of the other's. Offsets only one of them holds (a log
/// start moved by a snapshot) are not compared. One anomaly per disagreeing pair.
///
/// Panics when a log's records are not strictly ascending: that is the caller's bug.
pub fn check_replicas(replicas: &[ReplicaLog]) -> Vec<Anomaly> {
    replicas::check(replicas)
}

fn stats(history: &History, ops: &[ops::Operation<'_>]) -> Stats {
    let mut s = Stats { events: history.len(), ..Stats::default() };
    for op in ops {
        match op.op {
            Op::Send => {
                s.sends_invoked += 1;
                s.records_sent += op.invoke.records.len();
                match op.outcome() {
                    Kind::Ok => {
                        s.sends_ok += 1;
                        s.records_acknowledged += op.ok().map_or(0, |c| c.records.len());
                    }
                    Kind::Fail => s.sends_fail += 1,
                    Kind::Info | Kind::Invoke => s.sends_info += 1,
                }
            }
            Op::Poll => {
                s.polls += 1;
                if let Some(c) = op.ok() {
                    s.polls_ok += 1;
                    s.records_read += c.records.len();
                }
            }
            Op::GroupPoll => {
                if let Some(c) = op.ok() {
                    s.group_polls += 1;
                    s.group_records += c.records.len();
                }
            }
            Op::GroupCommit => match op.outcome() {
                Kind::Ok => s.group_commits_ok += 1,
                Kind::Fail => s.group_commits_refused += 1,
                _ => {}
            },
            Op::Fault if op.outcome() != Kind::Fail => s.faults += 1,
            Op::Heal if op.outcome() != Kind::Fail => s.heals += 1,
            _ => {}
        }
    }
    s
}
