//! What every node does for the partition groups it hosts, driven by the metadata it has
//! applied (design decision 5, docs/decisions.md: a partition's leader carries out its
//! own membership change):
//!
//! - **Moves.** Where this node leads a group whose desired voters (`desired()`: the
//!   move's target, else the replicas) differ from the group's voters, it adds the
//!   missing nodes as learners, waits until they have caught up (their log data paced by
//!   the node's `MoveThrottle`), changes the voters (openraft goes through a joint
//!   configuration), drops leftover learners, and reports `FinishMove`. A new leader, or
//!   the same one after a restart, resumes from whatever step the group is at; a
//!   cancelled move is a move back, run the same way.
//! - **Leaders.** Where this node leads a group whose preferred leader (`desired()[0]`)
//!   is another live, caught-up voter, it hands leadership over.
//! - **Elections.** Where this node follows a leader whose node the metadata group marks
//!   suspected or dead, the first live replica in preference order starts an election at
//!   once instead of waiting for its election timeout.
//! - **Quiet groups.** Idle groups stop their Raft timers and wake on the next write or a
//!   suspected leader (`quiesce`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::replace::ReplaceOp;
use flotilla_metadata::{Broker, Command as MetaCommand, PartitionAssignment};
use flotilla_raft::{Group, MembershipError, MembershipView, RaftTransport};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use tokio::time::Instant;

use crate::quiesce::Quiescer;
use crate::{ApiError, Node};

const TICK: Duration = Duration::from_millis(250);
/// A tick visits only the groups whose Raft timers run; every group, quiet ones too, is
/// visited when the metadata changed, when a peer was found down, and at least this
/// often. A quiet group has nothing to do between its keepalives (seconds apart), and
/// visiting thousands of them four times a second was most of an idle node's CPU.
const QUIET_VISIT: Duration = Duration::from_secs(2);
/// The tick for `FAST_FOR` after a hosted group's leader is found gone (its take-over is
/// staggered in steps of `WAKE_STAGGER`). Not longer: a group that cannot elect (its
/// other voters gone too) must not keep the node ticking fast through a long outage.
const FAST_TICK: Duration = Duration::from_millis(50);
const FAST_FOR: Duration = Duration::from_secs(3);
/// A leader hands leadership to the preferred replica only after leading this long, so
/// leadership does not bounce while a group settles.
const LEAD_BEFORE_HANDOVER: Duration = Duration::from_secs(2);
/// Woken elections go in rounds of this length; each live replica campaigns at most once
/// a round.
const WAKE_ROUND: Duration = Duration::from_secs(1);
/// Within a round, replicas campaign this far apart, in preference order rotated by the
/// round number. A replica first asks the other live voters for their last log id and
/// stands down for one that holds more (`Groups::take_over`): a candidate whose log is
/// behind cannot win, and its own vote would block the others in its term. The
/// rotation covers a voter that could not be asked.
const WAKE_STAGGER: Duration = Duration::from_millis(100);
/// At most this many elections that this node starts (take-overs and handovers) run at
/// once, each until it concludes or `ELECTION_WAIT` passes. A killed node leaves the
/// survivors thousands of groups to take over, and its restart thousands of groups to
/// hand back; started all at once, their elections (and the vote requests, appends and
/// fsyncs each brings) overloaded the nodes until votes timed out, elections were
/// retried in higher terms, and groups that had leaders lost them too (10,000
/// partitions: up to 6,600 leaderless).
const ELECTIONS_AT_ONCE: usize = 64;
const ELECTION_WAIT: Duration = Duration::from_secs(2);
/// Leadership goes back to a node that returned (restarted, or reachable again) only
/// once it has been alive this long, as this node sees it: a node restarted with
/// thousands of replicas is busy starting them and catching them up, and handovers
/// then were what overloaded it.
const RETURNED_SETTLE: Duration = Duration::from_secs(5);
/// A leadership transfer that has not happened this long after it started is retried
/// toward another voter (a transfer normally completes within a few round trips).
const TRANSFER_PATIENCE: Duration = Duration::from_secs(1);

/// Progress of one catching-up replica, as its group's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatchUp {
    pub node: NodeId,
    /// The last log index it is known to hold (none: it has not answered yet).
    pub matched: Option<u64>,
    /// The leader's last log index.
    pub leader_last: u64,
    /// How long ago it last acknowledged the leader, in milliseconds (none: not since
    /// this leader was elected).
    pub acked_ms_ago: Option<u64>,
    /// Whether it is in sync (`in_sync`): the one rule behind moves, leader handover,
    /// controller changes and the under-replicated metric.
    pub in_sync: bool,
}

/// Whether a replica is in sync with its leader: it acknowledged the leader within
/// `lag_time_max` (`replica-lag-time-max-ms`) and holds the leader's log but for at
/// most `limits::REPLICA_LAG_ENTRIES_MAX` entries. Time, not entries alone: a dead
/// replica of a partition that sees few writes stays "a few entries behind" forever.
pub fn in_sync(matched: Option<u64>, acked_ago: Option<Duration>, leader_last: u64, lag_time_max: Duration) -> bool {
    acked_ago.is_some_and(|a| a <= lag_time_max)
        && matched.is_some_and(|m| m + flotilla_types::limits::REPLICA_LAG_ENTRIES_MAX >= leader_last)
}

