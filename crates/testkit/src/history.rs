//! The history of a test run: every client operation, recorded when it is invoked and
//! when it returns, plus the nemesis's faults and heals.
//!
//! One format for the simulation tiers and the chaos suite, so that one checker
//! ([`crate::checker::check`]) judges them all. A history is saved and replayed as JSON
//! lines, one [`Event`] per line ([`History::to_jsonl`], [`History::from_jsonl`]).
//!
//! Pairing rule: a completion (`Ok`, `Fail`, `Info`) belongs to the most recent `Invoke`
//! of the same process, since a process has at most one operation outstanding. An
//! `Invoke` that never completes counts as `Info` (indeterminate). `Fault` and `Heal`
//! are single events of the nemesis process, without an invoke.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The process id [`crate::recorder::Recorder`] gives the nemesis's fault and heal events.
pub const NEMESIS_PROCESS: u64 = u64::MAX;

/// What an event is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A batch of records produced to one partition.
    #[default]
    Send,
    /// One fetch from an explicit position of one partition.
    Poll,
    /// The latest offset (high watermark) of one partition.
    ListOffsets,
    CreateTopic,
    DeleteTopic,
    /// Records of one partition deleted below an offset (the invoke's offset; the
    /// completion's: the log start after it). Records below are deleted, not lost.
    DeleteRecords,
    /// A consumer group member's poll of one partition (docs/checker.md item 9): ok carries
    /// the records delivered, `epoch` the epoch the partition was granted to the member at;
    /// the member is the process and session.
    GroupPoll,
    /// A group member's commit of one partition: the invoke's offset and `epoch` (the
    /// member epoch sent); ok's offset is the group's committed offset after it.
    GroupCommit,
    /// The group's committed offset of one partition read at the end (ok's offset).
    GroupOffsets,
    /// The nemesis injected a fault.
    Fault,
    /// The nemesis healed faults.
    Heal,
}

/// Which half of an operation an event records, and how it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The operation started.
    #[default]
    Invoke,
    /// It succeeded.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// Indeterminate: it may or may not have happened.
    Info,
}

/// One record of a send or a poll: its value, and its offset once known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub value: String,
}

impl Record {
    /// A record whose offset is not known (a send's invoke).
    pub fn value(value: impl Into<String>) -> Record {
        Record { offset: None, value: value.into() }
    }

    /// A record at `offset`.
    pub fn at(offset: u64, value: impl Into<String>) -> Record {
        Record { offset: Some(offset), value: value.into() }
    }
}

/// One line of a history. Build with [`Event::new`] and the chained setters:
///
/// ```
/// use flotilla_testkit::history::{Event, History, Kind, Op};
///
/// let mut h = History::new();
/// h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 0).on("t", 0).values(["1:0", "1:1"]).retries(true));
/// h.push(Event::new(1, 1, Op::Send, Kind::Ok, 3).on("t", 0).records_from(40, ["1:0", "1:1"]));
/// h.push(Event::new(2, 1, Op::Poll, Kind::Invoke, 4).on("t", 0).offset(40));
/// h.push(Event::new(2, 1, Op::Poll, Kind::Ok, 5).on("t", 0).offset(40).records_from(40, ["1:0", "1:1"]));
/// assert_eq!(h.len(), 4);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Position in the history, set by [`History::push`].
    pub index: usize,
    /// The workload process (a producer, a consumer, the nemesis); at most one operation
    /// outstanding per process.
    pub process: u64,
    /// The producer or consumer session; a consumer that seeks or restarts starts a new one.
    pub session: u64,
    pub op: Op,
    pub kind: Kind,
    /// Milliseconds since the run started (simulated or wall time).
    pub time_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub topic: String,
    pub partition: u32,
    /// Send invoke: the batch's values (offsets `None`); send ok: the same values with
    /// their offsets; poll ok: the records read, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// Poll invoke and ok: the position fetched from; list-offsets ok: the latest offset
    /// (the next offset to be written, the high watermark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Send invoke: the client may retry this send after an indeterminate error without
    /// idempotence, so duplicates of its values are allowed. False for an idempotent
    /// producer's sends: the checker forbids their duplicates outright.
    #[serde(skip_serializing_if = "is_false")]
    pub retries: bool,
    /// Group poll: the grant epoch; group commit: the member epoch sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Poll: part of the final full drain after every fault healed.
    #[serde(skip_serializing_if = "is_false")]
    pub final_drain: bool,
    /// Fault and heal: what was done; fail and info: the error.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Fault: the node ids the fault touched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Event {
    /// An event with no topic, records, offset or note yet.
    pub fn new(process: u64, session: u64, op: Op, kind: Kind, time_ms: u64) -> Event {
        Event { process, session, op, kind, time_ms, ..Event::default() }
    }

    /// A fault the nemesis injected (an `Info` event: its effect is whatever it was).
    pub fn fault(process: u64, time_ms: u64, note: impl Into<String>, nodes: Vec<u64>) -> Event {
        Event::new(process, 0, Op::Fault, Kind::Info, time_ms).note(note).nodes(nodes)
    }

    /// The nemesis healed faults (an `Info` event).
    pub fn heal(process: u64, time_ms: u64, note: impl Into<String>) -> Event {
        Event::new(process, 0, Op::Heal, Kind::Info, time_ms).note(note)
    }

    /// Sets the topic and partition.
    pub fn on(mut self, topic: impl Into<String>, partition: u32) -> Event {
        self.topic = topic.into();
        self.partition = partition;
        self
    }

    /// Sets the records to `values` without offsets (a send's invoke).
    pub fn values<I, S>(mut self, values: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.records = values.into_iter().map(Record::value).collect();
        self
    }

    /// Sets the records to `values` at `base`, `base + 1`, ... (a send's ok, a poll's ok).
    pub fn records_from<I, S>(mut self, base: u64, values: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.records = values.into_iter().zip(base..).map(|(v, o)| Record::at(o, v)).collect();
        self
    }

    /// Sets the records.
    pub fn records(mut self, records: Vec<Record>) -> Event {
        self.records = records;
        self
    }

    /// Sets the offset: a poll's position, a list-offsets answer.
    pub fn offset(mut self, offset: u64) -> Event {
        self.offset = Some(offset);
        self
    }

    /// Sets the epoch: a group poll's grant epoch, a group commit's member epoch.
    pub fn epoch(mut self, epoch: u64) -> Event {
        self.epoch = Some(epoch);
        self
    }

    /// Sets whether the client may retry this send after an indeterminate error.
    pub fn retries(mut self, retries: bool) -> Event {
        self.retries = retries;
        self
    }

    /// Marks a poll as part of the final drain.
    pub fn final_drain(mut self, final_drain: bool) -> Event {
        self.final_drain = final_drain;
        self
    }

    /// Sets the note: what a fault did, or a failure's error.
    pub fn note(mut self, note: impl Into<String>) -> Event {
        self.note = note.into();
        self
    }

    /// Sets the nodes a fault touched.
    pub fn nodes(mut self, nodes: Vec<u64>) -> Event {
        self.nodes = nodes;
        self
    }

    /// True for `Ok`, `Fail` and `Info`: the second half of an operation.
    pub fn is_completion(&self) -> bool {
        self.kind != Kind::Invoke
    }
}

