//! What a run simulates: the cluster's shape and the fault kinds its nemesis draws from.
//!
//! A seed names a run only together with its profile: the schedule is drawn from the
//! seed, and the profile decides which kinds it is drawn from.

use flotilla_types::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Profile {
    /// Three nodes, all metadata voters, zones z1..z3, the default 30 s grace period; the
    /// thirteen fault kinds the suite started with. No partition can move (there is no
    /// fourth node). The regression seeds found before the controller existed run with it,
    /// exactly as they did then.
    Classic,
    /// Four nodes: n1..n3 vote in the metadata group, n4 is its learner; zones z1, z2, z3
    /// and z1 again (n1 and n4 share a zone, so the planner chooses between them and
    /// refuses replica sets that break the zone spread); a 4 s grace period. The classic
    /// faults plus drain, reassign and node kill (down past the grace period), and a
    /// settle phase: every move finished before the final drain.
    Controller,
}

/// The controller profile's grace period (`dead_after_ms`): a node silent this long is
/// dead and its replicas are re-created elsewhere.
pub const DEAD_AFTER_MS: u64 = 4_000;

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Classic => "classic",
            Profile::Controller => "controller",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "classic" => Some(Profile::Classic),
            "controller" => Some(Profile::Controller),
            _ => None,
        }
    }

    /// How many nodes the cluster has.
    pub fn nodes(self) -> u64 {
        match self {
            Profile::Classic => 3,
            Profile::Controller => 4,
        }
    }

    /// The metadata group's voters; empty for the node's default (the first three).
    pub fn controllers(self) -> Vec<NodeId> {
        match self {
            Profile::Classic => Vec::new(),
            Profile::Controller => vec![1, 2, 3],
        }
    }

    /// A node's zone.
    pub fn zone(self, id: NodeId) -> String {
        match (self, id) {
            (Profile::Controller, 4) => "z1".to_string(),
            _ => format!("z{id}"),
        }
    }

    /// The grace period the nodes are configured with, if not the default.
    pub fn dead_after_ms(self) -> Option<u64> {
        match self {
            Profile::Classic => None,
            Profile::Controller => Some(DEAD_AFTER_MS),
        }
    }

    /// Whether the run waits for every move to finish before the final drain.
    pub fn settles(self) -> bool {
        self == Profile::Controller
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