struct LoopState {
    /// Since when this node leads each group (for the handover delay).
    leading_since: BTreeMap<GroupId, Instant>,
    /// The last round in which this node started an election for each group.
    elected_in: BTreeMap<GroupId, u32>,
    /// Since when this node has seen each group's leader on a suspected or dead node.
    leader_gone_since: BTreeMap<GroupId, Instant>,
    /// The last leader this node knew of each group (a replica that saw another's vote
    /// request forgets the leader, but must still take part).
    last_leader: BTreeMap<GroupId, NodeId>,
    quiescer: Quiescer,
    /// The metadata this node last looked at (its applied index): the groups it hosts,
    /// the brokers and the replacements under way.
    seen: Option<(u64, Arc<Seen>)>,
    elections: Elections,
    /// Since when each live node has been alive, as this node sees it.
    alive_since: BTreeMap<NodeId, Instant>,
}

/// The elections this node starts, paced (`ELECTIONS_AT_ONCE`): the groups with one
/// under way or waiting for a slot.
#[derive(Clone)]
struct Elections {
    pending: Arc<std::sync::Mutex<BTreeSet<GroupId>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Elections {
    fn pending(&self, group: GroupId) -> bool {
        self.pending.lock().expect("elections lock poisoned").contains(&group)
    }

    /// Runs `election` off the mover's loop (keepalives and moves go on meanwhile) once
    /// a slot is free; it checks that it is still wanted when it runs.
    fn start(&self, group: GroupId, election: impl std::future::Future<Output = ()> + Send + 'static) {
        self.pending.lock().expect("elections lock poisoned").insert(group);
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = this.slots.acquire().await;
            election.await;
            this.pending.lock().expect("elections lock poisoned").remove(&group);
        });
    }
}

struct Seen {
    hosted: BTreeMap<GroupId, PartitionAssignment>,
    brokers: BTreeMap<NodeId, Broker>,
    replacing: Replacing,
}

