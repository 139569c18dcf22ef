//! Quiescing idle partition groups (design decision 7, docs/decisions.md).
//!
//! openraft ticks every replica about five times a heartbeat interval, and a leader
//! heartbeats each follower every interval, written or not. A thousand partitions mostly
//! at rest would spend two cores on that. So a partition group with nothing to do stops
//! its timers (`Group::set_ticking(false)`), and node liveness — which the metadata group
//! already tracks — stands in for its failure detection: a replica whose leader's node is
//! suspected wakes up and campaigns (`mover::wake_election`).
//!
//! - **A leader** quiesces once its log has not grown for `quiesce-after-ms`, no
//!   membership change is pending, and the voters on live nodes, a majority, hold its
//!   last entry (a voter whose node is suspected or dead is left out; its return wakes
//!   the group). It ticks again as soon as an entry is written (the write itself is replicated
//!   at once, ticking or not). While quiet it sends one heartbeat every keepalive
//!   (`quiesce-keepalive-ms`, 20 s), and every 3 s for 10 s after a voter's node comes
//!   back (a restarted node's replicas learn their leader from it).
//! - **A follower** stops ticking once its own log has been still as long, while it knows a
//!   leader on a live node that is still a voter and still claims the group in its node's
//!   leadership report, and has heard from it within the backstop (15 s): a keepalive, or
//!   an answer from the leader's node to this node's node-level heartbeat (every
//!   200 ms, `peers`), which is what stands in for the group's own heartbeats between
//!   keepalives, for a few messages per node pair instead of a round per group;
//!   otherwise it ticks, and its own election timeout runs. The report covers a leader
//!   replica that stopped (a failed disk) or restarted on a live node; the pings and
//!   the backstop cover what neither sees: a leader's node that reaches the metadata
//!   leader but not this follower. On the leader, such a follower stays in sync while
//!   it holds the last entry and its node answers (`mover::synced_ago`).
//! - **How often.** The mover visits a quiet group only every `QUIET_VISIT` (2 s), on
//!   a metadata change and when a peer is found down (a visit to each of ten thousand
//!   groups four times a second was most of an idle node's CPU), so what makes a group
//!   busy wakes its timers where it happens: a write, entries arriving at a follower,
//!   a transfer naming it (`flotilla_raft`). Keepalives are due every keepalive, looked
//!   at every visit.
//! - **A restarted node** knows no leader yet; its replicas wait the start grace (6 s)
//!   for their leaders' keepalives rather than campaign (`Quiescer::follower`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_metadata::{Broker, Liveness, PartitionAssignment};
use flotilla_raft::{Group, MembershipView};
use flotilla_types::{GroupId, NodeId};
use tokio::time::Instant;

/// The silences a quiet follower tolerates are counted in these, or in keepalives when
/// they are shorter: three of them without a word from its leader or its leader's node
/// (the backstop), and one and a second after this node starts (the start grace).
const SILENCE_UNIT: Duration = Duration::from_secs(5);

/// For this long after a voter's node came back (`Node::peer_returned_at`), a quiet
/// group's leader sends its keepalive every `RETURN_KEEPALIVE_EVERY`, not every
/// keepalive: the returned node answers pings before it has opened all its groups, and
/// a keepalive to a group not open yet is lost.
const RETURN_WINDOW: Duration = Duration::from_secs(10);
const RETURN_KEEPALIVE_EVERY: Duration = Duration::from_secs(3);

pub(crate) struct Quiescer {
    /// A group whose log has not grown for this long may quiesce (zero: never).
    after: Duration,
    /// A quiesced leader's heartbeat period.
    keepalive: Duration,
    /// `SILENCE_UNIT`, or the keepalive when shorter.
    unit: Duration,
    started: Instant,
    /// Groups led here: the last log index seen, and since when it has not changed.
    unchanged_since: BTreeMap<GroupId, (Option<u64>, Instant)>,
    /// Quiesced groups led here: when the last keepalive went.
    keepalive_at: BTreeMap<GroupId, Instant>,
}

impl Quiescer {
    pub(crate) fn new(after: Duration, keepalive: Duration) -> Quiescer {
        Quiescer {
            after,
            keepalive,
            unit: keepalive.min(SILENCE_UNIT),
            started: Instant::now(),
            unchanged_since: BTreeMap::new(),
            keepalive_at: BTreeMap::new(),
        }
    }

