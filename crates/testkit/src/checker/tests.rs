//! Hand-made histories: one per anomaly kind, and valid ones that look suspicious.

#![allow(clippy::disallowed_methods, reason = "a test timing the checker in real time")]

use super::*;
use crate::history::Event;

const T: &str = "t";

/// A history under construction; each event's time is 10 ms after the previous one's.
#[derive(Default)]
struct H(History);

impl H {
    fn push(&mut self, mut e: Event) -> usize {
        e.time_ms = self.0.len() as u64 * 10;
        self.0.push(e)
    }

    /// A send invoke of `values` to t/`partition` by `process` (session 1).
    fn send(&mut self, process: u64, partition: u32, values: &[&str], retries: bool) -> usize {
        self.push(
            Event::new(process, 1, Op::Send, Kind::Invoke, 0)
                .on(T, partition)
                .values(values.iter().copied())
                .retries(retries),
        )
    }

    /// The send's ok: `values` at `base`, `base + 1`, ...
    fn send_ok(&mut self, process: u64, partition: u32, base: u64, values: &[&str]) -> usize {
        self.push(
            Event::new(process, 1, Op::Send, Kind::Ok, 0).on(T, partition).records_from(base, values.iter().copied()),
        )
    }

    fn end(&mut self, process: u64, op: Op, kind: Kind, note: &str) -> usize {
        self.push(Event::new(process, 1, op, kind, 0).on(T, 0).note(note))
    }

    /// A send of `values` to t/0 acknowledged at `base`; the ok's index.
    fn acked(&mut self, process: u64, base: u64, values: &[&str]) -> usize {
        self.send(process, 0, values, false);
        self.send_ok(process, 0, base, values)
    }

    /// A poll of t/`partition` from `pos` reading `values` at `pos`, `pos + 1`, ...; the
    /// ok's index.
    fn read(&mut self, process: u64, session: u64, partition: u32, pos: u64, values: &[&str]) -> usize {
        self.poll_records(
            process,
            session,
            partition,
            pos,
            Event::default().records_from(pos, values.iter().copied()).records,
        )
    }

    fn poll_records(
        &mut self,
        process: u64,
        session: u64,
        partition: u32,
        pos: u64,
        records: Vec<crate::history::Record>,
    ) -> usize {
        self.push(Event::new(process, session, Op::Poll, Kind::Invoke, 0).on(T, partition).offset(pos));
        self.push(Event::new(process, session, Op::Poll, Kind::Ok, 0).on(T, partition).offset(pos).records(records))
    }

    /// A final-drain poll of t/0; the ok's index.
    fn drain(&mut self, process: u64, pos: u64, values: &[&str]) -> usize {
        let records = Event::default().records_from(pos, values.iter().copied()).records;
        self.push(Event::new(process, 1, Op::Poll, Kind::Invoke, 0).on(T, 0).offset(pos).final_drain(true));
        self.push(Event::new(process, 1, Op::Poll, Kind::Ok, 0).on(T, 0).offset(pos).records(records).final_drain(true))
    }

    fn check(&self) -> Verdict {
        let v = check(&self.0);
        // Every verdict also survives a save and a replay.
        assert_eq!(check(&History::from_jsonl(&self.0.to_jsonl()).unwrap()), v);
        v
    }
}

fn kinds(v: &Verdict) -> Vec<AnomalyKind> {
    v.anomalies.iter().map(|a| a.kind).collect()
}