pub(crate) async fn mover_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let mut applied = node.metadata_group().state().subscribe();
    let config = node.config();
    let mut st = LoopState {
        leading_since: BTreeMap::new(),
        elected_in: BTreeMap::new(),
        leader_gone_since: BTreeMap::new(),
        last_leader: BTreeMap::new(),
        quiescer: Quiescer::new(
            Duration::from_millis(config.quiesce_after_ms),
            Duration::from_millis(config.quiesce_keepalive_ms),
        ),
        seen: None,
        elections: Elections {
            pending: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(ELECTIONS_AT_ONCE)),
        },
        alive_since: BTreeMap::new(),
    };
    // Every group is visited first, and after anything that may concern a quiet one.
    let (mut everything, mut last_full) = (true, Instant::now());
    loop {
        let fast = st.leader_gone_since.values().any(|since| since.elapsed() < FAST_FOR);
        let full = everything || fast || last_full.elapsed() >= QUIET_VISIT;
        if tick(&node, &mut st, full).await && full {
            (everything, last_full) = (false, Instant::now());
        }
        let wait = if fast { FAST_TICK } else { TICK };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = applied.changed() => everything = true,
            _ = node.inner.peers.went_down.notified() => everything = true,
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over the groups hosted here: all of them (`full`), or those whose Raft
/// timers run (the others are quiet: `quiesce`). False when the metadata is not caught up
/// and nothing was done.
async fn tick<T: RaftTransport>(node: &Node<T>, st: &mut LoopState, full: bool) -> bool {
    // Acting on stale metadata would drive a group toward a move already finished or
    // cancelled (adding a learner the node no longer hosts, whose replica is later
    // re-created empty: a log reversion for this leader).
    if !crate::reconciler::metadata_caught_up(node) {
        return false;
    }
    let me = node.id();
    let applied = node.metadata_group().state().applied_index();
    let seen = match &st.seen {
        Some((at, seen)) if *at == applied => seen.clone(),
        _ => {
            let seen = Arc::new(node.with_metadata(|m| Seen {
                hosted: m.groups_on(me),
                brokers: m.brokers().clone(),
                replacing: Replacing::of(m.replacements()),
            }));
            st.seen = Some((applied, seen.clone()));
            seen
        }
    };
    let (hosted, brokers, replacing) = (&seen.hosted, &seen.brokers, &seen.replacing);
    let visit: Vec<GroupId> = match full {
        true => hosted.keys().copied().collect(),
        false => node.groups().ticking().into_iter().filter(|id| hosted.contains_key(id)).collect(),
    };
    let now = Instant::now();
    st.alive_since.retain(|n, _| crate::quiesce::alive(brokers, *n) && !node.peer_down(*n));
    for n in brokers.keys().filter(|n| crate::quiesce::alive(brokers, **n) && !node.peer_down(**n)) {
        st.alive_since.entry(*n).or_insert(now);
    }
    let returning: BTreeSet<NodeId> =
        st.alive_since.iter().filter(|(_, t)| t.elapsed() < RETURNED_SETTLE).map(|(n, _)| *n).collect();
    let mut throttled = BTreeSet::new();
    let mut take_overs = vec![];
    for id in &visit {
        let assignment = &hosted[id];
        let Some(group) = node.groups().get(*id) else { continue };
        if group.is_leader() {
            st.elected_in.remove(id);
            let since = *st.leading_since.entry(*id).or_insert_with(Instant::now);
            match drive_membership(node, &group, assignment, replacing).await {
                Ok(catching_up) => throttled.extend(catching_up.into_iter().map(|n| (*id, n))),
                Err(e) => tracing::debug!(group = id, error = %e, "membership change not done yet"),
            }
            if st.elections.pending(*id) {
                // A handover under way or waiting for its turn.
            } else if let Some(stuck) = group.stalled_transfer(TRANSFER_PATIENCE) {
                retry_transfer(node, &group, assignment, brokers, stuck).await;
            } else if since.elapsed() >= LEAD_BEFORE_HANDOVER
                && let Some(to) = handover_to(node, &group, assignment, brokers)
                && !returning.contains(&to)
            {
                let (node, group, seen) = (node.clone(), group.clone(), seen.clone());
                st.elections.start(*id, async move {
                    if let Some(p) = seen.hosted.get(&group.id()) {
                        hand_over(&node, &group, p, &seen.brokers, to).await;
                    }
                });
            }
            st.quiescer.leader(&group, assignment, brokers, |n| node.peer_returned_at(n)).await;
        } else {
            st.leading_since.remove(id);
            if let Some(others) = wake_election(node, &group, assignment, brokers, st) {
                take_overs.push((group.clone(), others, group.status().term));
            }
            // Who says it leads (the leadership reports): a leader replica that stopped
            // (a failed disk) or restarted on a live node says otherwise within a report.
            let reported = node.groups().reported_leader(*id);
            let answered = group.leader().and_then(|l| node.peer_answered_ago(l));
            st.quiescer.follower(me, &group, assignment, brokers, reported, answered);
        }
    }
    // The take-overs, paced: each first asks the other voters for their logs.
    for (group, others, term) in take_overs {
        let node = node.clone();
        st.elections.start(group.id(), async move { take_over(&node, &group, &others, term).await });
    }
    if full {
        st.quiescer.retain(&hosted.keys().copied().collect());
        st.leading_since.retain(|g, _| hosted.contains_key(g));
        st.elected_in.retain(|g, _| hosted.contains_key(g));
        st.leader_gone_since.retain(|g, _| hosted.contains_key(g));
        st.last_leader.retain(|g, _| hosted.contains_key(g));
    }
    // A group with a learner catching up is never quiet, so every tick sees them all.
    node.groups().router().throttle().set_pairs(throttled);
    true
}

/// The next step of a leader's membership change toward its partition's `desired()`
/// voters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MembershipStep {
    /// Nothing now: a change is in flight (openraft finishes it), this leader voted
    /// itself out (a new leader among the voters carries on), or the voters are the
    /// desired ones and no move is open.
    Nothing,
    /// Drop learners that are not desired.
    RemoveLearners(BTreeSet<NodeId>),
    /// The voters are the move's target: report it finished.
    FinishMove(u64),
    /// A missing replica joins as a learner first.
    AddLearner(NodeId),
    /// New voters still catching up: wait (their appends are throttled).
    CatchingUp(Vec<NodeId>),
    ChangeVoters(BTreeSet<NodeId>),
}

/// The next step for leader `me` of a group with `members`, toward `p.desired()`;
/// `in_sync` says whether a replica has caught up with this leader.
/// `leaving` are nodes being replaced whose old replicas must leave every group first
/// (RFC 0008): they are not desired until their replacement is ready.
fn membership_step(
    me: NodeId,
    members: &MembershipView,
    p: &PartitionAssignment,
    leaving: &BTreeSet<NodeId>,
    in_sync: impl Fn(NodeId) -> bool,
) -> MembershipStep {
    let desired: BTreeSet<NodeId> = p.desired().iter().copied().filter(|n| !leaving.contains(n)).collect();
    // A leader that voted itself out keeps leading until it steps down; it must not start
    // another change (openraft refuses, and a new leader among the voters will).
    if !members.committed || !members.voters().contains(&me) || desired.is_empty() {
        return MembershipStep::Nothing;
    }
    if members.uniform_voters() == Some(&desired) {
        let extra: BTreeSet<NodeId> = members.learners.difference(&desired).copied().collect();
        // A move whose target holds a leaving node is finished once that node is back.
        let whole = desired.len() == p.desired().len();
        return match (&p.moving, extra.is_empty()) {
            (_, false) => MembershipStep::RemoveLearners(extra),
            (Some(m), true) if whole => MembershipStep::FinishMove(m.id),
            (_, true) => MembershipStep::Nothing,
        };
    }
    if let Some(n) = desired.iter().find(|n| !members.contains(**n)) {
        return MembershipStep::AddLearner(*n);
    }
    let lagging: Vec<NodeId> = desired.difference(&members.voters()).copied().filter(|n| !in_sync(*n)).collect();
    match lagging.is_empty() {
        true => MembershipStep::ChangeVoters(desired),
        false => MembershipStep::CatchingUp(lagging),
    }
}