    /// A quiesced follower that has heard nothing from its leader, nor had an answer from
    /// its leader's node, for this long ticks again: three units, so one or two lost
    /// messages do not wake it.
    fn backstop(&self) -> Duration {
        3 * self.unit
    }

    /// After this node starts, a replica that knows no leader yet waits this long (a unit
    /// and a margin) to hear from one before its own timers run, unless it is the group's
    /// preferred leader or a voter's node is not alive. Leaders send a keepalive to a
    /// returned node's replicas within a visit (`leader`).
    fn start_grace(&self) -> Duration {
        self.unit + Duration::from_secs(1)
    }

    /// On a group's leader: quiesce it when idle and settled, wake it otherwise.
    /// `returned`: when a peer node last came back after this node judged it down
    /// (`Node::peer_returned_at`); for `RETURN_WINDOW` after one of its voters came
    /// back, a quiet group sends its keepalive every `RETURN_KEEPALIVE_EVERY`, so that a
    /// restarted replica learns its leader within seconds rather than a keepalive.
    pub(crate) async fn leader(
        &mut self,
        group: &Group,
        p: &PartitionAssignment,
        brokers: &BTreeMap<NodeId, Broker>,
        returned: impl Fn(NodeId) -> Option<Instant>,
    ) {
        let id = group.id();
        let status = group.status();
        let now = Instant::now();
        let idle = self.idle(id, status.last_log_index);
        // Only an idle group's settledness matters (and it costs a look at every replica).
        let is_settled = || {
            let matched = group.replication_matched().unwrap_or_default();
            let desired: BTreeSet<NodeId> = p.desired().iter().copied().collect();
            settled(&group.membership(), &desired, brokers, &matched, status.last_log_index, status.leader)
        };
        if !idle || !is_settled() {
            group.set_ticking(true);
            self.keepalive_at.remove(&id);
            return;
        }
        if group.is_ticking() {
            group.set_ticking(false);
            self.keepalive_at.insert(id, now);
            tracing::debug!(group = id, "quiesced");
            return;
        }
        let returned_lately = || {
            group
                .membership()
                .voters()
                .iter()
                .any(|v| returned(*v).is_some_and(|r| now.duration_since(r) < RETURN_WINDOW))
        };
        let due = self.keepalive_at.get(&id).is_none_or(|t| {
            let since = now.duration_since(*t);
            since >= self.keepalive || (since >= RETURN_KEEPALIVE_EVERY && returned_lately())
        });
        if due {
            self.keepalive_at.insert(id, now);
            if let Err(e) = group.heartbeat_now().await {
                tracing::debug!(group = id, error = %e, "keepalive heartbeat not sent");
            }
        }
    }

    /// On a group's follower (or candidate): tick only when there is no live leader to
    /// rely on.
    ///
    /// A node that has just restarted knows no leader in any group, and a quiet group's
    /// leader may not speak for another keepalive: were its replicas to tick at once,
    /// they would time out, campaign with logs as long as anyone's, and take over groups
    /// that had a leader. So for the start grace such a replica stays quiet while every
    /// voter's node is alive, and only the preferred leader's replica ticks (on a whole
    /// cluster's restart, it is the one that elects).
    pub(crate) fn follower(
        &mut self,
        me: NodeId,
        group: &Group,
        p: &PartitionAssignment,
        brokers: &BTreeMap<NodeId, Broker>,
        reported: Option<NodeId>,
        leader_answered_ago: Option<Duration>,
    ) {
        self.keepalive_at.remove(&group.id());
        let idle = self.idle(group.id(), group.status().last_log_index);
        let leader = group.leader();
        let leader_claims = leader.is_some() && reported == leader;
        // Between keepalives, the leader's node answering this node's node-level
        // heartbeat (every 200 ms) while it claims the group counts as hearing from it.
        let since_heard = match (group.since_last_append(), leader_answered_ago.filter(|_| leader_claims)) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        let follower = Follower {
            me,
            leader,
            idle,
            voters: group.membership().voters(),
            preferred: preferred_voter(group, p),
            reported,
            since_start: self.started.elapsed(),
            since_heard,
        };
        let quiet = follower.quiet(brokers, self.start_grace(), self.backstop());
        group.set_ticking(self.after.is_zero() || !quiet);
    }

