//! Consumer groups (docs/checker.md item 9). A group is named in the `note` of its events;
//! a member is a (process, session) pair, a new session for each time the workload's member
//! joins.
//!
//! - **Commit went back**: per partition, the committed offsets the group answered, in
//!   the order the answers came, and the final one, never go down.
//! - **Stale commit**: a member's commit at member epoch `e` succeeded although another
//!   member had read the partition under a grant epoch above `e` before the commit was
//!   sent: the partition had moved on, the commit came from a stale generation.
//! - **Shared grant**: two members read one partition under one grant epoch.
//! - **Undelivered below commit**: an offset between the log start and the group's final
//!   committed offset that no member was ever given.
//! - **Hand-over skip**: the first record a member got under a grant lies beyond every
//!   offset committed (or possibly committed: unanswered commits count) before it, and
//!   beyond the log start: records were skipped where the partition changed hands.

use std::collections::{BTreeMap, BTreeSet};

use super::ops::Operation;
use super::{Anomaly, AnomalyKind};
use crate::history::{Kind, Op};

/// (group, topic, partition).
type Key<'h> = (&'h str, &'h str, u32);
/// (process, session).
type Member = (u64, u64);

/// One grant as the member saw it: the first ok poll under it.
struct Grant {
    member: Member,
    epoch: u64,
    /// History index of the first ok poll under the grant, and its first offset.
    first_index: usize,
    first_offset: Option<u64>,
    events: Vec<usize>,
}

fn key<'h>(op: &Operation<'h>) -> Key<'h> {
    (op.invoke.note.as_str(), op.invoke.topic.as_str(), op.invoke.partition)
}

