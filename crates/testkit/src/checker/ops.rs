//! Pairs invokes with their completions: the operations the checks work on.

use std::collections::HashMap;

use crate::history::{Event, History, Kind, Op};

/// A partition: (topic, partition), borrowed from the history.
pub(super) type Part<'h> = (&'h str, u32);

/// One operation: its invoke and, when it returned, its completion.
#[derive(Debug, Clone, Copy)]
pub(super) struct Operation<'h> {
    pub op: Op,
    pub process: u64,
    pub session: u64,
    /// The invoke; for a completion without an invoke (a fault, a heal, a malformed
    /// history), the completion itself.
    pub invoke: &'h Event,
    pub completion: Option<&'h Event>,
}

impl<'h> Operation<'h> {
    /// How it ended: `Info` when it never returned.
    pub fn outcome(&self) -> Kind {
        self.completion.map_or(Kind::Info, |c| c.kind)
    }

    /// The completion, when it is `Ok`.
    pub fn ok(&self) -> Option<&'h Event> {
        self.completion.filter(|c| c.kind == Kind::Ok)
    }

    /// The partition, as the invoke names it.
    pub fn part(&self) -> Part<'h> {
        (self.invoke.topic.as_str(), self.invoke.partition)
    }

    /// The history indexes of its events: the invoke, then the completion.
    pub fn events(&self) -> Vec<usize> {
        match self.completion {
            Some(c) if c.index != self.invoke.index => vec![self.invoke.index, c.index],
            _ => vec![self.invoke.index],
        }
    }

    /// Part of the final drain (marked on the invoke or on the completion).
    pub fn final_drain(&self) -> bool {
        self.invoke.final_drain || self.completion.is_some_and(|c| c.final_drain)
    }

    /// The position a poll fetched from (the completion's, else the invoke's).
    pub fn position(&self) -> Option<u64> {
        self.completion.and_then(|c| c.offset).or(self.invoke.offset)
    }

    /// The offsets of an `Ok` completion's records, when every one is known and there
    /// is at least one.
    pub fn ok_offsets(&self) -> Option<Vec<u64>> {
        let c = self.ok()?;
        if c.records.is_empty() {
            return None;
        }
        c.records.iter().map(|r| r.offset).collect()
    }
}

/// The operations of `history`, in invoke order. A completion goes to the outstanding
/// invoke of its process when the op matches; a new invoke while one is outstanding
/// leaves the earlier one without completion (indeterminate).
pub(super) fn pair(history: &History) -> Vec<Operation<'_>> {
    let mut ops: Vec<Operation<'_>> = Vec::with_capacity(history.len() / 2 + 1);
    // process -> index in `ops` of its outstanding invoke.
    let mut outstanding: HashMap<u64, usize> = HashMap::new();
    for (i, e) in history.events().iter().enumerate() {
        assert_eq!(e.index, i, "event indexes are set by History::push");
        let standalone = Operation { op: e.op, process: e.process, session: e.session, invoke: e, completion: None };
        if e.kind == Kind::Invoke {
            outstanding.insert(e.process, ops.len());
            ops.push(standalone);
            continue;
        }
        match outstanding.get(&e.process) {
            Some(&at) if ops[at].op == e.op => {
                ops[at].completion = Some(e);
                outstanding.remove(&e.process);
            }
            // A fault or heal needs no invoke and leaves the process's outstanding
            // operation alone; any other stray completion ends it.
            Some(_) if matches!(e.op, Op::Fault | Op::Heal) => {
                ops.push(Operation { completion: Some(e), ..standalone })
            }
            Some(_) => {
                outstanding.remove(&e.process);
                ops.push(Operation { completion: Some(e), ..standalone });
            }
            None => ops.push(Operation { completion: Some(e), ..standalone }),
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_pair_with_their_process_invoke() {
        let mut h = History::new();
        h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 0).on("t", 0));
        h.push(Event::new(2, 1, Op::Poll, Kind::Invoke, 1).on("t", 0).offset(0));
        h.push(Event::new(1, 1, Op::Send, Kind::Ok, 2));
        h.push(Event::fault(9, 3, "kill", vec![1]));
        h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 4).on("t", 0));
        h.push(Event::new(1, 1, Op::Send, Kind::Invoke, 5).on("t", 0));
        let ops = pair(&h);
        assert_eq!(ops.len(), 5);
        assert_eq!(ops[0].events(), vec![0, 2]);
        assert_eq!(ops[0].outcome(), Kind::Ok);
        assert_eq!(ops[1].events(), vec![1]);
        assert_eq!(ops[1].outcome(), Kind::Info, "a poll that never returned");
        assert_eq!((ops[2].op, ops[2].events()), (Op::Fault, vec![3]));
        assert_eq!(ops[3].outcome(), Kind::Info, "superseded by a new invoke");
        assert_eq!(ops[4].invoke.index, 5);
    }
}
