//! A principal's quota limits (docs/security.md, "Quotas"): set per node in its
//! configuration, or for the whole cluster with `flotilla quota set`.

use serde::{Deserialize, Serialize};

/// Limits per second; unset: whatever applies next (the cluster's or node's default;
/// in the end 0, no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct QuotaLimits {
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
}

impl QuotaLimits {
    /// Sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == QuotaLimits::default()
    }
}
