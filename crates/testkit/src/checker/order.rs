//! Orders: monotonic sends within a producer session, contiguous batches, real-time
//! order between sends, fresh high watermarks, and polls that continue where the last one
//! ended (docs/checker.md items 6–8).

use std::collections::HashMap;

use super::ops::{Operation, Part};
use super::{Anomaly, AnomalyKind, event_list};
use crate::history::{History, Op};

pub(super) fn check(history: &History, ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    monotonic_sends(ops, out);
    real_time(history, ops, out);
    poll_continuity(ops, out);
}

/// The value an acknowledged op carried at `offset` (empty when it is not there).
fn value_at(op: &Operation<'_>, offset: u64) -> String {
    op.ok()
        .and_then(|c| c.records.iter().find(|r| r.offset == Some(offset)))
        .map_or_else(String::new, |r| r.value.clone())
}

/// Acknowledged sends of one (process, session, partition), in invoke order, have
/// increasing offsets; each batch's offsets are consecutive.
fn monotonic_sends(ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    // (process, session, partition) -> the highest offset acknowledged so far, and by
    // which op.
    let mut highest: HashMap<(u64, u64, Part<'_>), (u64, usize)> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if op.op != Op::Send {
            continue;
        }
        let Some(offsets) = op.ok_offsets() else { continue };
        let ok = op.ok().expect("ok_offsets implies ok");
        if let Some(k) = (1..offsets.len()).find(|&k| offsets[k] != offsets[0] + k as u64) {
            out.push(Anomaly::new(
                AnomalyKind::NonContiguousBatch,
                op.part(),
                offsets.clone(),
                ok.records.iter().map(|r| r.value.clone()).collect(),
                op.events(),
                format!(
                    "#{} acknowledged a batch based at offset {} whose record {k} is at offset {}",
                    ok.index, offsets[0], offsets[k]
                ),
            ));
        }
        let (lo, hi) = min_max(&offsets);
        let key = (op.process, op.session, op.part());
        if let Some(&(prev_hi, prev)) = highest.get(&key)
            && lo <= prev_hi
        {
            let p = &ops[prev];
            let mut events = p.events();
            events.extend(op.events());
            out.push(Anomaly::new(
                AnomalyKind::NonMonotonicSend,
                op.part(),
                vec![prev_hi, lo],
                vec![value_at(p, prev_hi), value_at(op, lo)],
                events,
                format!(
                    "process {} session {}: send #{} was acknowledged at offset {prev_hi} (#{}), the later send #{} at offset {lo} (#{})",
                    op.process,
                    op.session,
                    p.invoke.index,
                    p.ok().map_or(p.invoke.index, |c| c.index),
                    op.invoke.index,
                    ok.index
                ),
            ));
        }
        if highest.get(&key).is_none_or(|&(h, _)| hi > h) {
            highest.insert(key, (hi, i));
        }
    }
}

fn min_max(offsets: &[u64]) -> (u64, u64) {
    let lo = offsets.iter().copied().min().expect("at least one offset");
    let hi = offsets.iter().copied().max().expect("at least one offset");
    (lo, hi)
}

/// Real-time order and stale high watermarks, by one sweep in history order: each send
/// and list-offsets remembers, at its invoke, the highest offset acknowledged in its
/// partition so far, and its answer must be above it.
fn real_time(history: &History, ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    // (history index, completion?, op): invokes and ok completions of sends and
    // list-offsets. At one index an invoke sorts before its completion (an op whose
    // completion stands in for its invoke).
    let mut points: Vec<(usize, bool, usize)> = Vec::with_capacity(history.len());
    for (i, op) in ops.iter().enumerate() {
        if matches!(op.op, Op::Send | Op::ListOffsets) {
            points.push((op.invoke.index, false, i));
            if let Some(c) = op.ok() {
                points.push((c.index, true, i));
            }
        }
    }
    points.sort_unstable();
    // partition -> the highest offset acknowledged so far, and by which op.
    let mut highest: HashMap<Part<'_>, (u64, usize)> = HashMap::new();
    // op -> `highest` of its partition when it was invoked.
    let mut bound: Vec<Option<(u64, usize)>> = vec![None; ops.len()];
    for (_, completion, i) in points {
        let op = &ops[i];
        if !completion {
            bound[i] = highest.get(&op.part()).copied();
            continue;
        }
        let ok = op.ok().expect("only ok completions are points");
        match op.op {
            Op::Send => {
                let Some(offsets) = op.ok_offsets() else { continue };
                let (lo, hi) = min_max(&offsets);
                if let Some((a_hi, a)) = bound[i]
                    && lo <= a_hi
                {
                    let a = &ops[a];
                    let mut events = a.events();
                    events.extend(op.events());
                    out.push(Anomaly::new(
                        AnomalyKind::RealTimeOrder,
                        op.part(),
                        vec![a_hi, lo],
                        vec![value_at(a, a_hi), value_at(op, lo)],
                        events,
                        format!(
                            "send {} acknowledged offset {a_hi} before send #{} was invoked, yet #{} acknowledged it at offset {lo}",
                            event_list(&a.events()),
                            op.invoke.index,
                            ok.index
                        ),
                    ));
                }
                if highest.get(&op.part()).is_none_or(|&(h, _)| hi > h) {
                    highest.insert(op.part(), (hi, i));
                }
            }
            Op::ListOffsets => {
                let Some(latest) = ok.offset else { continue };
                if let Some((a_hi, a)) = bound[i]
                    && latest <= a_hi
                {
                    let a = &ops[a];
                    let mut events = a.events();
                    events.extend(op.events());
                    out.push(Anomaly::new(
                        AnomalyKind::StaleHighWatermark,
                        op.part(),
                        vec![a_hi, latest],
                        vec![value_at(a, a_hi)],
                        events,
                        format!(
                            "send {} acknowledged offset {a_hi} before list-offsets #{} was invoked, yet it answered latest {latest} (#{})",
                            event_list(&a.events()),
                            op.invoke.index,
                            ok.index
                        ),
                    ));
                }
            }
            _ => unreachable!("only sends and list-offsets are points"),
        }
    }
}

