//! Quotas (docs/security.md, "Quotas"): how many produce bytes, fetch bytes and requests
//! per second one principal may use on this node, enforced as Kafka does: the request is
//! served, and its answer held back until the principal is within its rate again, the
//! hold named in the answer (`throttle_time_ms`). A client that waits for its answers
//! before sending more is slowed to its quota without an error.
//!
//! The principal is the user the request proves (a password or a client certificate),
//! else the client id it carries (Kafka's `client.id` quotas), which a client may claim
//! freely. Limits come from the cluster (`flotilla quota set`, in the metadata group) or
//! this node's configuration (`ClusterQuotas`, `Quotas::rate`). They are per node, as
//! Kafka's are per broker: a principal producing to partitions led by three nodes may use
//! three times its quota in all.
//!
//! Each (principal, kind) is an account with the time its allowance is used up to
//! ("virtual scheduling", a token bucket of one second): a charge of `n` moves it on by
//! `n / rate`, never from further back than one second ago, so an idle principal may use
//! up to one second's worth at once; the answer is held until the account's time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use flotilla_raft::RaftTransport;
use flotilla_types::limits;
use tokio::time::Instant;

use crate::Node;

/// How far behind now an account may lag: the burst an idle principal may send at once.
const BURST: Duration = Duration::from_secs(1);
/// The longest an answer is held, below the client's default request timeout (10 s), so
/// that a held answer is not taken for a lost one. A client with many requests in flight
/// can exceed its quota by up to what those requests carry per this much time.
pub const THROTTLE_MAX: Duration = Duration::from_secs(5);
/// The account principals share once `QUOTA_PRINCIPALS_MAX` are being throttled.
const OVERFLOW: &str = "(too many principals)";

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    /// Batch bytes produced.
    ProduceBytes,
    /// Batch bytes fetched.
    FetchBytes,
    /// Produce and fetch requests.
    Requests,
}

impl QuotaKind {
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::ProduceBytes => "produce_bytes",
            QuotaKind::FetchBytes => "fetch_bytes",
            QuotaKind::Requests => "requests",
        }
    }
}

pub use flotilla_types::quota::QuotaLimits;

/// One kind of a principal's limits.
fn limit(l: &QuotaLimits, kind: QuotaKind) -> Option<u64> {
    match kind {
        QuotaKind::ProduceBytes => l.produce_bytes_per_sec,
        QuotaKind::FetchBytes => l.fetch_bytes_per_sec,
        QuotaKind::Requests => l.requests_per_sec,
    }
}

/// The quotas set through the cluster (`flotilla quota set`, kept by the metadata
/// group): per principal, and a default for every principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterQuotas<'a> {
    pub principal: Option<&'a QuotaLimits>,
    pub default: Option<&'a QuotaLimits>,
}

/// Every principal's accounts on this node.
#[derive(Debug, Default)]
pub struct Quotas {
    defaults: QuotaLimits,
    overrides: BTreeMap<String, QuotaLimits>,
    /// (principal, kind) -> when its allowance is used up to.
    accounts: Mutex<HashMap<(String, QuotaKind), Instant>>,
}

impl Quotas {
    /// `defaults` apply to every principal without its own entry in `overrides` (and to
    /// the kinds its entry leaves unset); a rate of 0 is no limit.
    pub fn new(defaults: QuotaLimits, overrides: BTreeMap<String, QuotaLimits>) -> Quotas {
        Quotas { defaults, overrides, accounts: Mutex::default() }
    }

    /// The rate `principal` may use of `kind` (per second); 0: no limit. The first that
    /// sets it of: the cluster's entry for the principal, this node's, the cluster's
    /// default, this node's default.
    pub fn rate(&self, principal: &str, kind: QuotaKind, cluster: ClusterQuotas<'_>) -> u64 {
        cluster
            .principal
            .and_then(|l| limit(l, kind))
            .or_else(|| self.overrides.get(principal).and_then(|l| limit(l, kind)))
            .or_else(|| cluster.default.and_then(|l| limit(l, kind)))
            .or(limit(&self.defaults, kind))
            .unwrap_or(0)
    }

    /// Charges `amount` of `kind` to `principal` at `now`; how long its answer is to be
    /// held (not capped: [`THROTTLE_MAX`] is the caller's).
    pub fn charge(
        &self,
        principal: &str,
        kind: QuotaKind,
        amount: u64,
        now: Instant,
        cluster: ClusterQuotas<'_>,
    ) -> Duration {
        let rate = self.rate(principal, kind, cluster);
        if rate == 0 || amount == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(amount as f64 / rate as f64);
        let mut accounts = self.accounts.lock().expect("quota accounts poisoned");
        let mut key = (principal.to_string(), kind);
        if accounts.len() >= limits::QUOTA_PRINCIPALS_MAX && !accounts.contains_key(&key) {
            // Forget the accounts that are not holding anyone back.
            accounts.retain(|_, until| *until > now);
            if accounts.len() >= limits::QUOTA_PRINCIPALS_MAX {
                key = (OVERFLOW.to_string(), kind);
            }
        }
        let floor = now.checked_sub(BURST).unwrap_or(now);
        let until = accounts.entry(key).or_insert(floor);
        let from = (*until).max(floor);
        *until = from + cost;
        until.saturating_duration_since(now)
    }
}