pub(super) fn check<'h>(ops: &[Operation<'h>], out: &mut Vec<Anomaly>) {
    let mut grants: BTreeMap<Key<'h>, BTreeMap<(Member, u64), Grant>> = BTreeMap::new();
    let mut delivered: BTreeMap<Key<'h>, BTreeSet<u64>> = BTreeMap::new();
    // Commits: (invoke index, completion index or none, member, epoch, offset sent, answer).
    let mut commits: BTreeMap<Key<'h>, Vec<&Operation<'h>>> = BTreeMap::new();
    let mut finals: Vec<&Operation<'h>> = Vec::new();
    for op in ops {
        match op.op {
            Op::GroupPoll => {
                let Some(c) = op.ok() else { continue };
                let Some(epoch) = c.epoch.or(op.invoke.epoch) else { continue };
                let member = (op.process, op.session);
                let set = delivered.entry(key(op)).or_default();
                set.extend(c.records.iter().filter_map(|r| r.offset));
                let g = grants.entry(key(op)).or_default().entry((member, epoch)).or_insert(Grant {
                    member,
                    epoch,
                    first_index: c.index,
                    first_offset: None,
                    events: op.events(),
                });
                if g.first_offset.is_none() {
                    g.first_offset = c.records.iter().filter_map(|r| r.offset).min();
                    if g.first_offset.is_some() {
                        g.first_index = c.index;
                        g.events = op.events();
                    }
                }
            }
            Op::GroupCommit => commits.entry(key(op)).or_default().push(op),
            Op::GroupOffsets if op.ok().is_some() => finals.push(op),
            _ => {}
        }
    }

    // Shared grants.
    for (k, gs) in &grants {
        let mut by_epoch: BTreeMap<u64, Vec<&Grant>> = BTreeMap::new();
        for g in gs.values() {
            by_epoch.entry(g.epoch).or_default().push(g);
        }
        for (epoch, gs) in by_epoch.into_iter().filter(|(_, gs)| gs.len() > 1) {
            let members: Vec<String> = gs.iter().map(|g| format!("{}/{}", g.member.0, g.member.1)).collect();
            out.push(Anomaly::new(
                AnomalyKind::SharedGrant,
                (k.1, k.2),
                vec![],
                vec![],
                gs.iter().flat_map(|g| g.events.clone()).collect(),
                format!("group {}: members {} all read it under grant epoch {epoch}", k.0, members.join(", ")),
            ));
        }
    }

    for (k, cs) in &commits {
        // Commit went back: answers in completion order.
        let mut answered: Vec<(usize, u64, &Operation<'_>)> =
            cs.iter().filter_map(|op| Some((op.ok()?.index, op.ok()?.offset?, *op))).collect();
        answered.sort_by_key(|(i, ..)| *i);
        let mut high: Option<(u64, &Operation<'_>)> = None;
        for (_, offset, op) in &answered {
            if let Some((h, before)) = high
                && *offset < h
            {
                let mut events = before.events();
                events.extend(op.events());
                out.push(Anomaly::new(
                    AnomalyKind::CommitWentBack,
                    (k.1, k.2),
                    vec![h, *offset],
                    vec![],
                    events,
                    format!("group {}: committed offset {h} answered, then {offset}", k.0),
                ));
            }
            if high.is_none_or(|(h, _)| *offset > h) {
                high = Some((*offset, op));
            }
        }
        // Stale commits.
        let Some(gs) = grants.get(k) else { continue };
        for op in cs.iter().filter(|op| op.ok().is_some()) {
            let (member, Some(epoch)) = ((op.process, op.session), op.invoke.epoch) else { continue };
            if let Some(newer) = gs
                .values()
                .filter(|g| g.member != member && g.epoch > epoch && g.first_index < op.invoke.index)
                .min_by_key(|g| g.first_index)
            {
                let mut events = newer.events.clone();
                events.extend(op.events());
                out.push(Anomaly::new(
                    AnomalyKind::StaleCommit,
                    (k.1, k.2),
                    op.invoke.offset.into_iter().collect(),
                    vec![],
                    events,
                    format!(
                        "group {}: member {}/{} committed at epoch {epoch} (#{}), after member {}/{} read the \
                         partition under grant epoch {} (#{}), and the commit was accepted",
                        k.0,
                        member.0,
                        member.1,
                        op.invoke.index,
                        newer.member.0,
                        newer.member.1,
                        newer.epoch,
                        newer.first_index
                    ),
                ));
            }
        }
    }

    for f in finals {
        let k = key(f);
        let Some(last) = f.ok().and_then(|c| c.offset) else { continue };
        let start = f.invoke.offset.unwrap_or(0);
        // The final offset against every answer.
        if let Some(op) = commits.get(&k).into_iter().flatten().find(|op| op.ok().and_then(|c| c.offset) > Some(last)) {
            let mut events = op.events();
            events.extend(f.events());
            let answered = op.ok().and_then(|c| c.offset).unwrap_or_default();
            out.push(Anomaly::new(
                AnomalyKind::CommitWentBack,
                (k.1, k.2),
                vec![answered, last],
                vec![],
                events,
                format!("group {}: committed offset {answered} answered, {last} at the end", k.0),
            ));
        }
        let got = delivered.get(&k).cloned().unwrap_or_default();
        let missing: Vec<u64> = (start..last).filter(|o| !got.contains(o)).collect();
        if !missing.is_empty() {
            out.push(Anomaly::new(
                AnomalyKind::UndeliveredBelowCommit,
                (k.1, k.2),
                missing.clone(),
                vec![],
                f.events(),
                format!(
                    "group {}: final committed offset {last}, but {} offset(s) from the log start {start} below it \
                     were never delivered to a member",
                    k.0,
                    missing.len()
                ),
            ));
        }
        // Hand-over skips, now that the log start is known.
        for g in grants.get(&k).into_iter().flat_map(|gs| gs.values()) {
            let Some(first) = g.first_offset else { continue };
            let bound = commits
                .get(&k)
                .into_iter()
                .flatten()
                .filter(|op| op.invoke.index < g.first_index && op.outcome() != Kind::Fail)
                .filter_map(|op| op.ok().and_then(|c| c.offset).or(op.invoke.offset))
                .max()
                .unwrap_or(start)
                .max(start);
            if first > bound {
                out.push(Anomaly::new(
                    AnomalyKind::HandOverSkip,
                    (k.1, k.2),
                    vec![bound, first],
                    vec![],
                    g.events.clone(),
                    format!(
                        "group {}: member {}/{} started at offset {first} under grant epoch {}, but nothing beyond \
                         {bound} had been committed",
                        k.0, g.member.0, g.member.1, g.epoch
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::checker::{AnomalyKind, check};
    use crate::history::{Event, History, Kind, Op};

    fn poll(h: &mut History, member: (u64, u64), partition: u32, epoch: u64, from: u64, n: u64) {
        let (p, s) = member;
        h.push(Event::new(p, s, Op::GroupPoll, Kind::Invoke, 0).on("t", partition).note("g"));
        let values: Vec<String> = (from..from + n).map(|o| format!("v{o}")).collect();
        h.push(
            Event::new(p, s, Op::GroupPoll, Kind::Ok, 0)
                .on("t", partition)
                .note("g")
                .epoch(epoch)
                .records_from(from, values),
        );
    }

    fn commit(h: &mut History, member: (u64, u64), partition: u32, epoch: u64, offset: u64, answer: Option<u64>) {
        let (p, s) = member;
        h.push(
            Event::new(p, s, Op::GroupCommit, Kind::Invoke, 0).on("t", partition).note("g").epoch(epoch).offset(offset),
        );
        let done = Event::new(p, s, Op::GroupCommit, if answer.is_some() { Kind::Ok } else { Kind::Fail }, 0)
            .on("t", partition)
            .note("g");
        h.push(match answer {
            Some(a) => done.offset(a),
            None => done,
        });
    }

    fn end(h: &mut History, partition: u32, start: u64, committed: u64) {
        h.push(Event::new(300, 0, Op::GroupOffsets, Kind::Invoke, 0).on("t", partition).note("g").offset(start));
        h.push(Event::new(300, 0, Op::GroupOffsets, Kind::Ok, 0).on("t", partition).note("g").offset(committed));
    }

    /// The sends of values v0..vN to partition 0, so that group polls read known values.
    fn sent(h: &mut History, n: u64) {
        h.push(Event::new(1, 0, Op::Send, Kind::Invoke, 0).on("t", 0).values((0..n).map(|o| format!("v{o}"))));
        h.push(Event::new(1, 0, Op::Send, Kind::Ok, 0).on("t", 0).records_from(0, (0..n).map(|o| format!("v{o}"))));
    }

    fn kinds(h: &History) -> Vec<AnomalyKind> {
        check(h).anomalies.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_clean_hand_over_is_valid() {
        let mut h = History::new();
        sent(&mut h, 20);
        poll(&mut h, (10, 1), 0, 3, 0, 10);
        commit(&mut h, (10, 1), 0, 3, 10, Some(10));
        poll(&mut h, (11, 1), 0, 5, 10, 10);
        commit(&mut h, (11, 1), 0, 5, 20, Some(20));
        end(&mut h, 0, 0, 20);
        assert_eq!(kinds(&h), vec![]);
    }

    #[test]
    fn a_stale_generations_accepted_commit_is_found() {
        let mut h = History::new();
        sent(&mut h, 20);
        poll(&mut h, (10, 1), 0, 3, 0, 10);
        poll(&mut h, (11, 1), 0, 5, 0, 20);
        // Member 10, evicted meanwhile, commits at its old epoch: accepted.
        commit(&mut h, (10, 1), 0, 3, 10, Some(10));
        // Refused: no anomaly.
        commit(&mut h, (10, 1), 0, 3, 10, None);
        commit(&mut h, (11, 1), 0, 5, 20, Some(20));
        end(&mut h, 0, 0, 20);
        assert_eq!(kinds(&h), vec![AnomalyKind::StaleCommit]);
    }

    #[test]
    fn shared_grants_skips_and_undelivered_offsets_and_commits_going_back_are_found() {
        let mut h = History::new();
        sent(&mut h, 30);
        poll(&mut h, (10, 1), 0, 3, 0, 10);
        poll(&mut h, (11, 1), 0, 3, 0, 5);
        commit(&mut h, (10, 1), 0, 3, 10, Some(10));
        // The next owner starts at 15: 10..15 skipped at the hand-over, never delivered.
        poll(&mut h, (12, 1), 0, 6, 15, 5);
        commit(&mut h, (12, 1), 0, 6, 20, Some(20));
        commit(&mut h, (12, 1), 0, 6, 20, Some(18));
        end(&mut h, 0, 0, 20);
        let mut k = kinds(&h);
        // Also a lost write: the group read past values no read ever returned.
        k.retain(|k| *k != AnomalyKind::LostWrite);
        k.sort();
        k.dedup();
        assert_eq!(
            k,
            vec![
                AnomalyKind::CommitWentBack,
                AnomalyKind::SharedGrant,
                AnomalyKind::UndeliveredBelowCommit,
                AnomalyKind::HandOverSkip
            ]
        );
    }
}