/// Within one (process, session, partition), each ok poll starts where the previous one
/// ended, and its records start at its position and are consecutive. Failed and
/// indeterminate polls do not move the position. A reader may skip ahead over records a
/// delete-records (that did not definitely fail) may have deleted: up to its offset.
fn poll_continuity(ops: &[Operation<'_>], out: &mut Vec<Anomaly>) {
    let mut deleted_below: HashMap<Part<'_>, u64> = HashMap::new();
    for op in ops.iter().filter(|op| op.op == Op::DeleteRecords && op.outcome() != crate::history::Kind::Fail) {
        let before = op.invoke.offset.unwrap_or(0).max(op.ok().and_then(|c| c.offset).unwrap_or(0));
        let e = deleted_below.entry(op.part()).or_default();
        *e = (*e).max(before);
    }
    // (process, session, partition) -> where the next poll must start, and the op that
    // said so.
    let mut next: HashMap<(u64, u64, Part<'_>), (u64, usize)> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if op.op != Op::Poll {
            continue;
        }
        let (Some(ok), Some(pos)) = (op.ok(), op.position()) else { continue };
        let key = (op.process, op.session, op.part());
        let over_deleted = |expected: u64| pos > expected && deleted_below.get(&op.part()).is_some_and(|&b| pos <= b);
        if let Some(&(expected, prev)) = next.get(&key)
            && pos != expected
            && !over_deleted(expected)
        {
            let p = &ops[prev];
            let mut events = p.events();
            events.extend(op.events());
            let how = if pos > expected { "skipping ahead" } else { "going back" };
            out.push(Anomaly::new(
                AnomalyKind::PollSkip,
                op.part(),
                vec![expected, pos],
                vec![],
                events,
                format!(
                    "process {} session {}: the poll {} ended at offset {expected}, the next poll #{} fetched from {pos} ({how})",
                    op.process,
                    op.session,
                    event_list(&p.events()),
                    op.invoke.index
                ),
            ));
        }
        let offsets: Option<Vec<u64>> = ok.records.iter().map(|r| r.offset).collect();
        if let Some(offsets) = &offsets
            && let Some(&first) = offsets.first()
        {
            if first != pos {
                out.push(Anomaly::new(
                    AnomalyKind::PollSkip,
                    op.part(),
                    vec![pos, first],
                    vec![ok.records[0].value.clone()],
                    op.events(),
                    format!(
                        "the poll {} fetched from {pos} but its first record is at offset {first}",
                        event_list(&op.events())
                    ),
                ));
            }
            if let Some(k) = (1..offsets.len()).find(|&k| offsets[k] != offsets[k - 1].wrapping_add(1)) {
                out.push(Anomaly::new(
                    AnomalyKind::PollSkip,
                    op.part(),
                    vec![offsets[k - 1], offsets[k]],
                    vec![ok.records[k - 1].value.clone(), ok.records[k].value.clone()],
                    op.events(),
                    format!(
                        "the poll {} read offset {} then offset {}",
                        event_list(&op.events()),
                        offsets[k - 1],
                        offsets[k]
                    ),
                ));
            }
        }
        // Where this poll's reader continues: past its last record (which is its position
        // plus the records read when the poll was right; after a bad poll, following the
        // reader avoids reporting one skip twice).
        let end = match offsets.as_deref() {
            Some([.., last]) => last.saturating_add(1),
            _ => pos + ok.records.len() as u64,
        };
        next.insert(key, (end, i));
    }
}