impl<T: RaftTransport> Node<T> {
    /// Charges a produce or fetch of `bytes` (`kind`) and the request itself to
    /// `principal`, then waits as long as the answer is to be held (at most
    /// [`THROTTLE_MAX`]); how long it waited. Counted in `flotilla_quota_*`.
    pub async fn throttle(&self, principal: &str, kind: QuotaKind, bytes: u64) -> Duration {
        let quotas = &self.inner.quotas;
        let now = Instant::now();
        let hold = self.with_metadata(|m| {
            let security = m.security();
            let cluster = ClusterQuotas { principal: security.quota(principal), default: security.default_quota() };
            quotas.charge(principal, kind, bytes, now, cluster).max(quotas.charge(
                principal,
                QuotaKind::Requests,
                1,
                now,
                cluster,
            ))
        });
        let hold = hold.min(THROTTLE_MAX);
        if !hold.is_zero() {
            self.metrics().count_throttle(kind, hold);
            tokio::time::sleep(hold).await;
        }
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: ClusterQuotas<'static> = ClusterQuotas { principal: None, default: None };

    #[test]
    fn the_clusters_quotas_come_first_then_the_nodes() {
        let q = quotas();
        let mine = QuotaLimits { fetch_bytes_per_sec: Some(7), ..QuotaLimits::default() };
        let everyone =
            QuotaLimits { produce_bytes_per_sec: Some(50), requests_per_sec: Some(9), ..QuotaLimits::default() };
        let cluster = ClusterQuotas { principal: Some(&mine), default: Some(&everyone) };
        assert_eq!(q.rate("slow", QuotaKind::FetchBytes, cluster), 7, "the cluster's entry for the principal");
        assert_eq!(q.rate("slow", QuotaKind::ProduceBytes, cluster), 100, "then the node's entry");
        assert_eq!(q.rate("anyone", QuotaKind::ProduceBytes, cluster), 50, "then the cluster's default");
        assert_eq!(q.rate("slow", QuotaKind::Requests, cluster), 2, "the node's entry before the cluster's default");
        let only_default = ClusterQuotas { principal: None, default: Some(&mine) };
        assert_eq!(q.rate("anyone", QuotaKind::ProduceBytes, only_default), 1_000, "then the node's default");
    }

    fn quotas() -> Quotas {
        let defaults = QuotaLimits { produce_bytes_per_sec: Some(1_000), ..QuotaLimits::default() };
        let slow =
            QuotaLimits { produce_bytes_per_sec: Some(100), requests_per_sec: Some(2), ..QuotaLimits::default() };
        Quotas::new(defaults, BTreeMap::from([("slow".to_string(), slow)]))
    }

    #[test]
    fn an_override_replaces_the_default_for_its_kinds_only() {
        let q = quotas();
        assert_eq!(q.rate("anyone", QuotaKind::ProduceBytes, NONE), 1_000);
        assert_eq!(q.rate("slow", QuotaKind::ProduceBytes, NONE), 100);
        assert_eq!(q.rate("slow", QuotaKind::Requests, NONE), 2);
        assert_eq!(q.rate("anyone", QuotaKind::Requests, NONE), 0, "no default: no limit");
        assert_eq!(q.rate("slow", QuotaKind::FetchBytes, NONE), 0);
    }

    #[test]
    fn a_burst_of_one_second_is_free_then_answers_are_held_to_the_rate() {
        let q = quotas();
        let t0 = Instant::now();
        // An idle principal: one second's worth (1,000 bytes) passes without a hold.
        assert_eq!(q.charge("a", QuotaKind::ProduceBytes, 1_000, t0, NONE), Duration::ZERO);
        // The next 500 bytes at the same instant are half a second over.
        assert_eq!(q.charge("a", QuotaKind::ProduceBytes, 500, t0, NONE), Duration::from_millis(500));
        // A closed loop sending 100 bytes each time its answer comes is held 100 ms a
        // time: 1,000 bytes a second.
        let mut now = t0 + Duration::from_millis(500);
        let mut sent = 0;
        while now < t0 + Duration::from_secs(10) {
            let hold = q.charge("a", QuotaKind::ProduceBytes, 100, now, NONE);
            assert_eq!(hold, Duration::from_millis(100));
            now += hold;
            sent += 100;
        }
        assert_eq!(sent, 9_500, "9.5 s at 1,000 bytes a second");
        // Another principal is not held back by a's account.
        assert_eq!(q.charge("b", QuotaKind::ProduceBytes, 1_000, now, NONE), Duration::ZERO);
    }

    #[test]
    fn an_idle_principal_saves_no_more_than_one_second() {
        let q = quotas();
        let t0 = Instant::now();
        assert_eq!(q.charge("a", QuotaKind::ProduceBytes, 1_000, t0, NONE), Duration::ZERO);
        // A minute idle: still only one second's worth free.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(q.charge("a", QuotaKind::ProduceBytes, 1_000, later, NONE), Duration::ZERO);
        assert_eq!(q.charge("a", QuotaKind::ProduceBytes, 1_000, later, NONE), Duration::from_secs(1));
    }

    #[test]
    fn no_limit_holds_nothing() {
        let q = Quotas::default();
        assert_eq!(q.charge("a", QuotaKind::FetchBytes, u64::MAX, Instant::now(), NONE), Duration::ZERO);
    }
}