    /// This replica's log (last index `last`) has not grown for `after` (never, when
    /// `after` is zero).
    fn idle(&mut self, group: GroupId, last: Option<u64>) -> bool {
        let now = Instant::now();
        let since = self.unchanged_since.entry(group).or_insert((last, now));
        if since.0 != last {
            *since = (last, now);
        }
        !self.after.is_zero() && now.duration_since(since.1) >= self.after
    }

    /// Forgets groups no longer hosted here.
    pub(crate) fn retain(&mut self, hosted: &BTreeSet<GroupId>) {
        self.unchanged_since.retain(|g, _| hosted.contains(g));
        self.keepalive_at.retain(|g, _| hosted.contains(g));
    }
}

/// What a follower replica knows when it decides whether its timers run.
#[derive(Debug, Clone)]
struct Follower {
    me: NodeId,
    /// The leader it knows.
    leader: Option<NodeId>,
    /// Its log has not grown for `quiesce-after-ms`.
    idle: bool,
    voters: BTreeSet<NodeId>,
    /// The first desired replica that votes.
    preferred: Option<NodeId>,
    /// The node whose latest leadership report claims the group (the leader's node, while
    /// it still leads).
    reported: Option<NodeId>,
    since_start: Duration,
    /// Since it last heard from its leader (none: not since it started).
    since_heard: Option<Duration>,
}

impl Follower {
    /// Whether it stays quiet (its timers stopped).
    fn quiet(&self, brokers: &BTreeMap<NodeId, Broker>, start_grace: Duration, backstop: Duration) -> bool {
        // No membership yet (a new group's replica waiting for its leader, or for its
        // turn to initialise the group): there is no election its timers could start.
        if self.voters.is_empty() {
            return true;
        }
        // Another live voter's node says it leads the group, and this replica has not
        // waited the backstop for it yet: that leader's keepalive will come. A restarted
        // node's replicas otherwise ran their timers once the start grace passed (those
        // that remembered leading at once): at 10,000 partitions, thousands of timers
        // and pre-votes, which overloaded the node until the metadata leader suspected
        // it and the cluster lost leaders.
        let claimed_elsewhere =
            self.reported.is_some_and(|r| r != self.me && alive(brokers, r) && self.voters.contains(&r));
        let waited = self.since_heard.unwrap_or(self.since_start) >= backstop;
        match self.leader {
            // Restarted, it remembers leading: the others may still wait for it, unless
            // another claims the group.
            Some(l) if l == self.me => claimed_elsewhere && !waited,
            // While entries arrive the leader is busy and heartbeating: the follower keeps
            // its own election timer, so a leader replica that stops (a failed disk) is
            // replaced as fast as without quiescing. Once its log has been still as long
            // as the leader waits before quiescing, it stops too, while:
            // - the leader is still a voter (one that committed its own removal steps
            //   down without a word to its followers);
            // - its node's leadership report still claims the group (a leader replica can
            //   stop or restart on a live node). Reports come every 2 s, so a restarted
            //   follower does not ask for one during the start grace;
            // - it was heard from within the backstop. A replica restarted with its vote
            //   remembers the leader but has not heard from it yet: the time since the
            //   start counts as the silence.
            Some(l) => {
                self.idle
                    && alive(brokers, l)
                    && self.voters.contains(&l)
                    && (self.reported == Some(l) || self.since_start < start_grace)
                    && self.since_heard.unwrap_or(self.since_start) < backstop
            }
            // This node may itself still be marked suspected after its restart.
            None => {
                (claimed_elsewhere && !waited)
                    || (self.since_start < start_grace
                        && self.preferred != Some(self.me)
                        && self.voters.iter().all(|v| *v == self.me || alive(brokers, *v)))
            }
        }
    }
}

/// The first of the desired replicas that votes now (during a move the first desired
/// replica may still be a learner, which cannot campaign).
fn preferred_voter(group: &Group, p: &PartitionAssignment) -> Option<NodeId> {
    let voters = group.membership().voters();
    p.desired().iter().copied().find(|n| voters.contains(n))
}

pub(crate) fn alive(brokers: &BTreeMap<NodeId, Broker>, n: NodeId) -> bool {
    brokers.get(&n).is_some_and(|b| b.liveness == Liveness::Alive)
}

