//! Replica divergence (docs/checker.md item 10): committed logs are prefixes of each other.

use std::collections::BTreeMap;

use super::{Anomaly, AnomalyKind, ReplicaLog};

/// Offsets listed per anomaly; the detail counts the rest.
const DIVERGENT_OFFSETS_LISTED_MAX: usize = 100;

pub(super) fn check(replicas: &[ReplicaLog]) -> Vec<Anomaly> {
    let mut by_partition: BTreeMap<(&str, u32), Vec<&ReplicaLog>> = BTreeMap::new();
    for r in replicas {
        assert!(
            r.records.windows(2).all(|w| w[0].0 < w[1].0),
            "replica {} of {}/{}: records must be strictly ascending by offset",
            r.node,
            r.topic,
            r.partition
        );
        by_partition.entry((r.topic.as_str(), r.partition)).or_default().push(r);
    }
    let mut out = vec![];
    for (part, mut logs) in by_partition {
        logs.sort_by_key(|r| r.node);
        for (i, a) in logs.iter().enumerate() {
            for b in &logs[i + 1..] {
                if let Some(anomaly) = compare(part, a, b) {
                    out.push(anomaly);
                }
            }
        }
    }
    out
}

/// Where `a` and `b` disagree below both commit offsets, as one anomaly.
fn compare(part: (&str, u32), a: &ReplicaLog, b: &ReplicaLog) -> Option<Anomaly> {
    let below = a.commit_offset.min(b.commit_offset);
    let (mut i, mut j) = (0, 0);
    let mut differ: Vec<u64> = vec![];
    let mut first: Option<(&str, &str)> = None;
    while i < a.records.len() && j < b.records.len() {
        let ((oa, va), (ob, vb)) = (&a.records[i], &b.records[j]);
        if *oa >= below || *ob >= below {
            break;
        }
        match oa.cmp(ob) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                if va != vb {
                    first.get_or_insert((va, vb));
                    differ.push(*oa);
                }
                i += 1;
                j += 1;
            }
        }
    }
    let (va, vb) = first?;
    let n = differ.len();
    let at = differ[0];
    differ.truncate(DIVERGENT_OFFSETS_LISTED_MAX);
    Some(Anomaly::new(
        AnomalyKind::ReplicaDivergence,
        part,
        differ,
        vec![va.to_string(), vb.to_string()],
        vec![],
        format!(
            "node {} and node {} disagree at {n} committed offset(s), first at {at} ({va} vs {vb}); commit offsets {} and {}",
            a.node, b.node, a.commit_offset, b.commit_offset
        ),
    ))
}