/// Why a step of a move did not happen; the next tick tries again from where the group is.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// `FinishMove` was not recorded.
    #[error("cannot record the finished move: {0}")]
    Finish(ApiError),
}

/// Carries out the next step of the membership change toward `desired()`. Returns the
/// learners still catching up (their appends are throttled).
async fn drive_membership<T: RaftTransport>(
    node: &Node<T>,
    group: &Group,
    p: &PartitionAssignment,
    replacing: &Replacing,
) -> Result<Vec<NodeId>, StepError> {
    let members = group.membership();
    report_gone(node, group, &members, replacing).await;
    let in_sync = |n| node.in_sync(group, n);
    let step = membership_step(node.id(), &members, p, &replacing.leaving, in_sync);
    match step {
        MembershipStep::Nothing => {}
        MembershipStep::RemoveLearners(extra) => group.remove_learners(extra).await?,
        MembershipStep::FinishMove(move_id) => {
            let cmd = MetaCommand::FinishMove { group: group.id(), move_id };
            node.metadata_write(cmd).await.map_err(StepError::Finish)?;
            tracing::info!(group = group.id(), move_id, voters = ?p.desired(), "move finished");
        }
        MembershipStep::AddLearner(n) => {
            node.groups().router().throttle().add_pair(group.id(), n);
            group.add_learner(n).await?;
            tracing::info!(group = group.id(), node = n, "added learner");
            return Ok(vec![n]);
        }
        MembershipStep::CatchingUp(lagging) => return Ok(lagging),
        MembershipStep::ChangeVoters(desired) => {
            tracing::info!(group = group.id(), from = ?members.voters(), to = ?desired, "changing voters");
            group.change_voters(desired, false).await?;
        }
    }
    Ok(Vec::new())
}

/// Nodes being replaced after losing their data (RFC 0008), as this node's metadata has
/// it.
#[derive(Debug, Default)]
struct Replacing {
    /// Those whose old replica has not left every group yet: no leader adds them.
    leaving: BTreeSet<NodeId>,
    /// For each group, the nodes whose old replica it still has to report gone.
    pending: BTreeMap<GroupId, Vec<NodeId>>,
}

impl Replacing {
    fn of(replacements: &BTreeMap<NodeId, flotilla_metadata::replace::Replacement>) -> Replacing {
        let mut out = Replacing::default();
        for (node, r) in replacements.iter().filter(|(_, r)| !r.ready()) {
            out.leaving.insert(*node);
            for g in &r.pending {
                out.pending.entry(*g).or_default().push(*node);
            }
        }
        out
    }
}

/// Reports each node being replaced that this group's committed membership no longer
/// holds (`ReplicaGone`): its old replica is out of the group.
async fn report_gone<T: RaftTransport>(node: &Node<T>, group: &Group, members: &MembershipView, r: &Replacing) {
    let Some(nodes) = r.pending.get(&group.id()) else { return };
    if !members.committed {
        return;
    }
    for n in nodes.iter().filter(|n| !members.contains(**n)) {
        let cmd = MetaCommand::Replace { node: *n, op: ReplaceOp::ReplicaGone { group: group.id() } };
        match node.metadata_write(cmd).await {
            Ok(_) => tracing::info!(group = group.id(), node = n, "the replaced node's old replica left the group"),
            Err(e) => tracing::debug!(group = group.id(), node = n, error = %e.message, "cannot report yet"),
        }
    }
}

/// How long ago a replica last showed that it is alive and holds what its leader holds:
/// its last acknowledgement (`acked`), or, while it holds the leader's last entry, its
/// node's latest answer to this node's node-level heartbeat (`answered`). A quiet
/// group's leader heartbeats its followers only every `quiesce-keepalive-ms`
/// (`quiesce`); a replica with nothing left to receive is not lagging while its node
/// answers, as a Kafka follower that has fetched up to the log end stays in sync.
pub fn synced_ago(
    acked: Option<Duration>,
    answered: Option<Duration>,
    matched: Option<u64>,
    leader_last: u64,
) -> Option<Duration> {
    match (matched == Some(leader_last), acked, answered) {
        (true, Some(a), Some(p)) => Some(a.min(p)),
        (true, a, p) => a.or(p),
        (false, a, _) => a,
    }
}

/// On the leader: how far each of `nodes` has caught up, and whether it is in sync.
/// `answered`: how long ago a node last answered this node's node-level heartbeat
/// (`Node::peer_answered_ago`).
pub(crate) fn catch_up(
    group: &Group,
    nodes: &[NodeId],
    lag_time_max: Duration,
    answered: impl Fn(NodeId) -> Option<Duration>,
) -> Vec<CatchUp> {
    let matched = group.replication_matched().unwrap_or_default();
    let acked = group.peer_ack_ages().unwrap_or_default();
    let leader_last = group.status().last_log_index.unwrap_or(0);
    nodes
        .iter()
        .map(|n| {
            let m = matched.get(n).copied().flatten();
            let acked_ago = acked.get(n).copied().flatten();
            let ago = synced_ago(acked_ago, answered(*n), m, leader_last);
            CatchUp {
                node: *n,
                matched: m,
                leader_last,
                acked_ms_ago: acked_ago.map(|a| a.as_millis() as u64),
                in_sync: in_sync(m, ago, leader_last, lag_time_max),
            }
        })
        .collect()
}