/// Nothing for the group's timers to do: its voters are the desired replicas, with no
/// membership change in flight, and those on live nodes, a majority, all hold the
/// leader's last entry (`last`; `matched` per replica). A replica on a node that is not
/// alive is left out: its node's return wakes the group (its replica then lags). Waiting
/// for it kept every group that a killed node had a replica of ticking until the node
/// came back; with thousands of them, the survivors' heartbeats to each other alone
/// overloaded them.
fn settled(
    members: &MembershipView,
    desired: &BTreeSet<NodeId>,
    brokers: &BTreeMap<NodeId, Broker>,
    matched: &BTreeMap<NodeId, Option<u64>>,
    last: Option<u64>,
    leader: Option<NodeId>,
) -> bool {
    members.committed
        && members.learners.is_empty()
        && members.uniform_voters() == Some(desired)
        && 2 * desired.iter().filter(|n| alive(brokers, **n)).count() > desired.len()
        && desired
            .iter()
            .filter(|n| Some(**n) != leader && alive(brokers, **n))
            .all(|n| matched.get(n).copied().flatten() == last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_metadata::{AdminState, Labels};

    fn brokers(states: &[(NodeId, Liveness)]) -> BTreeMap<NodeId, Broker> {
        states
            .iter()
            .map(|(id, l)| {
                let b = Broker::new(*id, format!("n{id}:7070"), Labels::default());
                (*id, Broker { liveness: *l, admin: AdminState::Active, ..b })
            })
            .collect()
    }

    fn members(configs: &[&[NodeId]], learners: &[NodeId], committed: bool) -> MembershipView {
        MembershipView {
            configs: configs.iter().map(|c| c.iter().copied().collect()).collect(),
            learners: learners.iter().copied().collect(),
            committed,
        }
    }

    #[test]
    fn a_leader_quiesces_only_a_settled_group() {
        use Liveness::{Alive, Suspected};
        let desired = BTreeSet::from([1, 2, 3]);
        let live = brokers(&[(1, Alive), (2, Alive), (3, Alive)]);
        let all = BTreeMap::from([(2, Some(9)), (3, Some(9))]);
        let m = members(&[&[1, 2, 3]], &[], true);
        assert!(settled(&m, &desired, &live, &all, Some(9), Some(1)));
        let behind = BTreeMap::from([(2, Some(9)), (3, Some(8))]);
        assert!(!settled(&m, &desired, &live, &behind, Some(9), Some(1)), "a follower lacks the last entry");
        let unknown = BTreeMap::from([(2, Some(9))]);
        assert!(!settled(&m, &desired, &live, &unknown, Some(9), Some(1)), "a follower not heard from");
        // A voter's node not alive: left out while the others are a majority and hold
        // the last entry.
        let suspected = brokers(&[(1, Alive), (2, Alive), (3, Suspected)]);
        assert!(settled(&m, &desired, &suspected, &behind, Some(9), Some(1)), "node 3 is left out");
        let behind_2 = BTreeMap::from([(2, Some(8)), (3, Some(9))]);
        assert!(!settled(&m, &desired, &suspected, &behind_2, Some(9), Some(1)), "node 2 is live and behind");
        let two_down = brokers(&[(1, Alive), (2, Suspected), (3, Liveness::Dead)]);
        assert!(!settled(&m, &desired, &two_down, &all, Some(9), Some(1)), "no live majority");
        assert!(!settled(&members(&[&[1, 2, 3]], &[4], true), &desired, &live, &all, Some(9), Some(1)), "a learner");
        assert!(!settled(&members(&[&[1, 2, 3]], &[], false), &desired, &live, &all, Some(9), Some(1)), "in flight");
        assert!(!settled(&members(&[&[1, 2, 4]], &[], true), &desired, &live, &all, Some(9), Some(1)), "a move");
        assert!(!settled(&members(&[&[1, 2, 3], &[1, 2]], &[], true), &desired, &live, &all, Some(9), Some(1)));
    }

    #[test]
    fn a_follower_is_quiet_while_it_has_a_live_claiming_leader_heard_lately() {
        use Liveness::{Alive, Suspected};
        let (grace, backstop) = (Duration::from_secs(4), Duration::from_secs(9));
        let s = Duration::from_secs;
        let live = brokers(&[(1, Alive), (2, Alive), (3, Alive)]);
        let quiet_one = Follower {
            me: 2,
            leader: Some(1),
            idle: true,
            voters: BTreeSet::from([1, 2, 3]),
            preferred: Some(1),
            reported: Some(1),
            since_start: s(60),
            since_heard: Some(s(1)),
        };
        assert!(quiet_one.quiet(&live, grace, backstop));
        // Each condition that wakes it:
        let woken = [
            Follower { idle: false, ..quiet_one.clone() },
            // It remembers leading, and nobody else claims the group.
            Follower { leader: Some(2), reported: None, ..quiet_one.clone() },
            Follower { voters: BTreeSet::from([2, 3]), ..quiet_one.clone() }, // leader voted out
            Follower { reported: None, ..quiet_one.clone() },
            Follower { since_heard: Some(backstop), ..quiet_one.clone() },
            Follower { since_heard: None, ..quiet_one.clone() }, // silent since its start, 60 s
        ];
        for f in woken {
            assert!(!f.quiet(&live, grace, backstop), "{f:?}");
        }
        assert!(!quiet_one.quiet(&brokers(&[(1, Suspected), (2, Alive), (3, Alive)]), grace, backstop));
        // Just restarted: the report may not have come yet, and the leader may speak
        // only at its next keepalive.
        let restarted = Follower { reported: None, since_start: s(1), since_heard: None, ..quiet_one.clone() };
        assert!(restarted.quiet(&live, grace, backstop));
    }

    /// Regression (10,000 partitions, a killed node restarted): past the start grace,
    /// the restarted node's replicas that had not heard from their leader yet ran their
    /// timers, those that remembered leading at once; thousands of timers and pre-votes
    /// overloaded the node until the metadata leader suspected it and the cluster lost
    /// leaders. While another live voter's node claims the group, a replica that knows
    /// no leader, or remembers leading, stays quiet until the backstop.
    #[test]
    fn a_restarted_replica_stays_quiet_while_another_live_voter_claims_the_group() {
        use Liveness::{Alive, Suspected};
        let (grace, backstop) = (Duration::from_secs(4), Duration::from_secs(9));
        let s = Duration::from_secs;
        let live = brokers(&[(1, Alive), (2, Alive), (3, Alive)]);
        let f = Follower {
            me: 2,
            leader: None,
            idle: false,
            voters: BTreeSet::from([1, 2, 3]),
            preferred: Some(2),
            reported: Some(3),
            since_start: s(6),
            since_heard: None,
        };
        assert!(
            f.quiet(&live, grace, backstop),
            "claimed by node 3, though this replica is preferred and past the grace"
        );
        let remembers = Follower { leader: Some(2), ..f.clone() };
        assert!(remembers.quiet(&live, grace, backstop), "it remembers leading, but node 3 leads now");
        for woken in [
            Follower { since_start: backstop, ..f.clone() },
            Follower { since_start: backstop, ..remembers.clone() },
            Follower { reported: None, ..f.clone() },
            Follower { reported: Some(2), ..remembers.clone() },
            Follower { reported: Some(4), ..f.clone() }, // not a voter
        ] {
            assert!(!woken.quiet(&live, grace, backstop), "{woken:?}");
        }
        let claimer_suspected = brokers(&[(1, Alive), (2, Alive), (3, Suspected)]);
        assert!(!f.quiet(&claimer_suspected, grace, backstop), "the claiming node is not alive");
    }

    #[test]
    fn a_restarted_replica_without_a_leader_waits_the_grace_unless_it_is_preferred() {
        use Liveness::{Alive, Suspected};
        let grace = Duration::from_secs(4);
        let live = brokers(&[(1, Alive), (2, Alive), (3, Alive)]);
        let f = Follower {
            me: 2,
            leader: None,
            idle: false,
            voters: BTreeSet::from([1, 2, 3]),
            preferred: Some(1),
            reported: None,
            since_start: Duration::from_secs(1),
            since_heard: None,
        };
        assert!(f.quiet(&live, grace, grace));
        assert!(!Follower { since_start: grace, ..f.clone() }.quiet(&live, grace, grace), "past the grace");
        assert!(!Follower { preferred: Some(2), ..f.clone() }.quiet(&live, grace, grace), "the preferred ticks");
        let empty = Follower { voters: BTreeSet::new(), since_start: grace * 10, ..f.clone() };
        assert!(empty.quiet(&live, grace, grace), "no membership yet: nothing to time out for");
        let one_down = brokers(&[(1, Suspected), (2, Suspected), (3, Alive)]);
        assert!(!f.quiet(&one_down, grace, grace), "another voter's node is not alive");
        let me_suspected = brokers(&[(1, Alive), (2, Suspected), (3, Alive)]);
        assert!(f.quiet(&me_suspected, grace, grace), "this node may still be marked suspected");
    }
}