/// A history: events in the order they happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    events: Vec<Event>,
}

/// A history file that could not be read.
#[derive(Debug)]
pub enum HistoryError {
    Io(std::io::Error),
    /// Line `line` (1-based) is not an event.
    Parse {
        line: usize,
        error: serde_json::Error,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io(e) => write!(f, "cannot read the history: {e}"),
            HistoryError::Parse { line, error } => write!(f, "history line {line} is not an event: {error}"),
        }
    }
}

impl std::error::Error for HistoryError {}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Appends `event`, setting its index to its position; returns the index.
    pub fn push(&mut self, mut event: Event) -> usize {
        let index = self.events.len();
        event.index = index;
        self.events.push(event);
        index
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// One JSON object per line, each line ending in `\n`.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            out.push_str(&serde_json::to_string(e).expect("an event serialises"));
            out.push('\n');
        }
        out
    }

    /// Reads [`History::to_jsonl`]'s output. Blank lines are skipped; indexes are set anew
    /// from the order of the lines.
    pub fn from_jsonl(text: &str) -> Result<History, HistoryError> {
        let mut h = History::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(line).map_err(|error| HistoryError::Parse { line: i + 1, error })?;
            h.push(event);
        }
        Ok(h)
    }

    /// Writes the history to `path` as JSON lines.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        std::fs::write(path, self.to_jsonl()).map_err(HistoryError::Io)
    }

    /// Reads a history saved by [`History::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        History::from_jsonl(&std::fs::read_to_string(path).map_err(HistoryError::Io)?)
    }
}

impl From<Vec<Event>> for History {
    /// The events in order, their indexes set anew.
    fn from(events: Vec<Event>) -> History {
        let mut h = History::new();
        for e in events {
            h.push(e);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_sets_the_index() {
        let mut h = History::new();
        assert_eq!(h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 0).on("t", 2).values(["a"])), 0);
        let mut e = Event::new(1, 1, Op::Send, Kind::Ok, 1);
        e.index = 77;
        assert_eq!(h.push(e), 1);
        assert_eq!(h.events()[1].index, 1);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn jsonl_round_trips_and_omits_defaults() {
        let mut h = History::new();
        h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 0).on("t", 2).values(["a", "b"]).retries(true));
        h.push(Event::new(1, 1, Op::Send, Kind::Ok, 5).on("t", 2).records_from(7, ["a", "b"]));
        h.push(Event::new(2, 3, Op::Poll, Kind::Invoke, 6).on("t", 2).offset(7).final_drain(true));
        h.push(Event::fault(NEMESIS_PROCESS, 8, "kill n1", vec![1]));
        h.push(Event::new(2, 3, Op::Poll, Kind::Info, 9).on("t", 2).note("timeout"));
        let text = h.to_jsonl();
        assert_eq!(text.lines().count(), 5);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"index":0,"process":1,"session":1,"op":"send","kind":"invoke","time_ms":0,"topic":"t","partition":2,"records":[{"value":"a"},{"value":"b"}],"retries":true}"#
        );
        assert!(text.lines().nth(1).unwrap().contains(r#"{"offset":8,"value":"b"}"#), "{text}");
        assert!(!text.contains("final_drain\":false"));
        let back = History::from_jsonl(&format!("\n{text}\n")).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = History::from_jsonl("{\"op\":\"send\"}\nnot json\n").unwrap_err();
        assert!(matches!(e, HistoryError::Parse { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