fn only(v: &Verdict, kind: AnomalyKind) -> &Anomaly {
    assert_eq!(kinds(v), vec![kind], "{v}");
    &v.anomalies[0]
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn t10_inconsistent_offsets() {
    let mut h = H::default();
    h.send(1, 0, &["a"], false);
    h.send(2, 0, &["b"], false);
    let ok_a = h.send_ok(1, 0, 0, &["a"]);
    let ok_b = h.send_ok(2, 0, 0, &["b"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::InconsistentOffsets);
    assert_eq!((a.topic.as_str(), a.partition, &a.offsets), (T, 0, &vec![0]));
    assert_eq!(a.values, strings(&["a", "b"]));
    assert_eq!(a.events, vec![ok_a, ok_b]);
    assert_eq!(
        a.to_string(),
        "INCONSISTENT OFFSETS t/0 offset 0 values a, b: different values at one offset: a acknowledged by #2; b acknowledged by #3"
    );
}

#[test]
fn t10_inconsistent_offsets_between_an_ack_and_a_read() {
    let mut h = H::default();
    let ok = h.acked(1, 0, &["a"]);
    h.send(1, 0, &["b"], false);
    h.end(1, Op::Send, Kind::Info, "timeout");
    let read = h.read(2, 1, 0, 0, &["b"]);
    let v = h.check();
    let kinds = kinds(&v);
    assert!(kinds.contains(&AnomalyKind::InconsistentOffsets), "{v}");
    let a = v.of_kind(AnomalyKind::InconsistentOffsets).next().unwrap();
    assert_eq!((a.offsets.clone(), a.events.clone()), (vec![0], vec![ok, read]));
}

#[test]
fn t11_duplicate_without_retries() {
    let mut h = H::default();
    let inv = h.send(1, 0, &["a"], false);
    let ok = h.send_ok(1, 0, 0, &["a"]);
    let read = h.read(2, 1, 0, 0, &["a", "a"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::Duplicate);
    assert_eq!((a.partition, a.offsets.clone(), a.values.clone()), (0, vec![0, 1], strings(&["a"])));
    assert_eq!(a.events, vec![inv, ok, read]);
    assert!(a.detail.contains("t/0 offset 1 (read by #3)"), "{a}");
}

#[test]
fn t11_duplicate_across_partitions() {
    let mut h = H::default();
    h.send(1, 0, &["a"], false);
    let ok0 = h.send_ok(1, 0, 3, &["a"]);
    let read = h.read(2, 1, 1, 0, &["a"]);
    let v = h.check();
    let dup = v.of_kind(AnomalyKind::Duplicate).next().expect("a duplicate");
    assert_eq!(dup.offsets, vec![3, 0]);
    assert_eq!(dup.events, vec![0, ok0, read]);
    // Read from a partition it was not sent to: unexpected there, too.
    let u = v.of_kind(AnomalyKind::Unexpected).next().expect("misrouted");
    assert_eq!((u.partition, u.offsets.clone()), (1, vec![0]));
}

#[test]
fn t12_lost_write() {
    let mut h = H::default();
    let inv = h.send(1, 0, &["a"], false);
    let ok = h.send_ok(1, 0, 0, &["a"]);
    h.acked(1, 1, &["b"]);
    let read = h.read(2, 1, 0, 1, &["b"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::LostWrite);
    assert_eq!((a.partition, a.offsets.clone(), a.values.clone()), (0, vec![0], strings(&["a"])));
    assert_eq!(a.events, vec![inv, ok, read]);
    assert_eq!(
        a.to_string(),
        "LOST WRITE t/0 offset 0 value a: acknowledged by #1, polls read up to offset 1 (#5) but never saw it"
    );
}

#[test]
fn t13_unseen_at_end() {
    let mut h = H::default();
    let ok = h.acked(1, 0, &["a"]);
    h.drain(2, 0, &[]);
    let v = h.check();
    let a = only(&v, AnomalyKind::UnseenAtEnd);
    assert_eq!((a.offsets.clone(), a.values.clone(), a.events.clone()), (vec![0], strings(&["a"]), vec![0, ok]));
    assert!(a.detail.contains("read nothing from this partition"), "{a}");

    // Read by an ordinary poll, but not by the drain: still unseen at the end.
    let mut h = H::default();
    h.acked(1, 0, &["a"]);
    h.acked(1, 1, &["b"]);
    h.read(3, 1, 0, 0, &["a"]);
    let drain_ok = h.drain(2, 1, &["b"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::UnseenAtEnd);
    assert_eq!((a.offsets.clone(), a.events.clone()), (vec![0], vec![0, 1, drain_ok]));
}

#[test]
fn t14_unexpected() {
    let mut h = H::default();
    h.acked(1, 0, &["a"]);
    let read = h.read(2, 1, 0, 0, &["a", "ghost"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::Unexpected);
    assert_eq!((a.offsets.clone(), a.values.clone(), a.events.clone()), (vec![1], strings(&["ghost"]), vec![read]));
}

#[test]
fn t14_unexpected_partition() {
    let mut h = H::default();
    h.send(1, 0, &["a"], true);
    h.send_ok(1, 0, 0, &["a"]);
    let read = h.read(2, 1, 1, 0, &["a"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::Unexpected);
    assert_eq!((a.partition, a.offsets.clone(), a.events.clone()), (1, vec![0], vec![0, 1, read]));
    assert!(a.detail.contains("sent to t/0"), "{a}");
}

#[test]
fn t15_aborted_read() {
    let mut h = H::default();
    let inv = h.send(1, 0, &["a"], true);
    let fail = h.end(1, Op::Send, Kind::Fail, "NOT_LEADER");
    let read = h.read(2, 1, 0, 0, &["a"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::AbortedRead);
    assert_eq!(
        (a.offsets.clone(), a.values.clone(), a.events.clone()),
        (vec![0], strings(&["a"]), vec![inv, fail, read])
    );
    assert!(a.detail.contains("NOT_LEADER"), "{a}");
}

#[test]
fn t16_non_monotonic_send() {
    let mut h = H::default();
    h.acked(1, 5, &["a"]);
    h.acked(1, 3, &["b"]);
    let v = h.check();
    // One process has one send outstanding, so it is a real-time order violation too.
    assert_eq!(kinds(&v), vec![AnomalyKind::NonMonotonicSend, AnomalyKind::RealTimeOrder], "{v}");
    let a = &v.anomalies[0];
    assert_eq!(
        (a.offsets.clone(), a.values.clone(), a.events.clone()),
        (vec![5, 3], strings(&["a", "b"]), vec![0, 1, 2, 3])
    );
}

#[test]
fn t16_non_monotonic_send_is_per_session() {
    let mut h = H::default();
    h.acked(1, 5, &["a"]);
    h.push(Event::new(1, 2, Op::Send, Kind::Invoke, 0).on(T, 0).values(["b"]));
    h.push(Event::new(1, 2, Op::Send, Kind::Ok, 0).on(T, 0).records_from(3, ["b"]));
    let v = h.check();
    assert_eq!(kinds(&v), vec![AnomalyKind::RealTimeOrder], "{v}");
}

#[test]
fn t17_non_contiguous_batch() {
    let mut h = H::default();
    h.send(1, 0, &["a", "b"], false);
    h.push(
        Event::new(1, 1, Op::Send, Kind::Ok, 0)
            .on(T, 0)
            .records(vec![crate::history::Record::at(0, "a"), crate::history::Record::at(2, "b")]),
    );
    let v = h.check();
    let a = only(&v, AnomalyKind::NonContiguousBatch);
    assert_eq!((a.offsets.clone(), a.values.clone(), a.events.clone()), (vec![0, 2], strings(&["a", "b"]), vec![0, 1]));
}

#[test]
fn t18_real_time_order() {
    let mut h = H::default();
    h.acked(1, 5, &["a"]);
    h.acked(2, 4, &["b"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::RealTimeOrder);
    assert_eq!(
        (a.offsets.clone(), a.values.clone(), a.events.clone()),
        (vec![5, 4], strings(&["a", "b"]), vec![0, 1, 2, 3])
    );
    assert_eq!(
        a.to_string(),
        "REAL-TIME ORDER t/0 offsets 5, 4 values a, b: send #0, #1 acknowledged offset 5 before send #2 was invoked, yet #3 acknowledged it at offset 4"
    );
}

#[test]
fn t18_concurrent_sends_may_land_in_any_order() {
    let mut h = H::default();
    h.send(1, 0, &["a"], false);
    h.send(2, 0, &["b"], false);
    h.send_ok(1, 0, 5, &["a"]);
    h.send_ok(2, 0, 4, &["b"]);
    // Another partition's offsets do not count.
    h.send(3, 1, &["c"], false);
    h.send_ok(3, 1, 0, &["c"]);
    let v = h.check();
    assert!(v.is_valid(), "{v}");
}

#[test]
fn t19_stale_high_watermark() {
    let mut h = H::default();
    h.acked(1, 5, &["a"]);
    let inv = h.push(Event::new(2, 1, Op::ListOffsets, Kind::Invoke, 0).on(T, 0));
    let ok = h.push(Event::new(2, 1, Op::ListOffsets, Kind::Ok, 0).on(T, 0).offset(5));
    h.push(Event::new(2, 1, Op::ListOffsets, Kind::Invoke, 0).on(T, 0));
    h.push(Event::new(2, 1, Op::ListOffsets, Kind::Ok, 0).on(T, 0).offset(6));
    let v = h.check();
    let a = only(&v, AnomalyKind::StaleHighWatermark);
    assert_eq!(
        (a.offsets.clone(), a.values.clone(), a.events.clone()),
        (vec![5, 5], strings(&["a"]), vec![0, 1, inv, ok])
    );
}

#[test]
fn t20_poll_skip_between_polls() {
    let mut h = H::default();
    // Indeterminate sends: reading them is fine, not reading them is fine.
    h.send(1, 0, &["a", "b", "c", "d"], false);
    let first = h.read(2, 1, 0, 0, &["a", "b"]);
    let second = h.read(2, 1, 0, 3, &["d"]);
    let v = h.check();
    let a = only(&v, AnomalyKind::PollSkip);
    assert_eq!((a.offsets.clone(), a.events.clone()), (vec![2, 3], vec![first - 1, first, second - 1, second]));
    assert!(a.detail.contains("skipping ahead"), "{a}");
}

#[test]
fn t20_poll_skip_within_a_poll() {
    use crate::history::Record;
    let mut h = H::default();
    h.send(1, 0, &["a", "b", "c", "d"], false);
    // Fetched from 0, the first record is at 1.
    let late = h.poll_records(2, 1, 0, 0, vec![Record::at(1, "b")]);
    // Fetched from 2, records 2 then 4.
    let gap = h.poll_records(3, 1, 0, 2, vec![Record::at(2, "c"), Record::at(4, "d")]);
    let v = h.check();
    assert_eq!(kinds(&v), vec![AnomalyKind::PollSkip; 2], "{v}");
    assert_eq!((v.anomalies[0].offsets.clone(), v.anomalies[0].events.clone()), (vec![0, 1], vec![late - 1, late]));
    assert_eq!((v.anomalies[1].offsets.clone(), v.anomalies[1].values.clone()), (vec![2, 4], strings(&["c", "d"])));
    assert_eq!(v.anomalies[1].events, vec![gap - 1, gap]);
}

#[test]
fn t21_replica_divergence() {
    let log = |node, commit_offset, values: &[&str]| ReplicaLog {
        node,
        topic: T.into(),
        partition: 2,
        commit_offset,
        records: values.iter().enumerate().map(|(o, v)| (o as u64, v.to_string())).collect(),
    };
    let a = check_replicas(&[log(1, 3, &["a", "b", "c"]), log(2, 2, &["a", "x", "c"]), log(3, 1, &["a", "y"])]);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].kind, a[0].partition, a[0].offsets.clone()), (AnomalyKind::ReplicaDivergence, 2, vec![1]));
    assert_eq!(a[0].values, strings(&["b", "x"]));
    assert!(a[0].detail.starts_with("node 1 and node 2 disagree at 1 committed offset(s), first at 1"), "{}", a[0]);

    // Uncommitted tails may differ; a log that starts later (a snapshot) is compared
    // where both hold records.
    let mut late = log(3, 4, &["", "", "c", "d"]);
    late.records.drain(..2);
    assert!(check_replicas(&[log(1, 3, &["a", "b", "c", "z"]), log(2, 2, &["a", "b", "q"]), late]).is_empty());
}

#[test]
fn t30_retried_duplicates_are_allowed() {
    let mut h = H::default();
    h.send(1, 0, &["a"], true);
    // The first attempt timed out but was committed at 0; the retry landed at 1.
    h.send_ok(1, 0, 1, &["a"]);
    h.read(2, 1, 0, 0, &["a", "a"]);
    h.drain(3, 0, &["a", "a"]);
    let v = h.check();
    assert!(v.is_valid(), "{v}");
}

#[test]
fn t31_indeterminate_sends_may_or_may_not_appear() {
    let mut h = H::default();
    h.send(1, 0, &["a"], false);
    h.end(1, Op::Send, Kind::Info, "timeout");
    h.send(1, 0, &["b"], false);
    h.end(1, Op::Send, Kind::Info, "connection reset");
    h.send(1, 0, &["c"], false); // never returned
    h.acked(4, 1, &["d"]);
    h.read(2, 1, 0, 0, &["a", "d"]);
    h.drain(3, 0, &["a", "d"]);
    let v = h.check();
    assert!(v.is_valid(), "{v}");
    assert_eq!((v.stats.sends_invoked, v.stats.sends_ok, v.stats.sends_info), (4, 1, 3));
}

/// t33 (RFC 0003): records below a log start that a delete-records may have set are
/// deleted, not lost, and the final drain need not see them; records above it still are
/// judged, and a delete-records that definitely failed protects nothing.
#[test]
fn t33_records_below_a_deleted_prefix_are_deleted_not_lost() {
    let history = |outcome: Kind| {
        let mut h = H::default();
        h.acked(1, 0, &["a", "b"]);
        h.acked(1, 2, &["c"]);
        h.push(Event::new(5, 1, Op::DeleteRecords, Kind::Invoke, 0).on(T, 0).offset(2));
        h.push(Event::new(5, 1, Op::DeleteRecords, outcome, 0).on(T, 0).offset(2));
        h.drain(3, 2, &["c"]);
        h
    };
    for outcome in [Kind::Ok, Kind::Info] {
        let v = history(outcome).check();
        assert!(v.is_valid(), "{outcome:?}: {v}");
    }
    // A failed delete: the drain read past a and b, which are lost.
    assert_eq!(
        kinds(&history(Kind::Fail).check()),
        vec![AnomalyKind::LostWrite, AnomalyKind::LostWrite, AnomalyKind::UnseenAtEnd, AnomalyKind::UnseenAtEnd]
    );

    // A record above the deleted prefix that the drain missed is still unseen.
    let mut h = history(Kind::Ok);
    h.acked(1, 3, &["d"]);
    assert_eq!(kinds(&h.check()), vec![AnomalyKind::UnseenAtEnd]);
}

#[test]
fn t32_deleted_topics_may_lose_acknowledged_writes() {
    let mut h = H::default();
    h.acked(1, 0, &["a"]);
    h.acked(1, 1, &["b"]);
    h.read(2, 1, 0, 1, &["b"]);
    h.push(Event::new(5, 1, Op::DeleteTopic, Kind::Invoke, 0).on(T, 0));
    h.push(Event::new(5, 1, Op::DeleteTopic, Kind::Info, 0).on(T, 0).note("timeout"));
    h.push(Event::new(3, 1, Op::Poll, Kind::Invoke, 0).on("other", 0).offset(0).final_drain(true));
    h.push(Event::new(3, 1, Op::Poll, Kind::Ok, 0).on("other", 0).offset(0).final_drain(true));
    let v = h.check();
    assert!(v.is_valid(), "{v}");

    // A delete that definitely failed protects nothing.
    let mut h = H::default();
    h.acked(1, 0, &["a"]);
    h.acked(1, 1, &["b"]);
    h.read(2, 1, 0, 1, &["b"]);
    h.push(Event::new(5, 1, Op::DeleteTopic, Kind::Invoke, 0).on(T, 0));
    h.push(Event::new(5, 1, Op::DeleteTopic, Kind::Fail, 0).on(T, 0));
    assert_eq!(kinds(&h.check()), vec![AnomalyKind::LostWrite]);
}

#[test]
fn t33_interleaved_producers() {
    let mut h = H::default();
    h.send(1, 0, &["1:0", "1:1"], false);
    h.send(2, 0, &["2:0"], false);
    h.send_ok(2, 0, 0, &["2:0"]);
    h.send_ok(1, 0, 1, &["1:0", "1:1"]);
    h.send(2, 0, &["2:1"], false);
    h.send(1, 0, &["1:2"], false);
    h.send_ok(1, 0, 3, &["1:2"]);
    h.send_ok(2, 0, 4, &["2:1"]);
    h.read(3, 1, 0, 0, &["2:0", "1:0"]);
    h.read(3, 1, 0, 2, &["1:1", "1:2", "2:1"]);
    h.push(Event::new(4, 1, Op::ListOffsets, Kind::Invoke, 0).on(T, 0));
    h.push(Event::new(4, 1, Op::ListOffsets, Kind::Ok, 0).on(T, 0).offset(5));
    h.drain(5, 0, &["2:0", "1:0", "1:1", "1:2", "2:1"]);
    let v = h.check();
    assert!(v.is_valid(), "{v}");
    assert_eq!((v.stats.records_acknowledged, v.stats.records_read, v.stats.distinct_values_read), (5, 10, 5));
}

#[test]
fn t34_empty_and_failed_polls_do_not_move_the_position() {
    let mut h = H::default();
    h.read(2, 1, 0, 0, &[]);
    h.acked(1, 0, &["a", "b"]);
    h.push(Event::new(2, 1, Op::Poll, Kind::Invoke, 0).on(T, 0).offset(0));
    h.push(Event::new(2, 1, Op::Poll, Kind::Fail, 0).on(T, 0).note("UNAVAILABLE"));
    h.push(Event::new(2, 1, Op::Poll, Kind::Invoke, 0).on(T, 0).offset(0));
    h.push(Event::new(2, 1, Op::Poll, Kind::Info, 0).on(T, 0).note("timeout"));
    h.read(2, 1, 0, 0, &["a", "b"]);
    h.read(2, 1, 0, 2, &[]);
    h.read(2, 1, 0, 2, &[]);
    // A new session may start anywhere.
    h.read(2, 2, 0, 1, &["b"]);
    let v = h.check();
    assert!(v.is_valid(), "{v}");
    assert_eq!((v.stats.polls, v.stats.polls_ok), (7, 5));
}

#[test]
fn t40_liveness_figures() {
    let mut h = H::default();
    h.send(1, 0, &["a"], false);
    let fault = h.push(Event::fault(99, 0, "kill n1", vec![1]));
    h.send_ok(1, 0, 0, &["a"]); // invoked before the fault: does not count
    h.send(1, 0, &["b"], false);
    h.send_ok(1, 0, 1, &["b"]); // t = 40
    let heal = h.push(Event::heal(99, 0, "restart n1")); // t = 50
    h.send(1, 0, &["c"], false);
    h.send(2, 1, &["d"], false); // never acknowledged
    h.send_ok(1, 0, 2, &["c"]); // t = 80
    // A send to a topic deleted meanwhile definitely failed: it asks no progress.
    h.send(3, 2, &["e"], false);
    h.push(Event::new(3, 1, Op::Send, Kind::Fail, 0).on(T, 2).note("topic 't' does not exist (UNKNOWN_TOPIC)"));
    let v = h.check();
    assert!(v.is_valid(), "{v}");
    let l = &v.liveness;
    assert_eq!(
        l.failover,
        vec![FailoverFigure { event: fault, note: "kill n1".into(), time_ms: 10, ms_to_next_ack: Some(30) }]
    );
    assert_eq!((l.last_heal, l.recovery_ms_after_heal), (Some(heal), Some(30)));
    assert_eq!(l.partitions_without_ack_after_heal, vec![(T.to_string(), 1)]);
    assert_eq!((v.stats.faults, v.stats.heals), (1, 1));
    let text = v.to_string();
    assert!(text.contains("first ack 30 ms after the last heal (#5)"), "{text}");
    assert!(text.contains("no ack after the heal on t/1"), "{text}");
}

#[test]
fn t50_report_names_everything() {
    let mut h = H::default();
    h.acked(1, 0, &["a"]);
    h.acked(1, 1, &["b"]);
    h.read(2, 1, 0, 1, &["b"]);
    h.read(2, 1, 0, 2, &["ghost"]);
    let v = h.check();
    assert!(!v.is_valid());
    assert_eq!(v.counts(), BTreeMap::from([(AnomalyKind::LostWrite, 1), (AnomalyKind::Unexpected, 1)]));
    assert!(
        v.summary().starts_with("INVALID (2 anomalies: 1 LOST WRITE, 1 UNEXPECTED); 8 events; sends 2 invoked, 2 ok"),
        "{}",
        v.summary()
    );
    let text = v.to_string();
    assert!(text.contains("\n  LOST WRITE t/0 offset 0 value a: acknowledged by #1"), "{text}");
    assert!(text.contains("\n  UNEXPECTED t/0 offset 2 value ghost: read by #7 but no send carried it"), "{text}");
    assert!(check(&History::new()).summary().starts_with("VALID; 0 events"));
}

#[test]
fn t60_a_large_history_checks_quickly() {
    let mut h = History::new();
    let producers = 8u64;
    let sends = 20_000u64;
    for i in 0..sends {
        let (p, offset) = (i % producers, i);
        let value = format!("{p}:{i}");
        h.push(Event::new(p, 1, Op::Send, Kind::Invoke, i).on(T, 0).values([value.clone()]).retries(true));
        h.push(Event::new(p, 1, Op::Send, Kind::Ok, i).on(T, 0).records_from(offset, [value.clone()]));
        h.push(Event::new(100, 1, Op::Poll, Kind::Invoke, i).on(T, 0).offset(offset).final_drain(true));
        h.push(
            Event::new(100, 1, Op::Poll, Kind::Ok, i)
                .on(T, 0)
                .offset(offset)
                .records_from(offset, [value])
                .final_drain(true),
        );
    }
    let started = std::time::Instant::now();
    let v = check(&h);
    assert!(v.is_valid(), "{}", v.summary());
    assert_eq!(v.stats.distinct_values_read, sends as usize);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}
