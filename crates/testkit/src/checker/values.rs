//! Where each value was written and read: inconsistent offsets, duplicates, lost and
//! unseen writes, unexpected and aborted reads (docs/checker.md items 1–5).

use std::collections::{HashMap, HashSet};

use super::ops::{Operation, Part};
use super::{Anomaly, AnomalyKind, event_list};
use crate::history::{Kind, Op};

/// One value seen at one place: acknowledged by a send or read by a poll.
#[derive(Debug, Clone, Copy)]
struct Seen<'h> {
    part: Part<'h>,
    offset: Option<u64>,
    value: &'h str,
    /// The completion event that carried it.
    event: usize,
    /// Index of its operation in `ops`.
    op: usize,
    ack: bool,
}

impl Seen<'_> {
    fn how(&self) -> &'static str {
        if self.ack { "acknowledged by" } else { "read by" }
    }
}

/// What the history says about values, indexed.
#[derive(Default)]
struct Index<'h> {
    /// value -> indexes in `ops` of the sends that carried it.
    sent: HashMap<&'h str, Vec<usize>>,
    /// Topics with a delete that may have happened.
    deleted: HashSet<&'h str>,
    /// partition -> the highest offset below which records may have been deleted (by a
    /// delete-records that did not definitely fail).
    deleted_below: HashMap<Part<'h>, u64>,
    has_final_drain: bool,
    /// Every acknowledgement and read of a value, in history order.
    seen: Vec<Seen<'h>>,
    /// Values a final-drain poll read.
    drained: HashSet<&'h str>,
    /// (partition, offset) -> the distinct values seen there, each with its first sighting.
    at: HashMap<(Part<'h>, u64), Vec<Seen<'h>>>,
    /// value -> the distinct (partition, offset) it was seen at, each with its first sighting.
    places: HashMap<&'h str, Vec<Seen<'h>>>,
    /// value -> every read of it.
    reads: HashMap<&'h str, Vec<Seen<'h>>>,
    /// partition -> the highest offset read there, and the first event that read it.
    max_read: HashMap<Part<'h>, (u64, usize)>,
    /// partition -> the highest offset the final drain read there, and its event.
    max_drained: HashMap<Part<'h>, (u64, usize)>,
}

