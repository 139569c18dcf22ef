//! The placement planner: which brokers host a new partition's replicas.
//!
//! Pure: it reads the registered brokers and their current load and returns a plan.
//! Hard constraint: replicas on distinct brokers. Soft goals, in order: replicas in
//! distinct zones while there are enough zones, then the fewest replicas per broker,
//! then the fewest preferred leaderships per broker for `replicas[0]`. Ties break by
//! broker id, so the plan is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::NodeId;

use crate::Broker;

/// How many replicas and preferred leaderships a broker has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub replicas: u64,
    pub leaders: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    NotEnoughBrokers { needed: u32, available: usize },
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::NotEnoughBrokers { needed, available } => {
                write!(f, "replication factor {needed} needs {needed} brokers, the cluster has {available} registered")
            }
        }
    }
}

/// Places `partitions` partitions of `rf` replicas each. `load` is updated as it goes so
/// the partitions of one topic spread evenly too.
pub fn place_topic(
    brokers: &BTreeMap<NodeId, Broker>,
    load: &BTreeMap<NodeId, Load>,
    partitions: u32,
    rf: u32,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    if (brokers.len() as u64) < u64::from(rf) {
        return Err(PlacementError::NotEnoughBrokers { needed: rf, available: brokers.len() });
    }
    let mut load: BTreeMap<NodeId, Load> =
        brokers.keys().map(|id| (*id, load.get(id).copied().unwrap_or_default())).collect();
    let mut plan = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let replicas = place_one(brokers, &load, rf);
        assert_eq!(replicas.len(), rf as usize);
        for (i, r) in replicas.iter().enumerate() {
            let l = load.get_mut(r).expect("placed on a known broker");
            l.replicas += 1;
            if i == 0 {
                l.leaders += 1;
            }
        }
        plan.push(replicas);
    }
    Ok(plan)
}

fn place_one(brokers: &BTreeMap<NodeId, Broker>, load: &BTreeMap<NodeId, Load>, rf: u32) -> Vec<NodeId> {
    // The preferred leader: fewest leaderships, then fewest replicas.
    let leader = *brokers
        .keys()
        .min_by_key(|id| {
            let l = load[id];
            (l.leaders, l.replicas, **id)
        })
        .expect("at least one broker");
    let mut chosen = vec![leader];
    let mut zones: BTreeSet<&str> = BTreeSet::from([brokers[&leader].labels.zone.as_str()]);
    while chosen.len() < rf as usize {
        let next = *brokers
            .keys()
            .filter(|id| !chosen.contains(id))
            .min_by_key(|id| {
                let zone_taken = zones.contains(brokers[id].labels.zone.as_str());
                let l = load[id];
                (zone_taken, l.replicas, l.leaders, **id)
            })
            .expect("enough brokers were checked");
        zones.insert(brokers[&next].labels.zone.as_str());
        chosen.push(next);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Labels;

    fn brokers(zones: &[&str]) -> BTreeMap<NodeId, Broker> {
        zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let id = i as NodeId + 1;
                (
                    id,
                    Broker { id, addr: format!("h:{id}"), labels: Labels { zone: z.to_string(), ..Labels::default() } },
                )
            })
            .collect()
    }

    #[test]
    fn replicas_go_to_distinct_zones_when_possible() {
        let b = brokers(&["a", "a", "b", "b", "c", "c"]);
        let plan = place_topic(&b, &BTreeMap::new(), 24, 3).unwrap();
        for replicas in &plan {
            let zones: BTreeSet<_> = replicas.iter().map(|r| b[r].labels.zone.clone()).collect();
            assert_eq!(zones.len(), 3, "{replicas:?}");
        }
        // 72 replicas over 6 brokers: 12 each.
        let mut count = BTreeMap::new();
        for r in plan.iter().flatten() {
            *count.entry(*r).or_insert(0) += 1;
        }
        assert!(count.values().all(|c| *c == 12), "{count:?}");
    }

    #[test]
    fn too_few_brokers_is_refused_with_the_reason() {
        let b = brokers(&["a", "b"]);
        let e = place_topic(&b, &BTreeMap::new(), 1, 3).unwrap_err();
        assert!(e.to_string().contains("needs 3 brokers"), "{e}");
    }
}
