//! Share groups (RFC 0007): what a run of a share group must not show. Every record
//! produced is accepted exactly once or is in the dead-letter topic, never both, and
//! nothing else is; in a key-ordered group no two records of one key are in flight at
//! once. A record is in flight from its delivery until its member starts acknowledging
//! it (or the member dies holding it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A record's place: (partition, offset).
pub type At = (u32, u64);

/// One delivery of a record, with its span in flight (µs since the run's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub key: Option<String>,
    pub at: At,
    pub member: usize,
    pub start_us: u64,
    pub end_us: u64,
}

/// What a share-group run recorded.
#[derive(Debug, Clone, Default)]
pub struct ShareHistory {
    /// Every record produced to the topic read.
    pub produced: BTreeSet<At>,
    /// Acceptances the coordinator applied (one entry per applied acceptance).
    pub accepted: Vec<At>,
    /// Where the dead-letter topic's records came from (their headers).
    pub dead_lettered: Vec<At>,
    /// Deliveries, for the key-order check.
    pub spans: Vec<Span>,
    pub key_ordered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareAnomaly {
    /// Produced, and neither accepted nor dead-lettered.
    NotDone(At),
    AcceptedTwice {
        at: At,
        times: usize,
    },
    AcceptedAndDeadLettered(At),
    /// Accepted or dead-lettered, never produced.
    Unknown(At),
    /// Two records of one key in flight at once.
    KeyOverlap {
        key: String,
        first: Span,
        second: Span,
    },
}

impl fmt::Display for ShareAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareAnomaly::NotDone((p, o)) => write!(f, "not done: {p}/{o} neither accepted nor dead-lettered"),
            ShareAnomaly::AcceptedTwice { at: (p, o), times } => write!(f, "accepted {times} times: {p}/{o}"),
            ShareAnomaly::AcceptedAndDeadLettered((p, o)) => write!(f, "accepted and dead-lettered: {p}/{o}"),
            ShareAnomaly::Unknown((p, o)) => write!(f, "unknown record {p}/{o} accepted or dead-lettered"),
            ShareAnomaly::KeyOverlap { key, first, second } => write!(
                f,
                "key {key}: {}/{} (member {}, {}..{} µs) and {}/{} (member {}, {}..{} µs) in flight at once",
                first.at.0,
                first.at.1,
                first.member,
                first.start_us,
                first.end_us,
                second.at.0,
                second.at.1,
                second.member,
                second.start_us,
                second.end_us
            ),
        }
    }
}

/// Every anomaly of `h`, in a stable order.
pub fn check_share(h: &ShareHistory) -> Vec<ShareAnomaly> {
    let mut out = Vec::new();
    let mut accepted: BTreeMap<At, usize> = BTreeMap::new();
    for at in &h.accepted {
        *accepted.entry(*at).or_default() += 1;
    }
    // The dead-letter topic may hold a record twice (a member died between writing it and
    // acknowledging that): dead letters are at least once.
    let dead: BTreeSet<At> = h.dead_lettered.iter().copied().collect();
    for at in &h.produced {
        match (accepted.get(at).copied().unwrap_or(0), dead.contains(at)) {
            (0, false) => out.push(ShareAnomaly::NotDone(*at)),
            (0, true) | (1, false) => {}
            (_, true) => out.push(ShareAnomaly::AcceptedAndDeadLettered(*at)),
            (times, false) => out.push(ShareAnomaly::AcceptedTwice { at: *at, times }),
        }
    }
    for at in accepted.keys().chain(&dead).collect::<BTreeSet<_>>() {
        if !h.produced.contains(at) {
            out.push(ShareAnomaly::Unknown(*at));
        }
    }
    if h.key_ordered {
        let mut by_key: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
        for s in &h.spans {
            if let Some(k) = &s.key {
                by_key.entry(k.as_str()).or_default().push(s);
            }
        }
        for (key, mut spans) in by_key {
            spans.sort_by_key(|s| (s.start_us, s.end_us));
            // Sweep: the span reaching furthest so far overlaps the next if it ends after
            // the next starts.
            let mut furthest: Option<&Span> = None;
            for s in spans {
                if let Some(f) = furthest
                    && f.end_us > s.start_us
                {
                    out.push(ShareAnomaly::KeyOverlap { key: key.to_string(), first: f.clone(), second: s.clone() });
                }
                if furthest.is_none_or(|f| s.end_us > f.end_us) {
                    furthest = Some(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(key: &str, at: At, start_us: u64, end_us: u64) -> Span {
        Span { key: Some(key.into()), at, member: 0, start_us, end_us }
    }

    #[test]
    fn a_clean_run_has_no_anomaly() {
        let h = ShareHistory {
            produced: [(0, 0), (0, 1), (1, 0)].into(),
            accepted: vec![(0, 0), (1, 0)],
            dead_lettered: vec![(0, 1), (0, 1)],
            spans: vec![span("k", (0, 0), 0, 10), span("k", (0, 1), 10, 20)],
            key_ordered: true,
        };
        assert_eq!(check_share(&h), vec![]);
    }

    #[test]
    fn every_planted_anomaly_is_found() {
        let h = ShareHistory {
            produced: [(0, 0), (0, 1), (0, 2), (0, 3)].into(),
            accepted: vec![(0, 0), (0, 0), (0, 1), (9, 9)],
            dead_lettered: vec![(0, 1)],
            spans: vec![span("k", (0, 0), 0, 10), span("k", (0, 1), 5, 20), span("j", (0, 2), 0, 10)],
            key_ordered: true,
        };
        let found = check_share(&h);
        assert!(found.contains(&ShareAnomaly::AcceptedTwice { at: (0, 0), times: 2 }), "{found:?}");
        assert!(found.contains(&ShareAnomaly::AcceptedAndDeadLettered((0, 1))), "{found:?}");
        assert!(found.contains(&ShareAnomaly::NotDone((0, 2))) && found.contains(&ShareAnomaly::NotDone((0, 3))));
        assert!(found.contains(&ShareAnomaly::Unknown((9, 9))), "{found:?}");
        assert!(found.iter().any(|a| matches!(a, ShareAnomaly::KeyOverlap { key, .. } if key == "k")), "{found:?}");
        assert_eq!(found.len(), 6, "{found:?}");
    }
}