/// The preferred replica (`desired()[0]`), when leader `leader` should hand leadership
/// to it: it is another voter of a settled membership, on an active, live node, and in
/// sync.
fn handover_target(
    leader: NodeId,
    p: &PartitionAssignment,
    members: &MembershipView,
    brokers: &BTreeMap<NodeId, Broker>,
    in_sync: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let preferred = *p.desired().first()?;
    let usable = preferred != leader
        && brokers.get(&preferred).is_some_and(|b| b.accepts_replicas())
        && members.committed
        && members.uniform_voters().is_some_and(|v| v.contains(&preferred));
    (usable && in_sync(preferred)).then_some(preferred)
}

/// Where this leader should hand leadership now: the preferred replica, when it is a
/// live, caught-up voter (`handover_target`).
fn handover_to<T: RaftTransport>(
    node: &Node<T>,
    group: &Group,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
) -> Option<NodeId> {
    let leader = group.status().leader.unwrap_or(0);
    let in_sync = |n| node.in_sync(group, n);
    handover_target(leader, p, &group.membership(), brokers, in_sync)
}

/// Hands leadership to `to` if this replica still leads and `to` is still the target
/// (it may have waited for its turn), and waits (at most `ELECTION_WAIT`) for the
/// transfer to conclude.
async fn hand_over<T: RaftTransport>(
    node: &Node<T>,
    group: &Group,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    to: NodeId,
) {
    if !group.is_leader() || handover_to(node, group, p, brokers) != Some(to) {
        return;
    }
    let term = group.status().term;
    match group.transfer_leader(to).await {
        Ok(()) => {
            tracing::info!(group = group.id(), to, "handing leadership to the preferred replica");
            group.wait_led_after(term, ELECTION_WAIT).await;
        }
        Err(e) => tracing::debug!(group = group.id(), error = %e, "leader transfer refused"),
    }
}

/// Where leader `me` transfers leadership again after a transfer to `stuck` did not
/// happen: another live, in-sync voter in preference order (the desired replicas, then
/// the other voters), or `stuck` again when it is the only choice.
fn retry_target(
    me: NodeId,
    stuck: NodeId,
    p: &PartitionAssignment,
    voters: &BTreeSet<NodeId>,
    brokers: &BTreeMap<NodeId, Broker>,
    in_sync: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let mut order: Vec<NodeId> = p.desired().to_vec();
    let others: Vec<NodeId> = voters.iter().copied().filter(|v| !order.contains(v)).collect();
    order.extend(others);
    let usable = |n: &NodeId| *n != me && voters.contains(n) && crate::quiesce::alive(brokers, *n) && in_sync(*n);
    order.iter().copied().filter(usable).find(|n| *n != stuck).or_else(|| usable(&stuck).then_some(stuck))
}

/// A transfer this leader started has not happened (its target is down, behind, or
/// never got the request), and meanwhile the group takes no writes: hand leadership to
/// another live, caught-up voter in preference order, or to the same one again when it
/// is the only choice.
async fn retry_transfer<T: RaftTransport>(
    node: &Node<T>,
    group: &Group,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    stuck: NodeId,
) {
    let me = group.status().leader.unwrap_or(0);
    let in_sync = |n| node.in_sync(group, n);
    let Some(to) = retry_target(me, stuck, p, &group.membership().voters(), brokers, in_sync) else { return };
    tracing::info!(group = group.id(), stuck, to, "leadership transfer did not happen: transferring again");
    if let Err(e) = group.transfer_leader(to).await {
        tracing::debug!(group = group.id(), error = %e, "leader transfer refused");
    }
}

/// One take-over, unless the group found a leader while it waited for its slot; waits
/// (at most `TAKE_OVER_WAIT`) for the election to conclude, so that the slot paces them.
/// `term` is the group's term when the take-over was decided.
async fn take_over<T: RaftTransport>(node: &Node<T>, group: &Arc<Group>, others: &[NodeId], term: u64) {
    let now = group.status().term;
    if now > term && (group.leader().is_some() || group.voted_for_candidate().is_some()) {
        return;
    }
    match node.groups().take_over(group, others).await {
        Ok(()) => {
            node.metrics().count_woken_election();
            group.wait_led_after(now, ELECTION_WAIT).await;
        }
        Err(e) => tracing::info!(group = group.id(), error = %e, "not starting an election"),
    }
}

