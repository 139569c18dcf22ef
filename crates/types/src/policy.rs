//! A node's failure-domain labels and a topic's placement and retention policy: plain
//! data defined once, here. The edge (`proto`) produces them from the wire, the metadata
//! group stores them, the client re-exports them and the CLI shows them; one `check`
//! each serves the edge and the state machine.

use serde::{Deserialize, Serialize};

use crate::{NodeId, limits};

/// A node's failure domain, outermost first. Empty: not labelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Labels {
    pub region: String,
    pub zone: String,
    pub rack: String,
}

impl Labels {
    /// Why the labels are refused, if they are (each may be empty).
    pub fn check(&self) -> Result<(), String> {
        check_label("the region", &self.region, true)?;
        check_label("the zone", &self.zone, true)?;
        check_label("the rack", &self.rack, true)
    }
}

/// Where a topic's replicas may go and where its leaders should be, and how long its
/// records are kept. The default places replicas anywhere and keeps the node's
/// retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPolicy {
    /// Replicas only in these regions; empty: any region.
    pub allowed_regions: Vec<String>,
    /// Preferred leaders in this region while it has a healthy replica; one of
    /// `allowed_regions` when those are given.
    pub preferred_leader_region: Option<String>,
    /// Never place a replica on these nodes.
    pub excluded_nodes: Vec<NodeId>,
    /// Never place a replica in these zones.
    pub excluded_zones: Vec<String>,
    /// Retention: records older than this are deleted (ms); `None`: the node's default
    /// (`retention-ms`); 0: kept forever.
    #[serde(default)]
    pub retention_ms: Option<u64>,
    /// Retention: each partition keeps at most this many bytes of records; `None`: the
    /// node's default (`retention-bytes`); 0: no limit.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

impl TopicPolicy {
    /// Why the policy is refused, if it is: too many entries, a malformed label, node
    /// id 0, or a preferred leader region outside the allowed ones. Whether the cluster
    /// can satisfy it is the metadata group's to decide.
    pub fn check(&self) -> Result<(), String> {
        let entries = self.allowed_regions.len() + self.excluded_nodes.len() + self.excluded_zones.len();
        if entries > limits::POLICY_ENTRIES_MAX {
            return Err(format!(
                "the policy lists {entries} regions, zones and nodes; the limit is {}",
                limits::POLICY_ENTRIES_MAX
            ));
        }
        for r in &self.allowed_regions {
            check_label("an allowed region", r, false)?;
        }
        for z in &self.excluded_zones {
            check_label("an excluded zone", z, false)?;
        }
        if let Some(r) = &self.preferred_leader_region {
            check_label("the preferred leader region", r, false)?;
            if !self.allowed_regions.is_empty() && !self.allowed_regions.contains(r) {
                return Err(format!(
                    "the preferred leader region '{r}' is not among the allowed regions {:?}",
                    self.allowed_regions
                ));
            }
        }
        if self.excluded_nodes.contains(&0) {
            return Err("an excluded node: node ids start at 1, got 0".into());
        }
        Ok(())
    }
}

/// Why a label value (region, zone, rack) is refused, if it is: over `LABEL_BYTES_MAX`
/// bytes, whitespace or control characters, or empty where it may not be.
pub fn check_label(what: &str, value: &str, may_be_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if may_be_empty { Ok(()) } else { Err(format!("{what} is empty")) };
    }
    if value.len() > limits::LABEL_BYTES_MAX {
        return Err(format!("{what} is {} bytes, the limit is {}", value.len(), limits::LABEL_BYTES_MAX));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} {value:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_checked_once_for_the_edge_and_the_state_machine() {
        let ok = TopicPolicy {
            allowed_regions: vec!["eu".into(), "us".into()],
            preferred_leader_region: Some("eu".into()),
            excluded_nodes: vec![4],
            excluded_zones: vec!["eu-1c".into()],
            retention_ms: Some(0),
            retention_bytes: None,
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: fn(&mut TopicPolicy)| {
            let mut p = ok.clone();
            f(&mut p);
            p.check().expect_err("refused")
        };
        assert!(bad(|p| p.preferred_leader_region = Some("ap".into())).contains("not among the allowed"));
        assert!(bad(|p| p.allowed_regions.push(String::new())).contains("is empty"));
        assert!(bad(|p| p.excluded_zones.push("a b".into())).contains("contains ' '"));
        assert!(bad(|p| p.excluded_nodes.push(0)).contains("start at 1"));
        assert!(bad(|p| p.excluded_nodes = vec![1; limits::POLICY_ENTRIES_MAX]).contains("the limit is"));
        assert!(bad(|p| p.allowed_regions = vec!["r".repeat(limits::LABEL_BYTES_MAX + 1)]).contains("bytes"));
    }

    #[test]
    fn labels_may_be_empty_but_not_malformed() {
        assert_eq!(Labels::default().check(), Ok(()));
        let zone = |z: &str| Labels { zone: z.into(), ..Labels::default() }.check();
        assert_eq!(zone("eu-1a"), Ok(()));
        assert!(zone("eu 1a").is_err());
        assert!(zone(&"z".repeat(limits::LABEL_BYTES_MAX + 1)).is_err());
    }
}