impl<'h> Index<'h> {
    fn new(ops: &[Operation<'h>]) -> Index<'h> {
        let mut x = Index::default();
        for (i, op) in ops.iter().enumerate() {
            match op.op {
                Op::Send => {
                    for r in &op.invoke.records {
                        x.sent.entry(r.value.as_str()).or_default().push(i);
                    }
                }
                Op::Poll => x.has_final_drain |= op.final_drain(),
                Op::DeleteTopic if op.outcome() != Kind::Fail => {
                    x.deleted.insert(op.invoke.topic.as_str());
                }
                Op::DeleteRecords if op.outcome() != Kind::Fail => {
                    let before = op.invoke.offset.unwrap_or(0).max(op.ok().and_then(|c| c.offset).unwrap_or(0));
                    let e = x.deleted_below.entry(op.part()).or_default();
                    *e = (*e).max(before);
                }
                _ => {}
            }
            // An acknowledged send and an answered poll both place values at offsets.
            let ack = match op.op {
                Op::Send => true,
                Op::Poll | Op::GroupPoll => false,
                _ => continue,
            };
            let Some(c) = op.ok() else { continue };
            for r in &c.records {
                x.seen.push(Seen { part: op.part(), offset: r.offset, value: &r.value, event: c.index, op: i, ack });
                if !ack && op.final_drain() {
                    x.drained.insert(&r.value);
                }
            }
        }
        // First sightings first, so "the first event that saw it" is the earliest.
        x.seen.sort_by_key(|s| s.event);
        for s in &x.seen {
            if !s.ack {
                x.reads.entry(s.value).or_default().push(*s);
            }
            let Some(offset) = s.offset else { continue };
            if !s.ack {
                raise(x.max_read.entry(s.part).or_insert((offset, s.event)), offset, s.event);
                if ops[s.op].final_drain() {
                    raise(x.max_drained.entry(s.part).or_insert((offset, s.event)), offset, s.event);
                }
            }
            let here = x.at.entry((s.part, offset)).or_default();
            if !here.iter().any(|h| h.value == s.value) {
                here.push(*s);
            }
            let p = x.places.entry(s.value).or_default();
            if !p.iter().any(|h| h.part == s.part && h.offset == s.offset) {
                p.push(*s);
            }
        }
        x
    }

    /// The sends (indexes in `ops`) that carried `value`.
    fn sends(&self, value: &str) -> &[usize] {
        self.sent.get(value).map_or(&[][..], |v| v.as_slice())
    }
}

/// Raises a (max offset, event) pair to `offset` seen at `event`.
fn raise(m: &mut (u64, usize), offset: u64, event: usize) {
    if offset > m.0 {
        *m = (offset, event);
    }
}

/// Runs the checks; returns the number of distinct values read.
pub(super) fn check(ops: &[Operation<'_>], out: &mut Vec<Anomaly>) -> usize {
    let x = Index::new(ops);
    inconsistent_offsets(&x, out);
    duplicates(&x, ops, out);
    lost_and_unseen(&x, ops, out);
    unexpected_and_aborted(&x, ops, out);
    x.reads.len()
}

/// Two different values at one offset.
fn inconsistent_offsets(x: &Index<'_>, out: &mut Vec<Anomaly>) {
    for ((part, offset), values) in &x.at {
        if values.len() > 1 {
            let detail = values.iter().map(|s| format!("{} {} #{}", s.value, s.how(), s.event)).collect::<Vec<_>>();
            out.push(Anomaly::new(
                AnomalyKind::InconsistentOffsets,
                *part,
                vec![*offset],
                values.iter().map(|s| s.value.to_string()).collect(),
                values.iter().map(|s| s.event).collect(),
                format!("different values at one offset: {}", detail.join("; ")),
            ));
        }
    }
}

/// One value at several places, though no send of it could be retried.
fn duplicates(x: &Index<'_>, ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    for (value, p) in &x.places {
        if p.len() < 2 {
            continue;
        }
        let sends = x.sends(value);
        if sends.iter().any(|&i| ops[i].invoke.retries) {
            continue;
        }
        let places: Vec<String> = p
            .iter()
            .map(|s| format!("{}/{} offset {} ({} #{})", s.part.0, s.part.1, s.offset.unwrap_or(0), s.how(), s.event))
            .collect();
        let mut events: Vec<usize> = p.iter().map(|s| s.event).collect();
        events.extend(sends.iter().map(|&i| ops[i].invoke.index));
        out.push(Anomaly::new(
            AnomalyKind::Duplicate,
            p[0].part,
            p.iter().filter_map(|s| s.offset).collect(),
            vec![value.to_string()],
            events,
            format!("at {} places: {}; its send was idempotent or could not be retried", p.len(), places.join(", ")),
        ));
    }
}

/// Lost writes (acknowledged, polls read past it, never read) and writes the final drain
/// did not see, except on deleted topics.
fn lost_and_unseen(x: &Index<'_>, ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    let mut judged: HashSet<&str> = HashSet::new();
    for s in x.seen.iter().filter(|s| s.ack) {
        if x.deleted.contains(s.part.0) || !judged.insert(s.value) {
            continue;
        }
        // Below a log start that a delete-records may have set: deleted, not lost.
        if s.offset.is_some_and(|o| x.deleted_below.get(&s.part).is_some_and(|&below| o < below)) {
            continue;
        }
        let send = &ops[s.op];
        let offsets: Vec<u64> = s.offset.into_iter().collect();
        if !x.reads.contains_key(s.value)
            && let (Some(o), Some(&(max, by))) = (s.offset, x.max_read.get(&s.part))
            && max > o
        {
            let mut events = send.events();
            events.push(by);
            out.push(Anomaly::new(
                AnomalyKind::LostWrite,
                s.part,
                offsets.clone(),
                vec![s.value.to_string()],
                events,
                format!("acknowledged by #{}, polls read up to offset {max} (#{by}) but never saw it", s.event),
            ));
        }
        if x.has_final_drain && !x.drained.contains(s.value) {
            let mut events = send.events();
            let drain = match x.max_drained.get(&s.part) {
                Some(&(max, by)) => {
                    events.push(by);
                    format!("the final drain read this partition up to offset {max} (#{by}) but not this value")
                }
                None => "the final drain read nothing from this partition".to_string(),
            };
            out.push(Anomaly::new(
                AnomalyKind::UnseenAtEnd,
                s.part,
                offsets,
                vec![s.value.to_string()],
                events,
                format!("acknowledged by #{}; {drain}", s.event),
            ));
        }
    }
}

/// Values read that no send carried (to that partition), and values read whose every
/// send definitely failed.
fn unexpected_and_aborted(x: &Index<'_>, ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    for (value, rs) in &x.reads {
        let sends = x.sends(value);
        let read_events: Vec<usize> = rs.iter().map(|s| s.event).collect();
        let offsets: Vec<u64> = rs.iter().filter_map(|s| s.offset).collect();
        if sends.is_empty() {
            out.push(Anomaly::new(
                AnomalyKind::Unexpected,
                rs[0].part,
                offsets,
                vec![value.to_string()],
                read_events.clone(),
                format!("read by {} but no send carried it", event_list(&read_events)),
            ));
            continue;
        }
        // Read from a partition none of its sends went to: one anomaly per partition.
        let mut misrouted: Vec<Part<'_>> = vec![];
        for r in rs {
            if sends.iter().any(|&i| ops[i].part() == r.part) || misrouted.contains(&r.part) {
                continue;
            }
            misrouted.push(r.part);
            let send = &ops[sends[0]];
            let mut events = send.events();
            events.push(r.event);
            out.push(Anomaly::new(
                AnomalyKind::Unexpected,
                r.part,
                r.offset.into_iter().collect(),
                vec![value.to_string()],
                events,
                format!(
                    "read by #{} but sent to {}/{} (#{})",
                    r.event,
                    send.part().0,
                    send.part().1,
                    send.invoke.index
                ),
            ));
        }
        if sends.iter().all(|&i| ops[i].outcome() == Kind::Fail) {
            let send = &ops[sends[0]];
            let mut events = send.events();
            events.extend(&read_events);
            let error = send.completion.map_or("", |c| c.note.as_str());
            out.push(Anomaly::new(
                AnomalyKind::AbortedRead,
                rs[0].part,
                offsets,
                vec![value.to_string()],
                events,
                format!(
                    "its send {} failed definitely ({error}), yet {} read it",
                    event_list(&send.events()),
                    event_list(&read_events)
                ),
            ));
        }
    }
}