/// Whether to start an election now, and if so the other live voters to ask first: when
/// the leader this replica knows is on a node the metadata group marks suspected or dead
/// and this replica has not heard from it lately either, or on a node refusing this
/// node's heartbeats. Live replicas campaign in preference order, staggered.
fn wake_election<T: RaftTransport>(
    node: &Node<T>,
    group: &Arc<Group>,
    p: &PartitionAssignment,
    brokers: &BTreeMap<NodeId, Broker>,
    st: &mut LoopState,
) -> Option<Vec<NodeId>> {
    // Gone: refusing connections to this node's own heartbeats (a dead process, known
    // within milliseconds: `peers`), or suspected or dead in the metadata and silent to
    // those heartbeats for as long. A node whose metadata heartbeats come late under load
    // but that answers this node's is not gone: taking its quiet groups over (a restart
    // at 10,000 partitions: thousands at once) is what overloaded the cluster further.
    let gone = |n: &NodeId| {
        node.peer_down(*n)
            || (!crate::quiesce::alive(brokers, *n) && !node.peer_answered_within(*n, node.suspect_after()))
    };
    let leader = match group.leader() {
        Some(l) => {
            st.last_leader.insert(group.id(), l);
            Some(l)
        }
        None => st.last_leader.get(&group.id()).copied(),
    };
    // The metadata leader's verdict must agree with this replica's own evidence: a
    // replica that heard from the leader within the suspicion window leaves it be (under
    // load a metadata heartbeat can be late while the partition group's traffic flows).
    // A leader whose node refuses connections sends nothing more, however lately heard.
    let heard_lately = group.since_last_append().is_some_and(|d| d < node.suspect_after())
        && !leader.is_some_and(|l| node.peer_down(l));
    if group.id() == METADATA_GROUP || heard_lately || leader.is_none_or(|l| l == node.id() || !gone(&l)) {
        st.leader_gone_since.remove(&group.id());
        return None;
    }
    let noticed = *st.leader_gone_since.entry(group.id()).or_insert_with(Instant::now);
    // A take-over already under way or waiting its turn.
    if st.elections.pending(group.id()) {
        return None;
    }
    let voters = group.membership().voters();
    let live: Vec<NodeId> = p.desired().iter().copied().filter(|n| !gone(n) && voters.contains(n)).collect();
    let round = campaign_round(node.id(), &live, noticed.elapsed(), st.elected_in.get(&group.id()).copied())?;
    st.elected_in.insert(group.id(), round);
    tracing::info!(group = group.id(), ?leader, "the leader's node is gone: taking over");
    Some(live.iter().copied().filter(|n| *n != node.id()).collect())
}

