//! Liveness figures: failover time per fault and recovery after the last heal.

use std::collections::BTreeSet;

use super::ops::Operation;
use super::{FailoverFigure, Liveness};
use crate::history::{Event, History, Kind, Op};

pub(super) fn measure<'h>(history: &'h History, ops: &[Operation<'h>]) -> Liveness {
    let n = history.len();
    // first_ack[i]: among sends invoked at index >= i, the ok that came first.
    let mut first_ack: Vec<Option<&Event>> = vec![None; n + 1];
    for op in ops.iter().filter(|op| op.op == Op::Send) {
        if let Some(ok) = op.ok() {
            let slot = &mut first_ack[op.invoke.index];
            if slot.is_none_or(|s| ok.index < s.index) {
                *slot = Some(ok);
            }
        }
    }
    for i in (0..n).rev() {
        if let Some(later) = first_ack[i + 1]
            && first_ack[i].is_none_or(|s| later.index < s.index)
        {
            first_ack[i] = Some(later);
        }
    }
    let ms_after = |e: &Event| first_ack[e.index + 1].map(|ok| ok.time_ms.saturating_sub(e.time_ms));

    // A fault or heal that definitely did not happen does not count.
    let happened = |op: &&Operation<'h>| op.outcome() != Kind::Fail;
    let at = |op: &Operation<'h>| op.completion.unwrap_or(op.invoke);
    let failover = ops
        .iter()
        .filter(|op| op.op == Op::Fault)
        .filter(happened)
        .map(|op| {
            let e = at(op);
            FailoverFigure { event: e.index, note: e.note.clone(), time_ms: e.time_ms, ms_to_next_ack: ms_after(e) }
        })
        .collect();

    let mut liveness = Liveness { failover, ..Liveness::default() };
    let Some(heal) = ops.iter().filter(|op| op.op == Op::Heal).filter(happened).map(at).max_by_key(|e| e.index) else {
        return liveness;
    };
    liveness.last_heal = Some(heal.index);
    liveness.recovery_ms_after_heal = ms_after(heal);
    let mut tried = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for op in ops.iter().filter(|op| op.op == Op::Send) {
        // A send to a topic that no longer exists (deleted by the workload, sent by a
        // client with older metadata) definitely failed and asks no progress of anyone.
        let gone = op.outcome() == Kind::Fail
            && op.completion.is_some_and(|c| c.note.contains("UNKNOWN_TOPIC") || c.note.contains("UNKNOWN_PARTITION"));
        if op.invoke.index > heal.index && !gone {
            tried.insert(op.part());
        }
        if op.ok().is_some_and(|ok| ok.index > heal.index) {
            acked.insert(op.part());
        }
    }
    liveness.partitions_without_ack_after_heal = tried.difference(&acked).map(|(t, p)| (t.to_string(), *p)).collect();
    liveness
}