/// The round in which replica `me` campaigns now, if it does: `live` are the live voters
/// in preference order, `elapsed` the time since the leader was found gone, and
/// `last_round` the round this replica last campaigned in. Each round (`WAKE_ROUND`) the
/// live voters take turns `WAKE_STAGGER` apart, in preference order rotated by the
/// round number; each campaigns at most once a round.
fn campaign_round(me: NodeId, live: &[NodeId], elapsed: Duration, last_round: Option<u32>) -> Option<u32> {
    let rank = live.iter().position(|n| *n == me)?;
    let round = (elapsed.as_millis() / WAKE_ROUND.as_millis()) as u32;
    let turn = (rank + live.len() - round as usize % live.len()) % live.len();
    let into_round = elapsed - WAKE_ROUND * round;
    (into_round >= WAKE_STAGGER * turn as u32 && last_round != Some(round)).then_some(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quiet group's follower is acknowledged only every keepalive; while it holds the
    /// leader's last entry, its node's answers to the node-level heartbeat count as well,
    /// and never while it lacks entries (a follower that stopped taking appends on a
    /// live node falls out of sync as before).
    #[test]
    fn a_caught_up_follower_is_synced_as_recently_as_its_node_answered() {
        let s = |ms: u64| Some(Duration::from_millis(ms));
        // (acked ago, answered ago, matched, leader's last) → synced ago
        let table = [
            ((s(20_000), s(150), Some(9), 9), s(150)),
            ((s(100), s(150), Some(9), 9), s(100)),
            ((None, s(150), Some(9), 9), s(150)), // not acknowledged since this leader began
            ((s(20_000), None, Some(9), 9), s(20_000)),
            ((s(20_000), s(150), Some(8), 9), s(20_000)), // behind: acknowledgements only
            ((None, s(150), None, 9), None),
        ];
        for ((acked, answered, matched, last), want) in table {
            assert_eq!(synced_ago(acked, answered, matched, last), want, "{acked:?} {answered:?} {matched:?} {last}");
        }
    }

    /// Regression (10,000 partitions, a node killed, then restarted): thousands of
    /// take-overs, then of handovers, started at once overloaded the nodes until groups
    /// that had leaders lost them too. Elections are paced: at most `ELECTIONS_AT_ONCE`
    /// run at a time, a group is pending from its start until its election concludes,
    /// and every one runs.
    #[tokio::test]
    async fn elections_run_at_most_so_many_at_once_and_all_of_them_run() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let elections =
            Elections { pending: Arc::default(), slots: Arc::new(tokio::sync::Semaphore::new(ELECTIONS_AT_ONCE)) };
        let (running, most, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let n = 3 * ELECTIONS_AT_ONCE as u64 + 5;
        for g in 0..n {
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            elections.start(g, async move {
                most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, SeqCst);
                done.fetch_add(1, SeqCst);
            });
            assert!(elections.pending(g));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(SeqCst) < n as usize {
            assert!(Instant::now() < deadline, "{} of {n} elections ran", done.load(SeqCst));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(most.load(SeqCst), ELECTIONS_AT_ONCE, "at most so many at once, and that many when there are more");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!((0..n).all(|g| !elections.pending(g)), "a concluded election is no longer pending");
    }

    #[test]
    fn in_sync_needs_a_recent_acknowledgement_and_the_log_but_for_a_few_entries() {
        let s = |ms: u64| Some(Duration::from_millis(ms));
        let lag = Duration::from_millis(15_000);
        let limit = flotilla_types::limits::REPLICA_LAG_ENTRIES_MAX;
        // (matched, acknowledged ago, leader's last index) → in sync
        let table = [
            ((Some(100), s(10), 100), true),
            ((Some(100 - limit), s(10), 100), true),
            ((Some(100 - limit - 1), s(10), 100), false), // too far behind, however recent
            ((Some(100), s(15_000), 100), true),
            ((Some(100), s(15_001), 100), false), // silent too long, however close
            ((Some(100), None, 100), false),      // not acknowledged since this leader began
            ((None, s(10), 100), false),          // nothing matched yet
            ((None, s(10), 0), false),
        ];
        for ((matched, ago, last), want) in table {
            assert_eq!(in_sync(matched, ago, last, lag), want, "matched {matched:?}, acked {ago:?} ago, last {last}");
        }
    }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use flotilla_metadata::{AdminState, Labels, Liveness, Move};

    fn members(configs: &[&[NodeId]], learners: &[NodeId], committed: bool) -> MembershipView {
        MembershipView {
            configs: configs.iter().map(|c| c.iter().copied().collect()).collect(),
            learners: learners.iter().copied().collect(),
            committed,
        }
    }

    fn partition(replicas: &[NodeId], target: Option<&[NodeId]>) -> PartitionAssignment {
        PartitionAssignment {
            partition: 0,
            group: 7,
            replicas: replicas.to_vec(),
            epoch: 1,
            moving: target.map(|t| Move { id: 42, target: t.to_vec(), reason: "test".into(), rolling_back: vec![] }),
        }
    }

    fn brokers(states: &[(NodeId, Liveness, AdminState)]) -> BTreeMap<NodeId, Broker> {
        states
            .iter()
            .map(|(id, l, a)| {
                (*id, Broker { liveness: *l, admin: *a, ..Broker::new(*id, format!("n{id}:7070"), Labels::default()) })
            })
            .collect()
    }

    #[test]
    fn a_move_adds_learners_waits_for_them_changes_voters_drops_leftovers_and_finishes() {
        use MembershipStep::*;
        let moving = partition(&[1, 2, 3], Some(&[1, 2, 4]));
        let none = BTreeSet::new();
        let all_in_sync = |_| true;
        let four_behind = |n| n != 4;
        // (leader, members, partition, 4 in sync) → step
        let table: Vec<(NodeId, MembershipView, &PartitionAssignment, bool, MembershipStep)> = vec![
            (1, members(&[&[1, 2, 3]], &[], true), &moving, true, AddLearner(4)),
            (1, members(&[&[1, 2, 3]], &[4], true), &moving, false, CatchingUp(vec![4])),
            (1, members(&[&[1, 2, 3]], &[4], true), &moving, true, ChangeVoters([1, 2, 4].into())),
            (1, members(&[&[1, 2, 3], &[1, 2, 4]], &[], false), &moving, true, Nothing), // joint, in flight
            (1, members(&[&[1, 2, 4]], &[3], true), &moving, true, RemoveLearners([3].into())),
            (1, members(&[&[1, 2, 4]], &[], true), &moving, true, FinishMove(42)),
            (3, members(&[&[1, 2, 4]], &[3], true), &moving, true, Nothing), // voted itself out
        ];
        for (me, m, p, four, want) in table {
            let got = match four {
                true => membership_step(me, &m, p, &none, all_in_sync),
                false => membership_step(me, &m, p, &none, four_behind),
            };
            assert_eq!(got, want, "leader {me}, {m:?}");
        }
        let settled = partition(&[1, 2, 3], None);
        assert_eq!(membership_step(1, &members(&[&[1, 2, 3]], &[], true), &settled, &none, all_in_sync), Nothing);
        assert_eq!(
            membership_step(1, &members(&[&[1, 2, 3]], &[5], true), &settled, &none, all_in_sync),
            RemoveLearners([5].into())
        );
    }

    /// A node being replaced leaves each group (voter or learner), is not added back
    /// while its replacement waits for other groups, and comes back as a learner, caught
    /// up and promoted once the replacement is ready. A move toward it waits for it.
    #[test]
    fn a_replaced_node_leaves_the_group_and_comes_back_as_a_new_learner() {
        use MembershipStep::*;
        let settled = partition(&[1, 2, 3], None);
        let three = BTreeSet::from([3]);
        let none = BTreeSet::new();
        let all = |_| true;
        // (members, leaving) → step
        let table: Vec<(MembershipView, &BTreeSet<NodeId>, MembershipStep)> = vec![
            (members(&[&[1, 2, 3]], &[], true), &three, ChangeVoters([1, 2].into())),
            (members(&[&[1, 2, 3], &[1, 2]], &[], false), &three, Nothing),
            (members(&[&[1, 2]], &[3], true), &three, RemoveLearners([3].into())),
            (members(&[&[1, 2]], &[], true), &three, Nothing),
            // Ready: it is an ordinary new replica.
            (members(&[&[1, 2]], &[], true), &none, AddLearner(3)),
            (members(&[&[1, 2]], &[3], true), &none, ChangeVoters([1, 2, 3].into())),
        ];
        for (m, leaving, want) in table {
            assert_eq!(membership_step(1, &m, &settled, leaving, all), want, "{m:?}, leaving {leaving:?}");
        }
        let moving = partition(&[1, 2, 4], Some(&[1, 2, 3]));
        assert_eq!(membership_step(1, &members(&[&[1, 2]], &[], true), &moving, &three, all), Nothing);
        let lone = partition(&[3], None);
        assert_eq!(membership_step(1, &members(&[&[1]], &[], true), &lone, &three, all), Nothing);
    }

    #[test]
    fn leadership_goes_to_the_preferred_replica_only_when_it_is_a_live_in_sync_voter() {
        use AdminState::{Active, Draining};
        use Liveness::{Alive, Suspected};
        let p = partition(&[2, 1, 3], None);
        let m = members(&[&[1, 2, 3]], &[], true);
        let ok = brokers(&[(1, Alive, Active), (2, Alive, Active), (3, Alive, Active)]);
        assert_eq!(handover_target(1, &p, &m, &ok, |_| true), Some(2));
        assert_eq!(handover_target(2, &p, &m, &ok, |_| true), None, "it leads already");
        assert_eq!(handover_target(1, &p, &m, &ok, |n| n != 2), None, "behind");
        let suspected = brokers(&[(1, Alive, Active), (2, Suspected, Active), (3, Alive, Active)]);
        assert_eq!(handover_target(1, &p, &m, &suspected, |_| true), None, "not alive");
        let draining = brokers(&[(1, Alive, Active), (2, Alive, Draining), (3, Alive, Active)]);
        assert_eq!(handover_target(1, &p, &m, &draining, |_| true), None, "draining");
        assert_eq!(handover_target(1, &p, &members(&[&[1, 3]], &[2], true), &ok, |_| true), None, "a learner");
        assert_eq!(handover_target(1, &p, &members(&[&[1, 2, 3]], &[], false), &ok, |_| true), None, "in flight");
    }

    #[test]
    fn a_stalled_transfer_goes_to_the_next_usable_voter_or_the_same_one_again() {
        use AdminState::Active;
        use Liveness::{Alive, Dead};
        let p = partition(&[2, 3, 1], None);
        let voters = BTreeSet::from([1, 2, 3]);
        let ok = brokers(&[(1, Alive, Active), (2, Alive, Active), (3, Alive, Active)]);
        assert_eq!(retry_target(1, 2, &p, &voters, &ok, |_| true), Some(3));
        assert_eq!(retry_target(1, 2, &p, &voters, &ok, |n| n != 3), Some(2), "the only choice");
        let three_dead = brokers(&[(1, Alive, Active), (2, Alive, Active), (3, Dead, Active)]);
        assert_eq!(retry_target(1, 2, &p, &voters, &three_dead, |_| true), Some(2));
        assert_eq!(retry_target(1, 2, &p, &voters, &three_dead, |n| n != 2), None);
        // A voter outside the desired replicas comes after them.
        let voters4 = BTreeSet::from([1, 2, 3, 4]);
        let four = brokers(&[(1, Alive, Active), (2, Alive, Active), (3, Dead, Active), (4, Alive, Active)]);
        assert_eq!(retry_target(1, 2, &p, &voters4, &four, |_| true), Some(4));
    }

    #[test]
    fn live_voters_campaign_in_turns_rotating_each_round_and_once_a_round() {
        let ms = Duration::from_millis;
        let live = [1, 2, 3];
        // Round 0: 1 at once, 2 after one stagger, 3 after two.
        assert_eq!(campaign_round(1, &live, ms(0), None), Some(0));
        assert_eq!(campaign_round(2, &live, ms(50), None), None);
        assert_eq!(campaign_round(2, &live, WAKE_STAGGER, None), Some(0));
        assert_eq!(campaign_round(3, &live, WAKE_STAGGER, None), None);
        assert_eq!(campaign_round(3, &live, WAKE_STAGGER * 2, None), Some(0));
        assert_eq!(campaign_round(1, &live, ms(500), Some(0)), None, "once a round");
        // Round 1: the order rotates (2, 3, 1), so a first voter that cannot win does
        // not block the group for good.
        let r1 = WAKE_ROUND;
        assert_eq!(campaign_round(2, &live, r1, Some(0)), Some(1));
        assert_eq!(campaign_round(3, &live, r1, Some(0)), None);
        assert_eq!(campaign_round(3, &live, r1 + WAKE_STAGGER, Some(0)), Some(1));
        assert_eq!(campaign_round(1, &live, r1 + WAKE_STAGGER, Some(0)), None);
        assert_eq!(campaign_round(1, &live, r1 + WAKE_STAGGER * 2, Some(0)), Some(1));
        assert_eq!(campaign_round(4, &live, r1 * 5, None), None, "not a live voter");
    }
}
