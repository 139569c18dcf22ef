//! The registry of every Raft group hosted on this node, and the server side of the
//! transport: incoming messages are dispatched to their group by id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use flotilla_metadata::MetadataState;
use flotilla_partition::PartitionState;
use flotilla_storage::Engine;
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use openraft::error::{InitializeError, RaftError};

use crate::config::GroupTimings;
use crate::group::{Group, GroupError, GroupKind};
use crate::log_store::{LogStore, decode, destroy, encode, restore_from_tombstone};
use crate::network::{NetworkFactory, RaftReply, RaftRpc, RaftTransport, Registration, Router, TransportError};
use crate::state_machine::{GroupState, StateMachineStore};
use crate::{Raft, TypeConfig};

/// Every group on one node, over one storage engine and one transport.
pub struct Groups<T: RaftTransport> {
    node: NodeId,
    engine: Arc<dyn Engine>,
    router: Router<T>,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// Serialises group creation and removal.
    lifecycle: tokio::sync::Mutex<()>,
    /// The partition groups other nodes say they lead (`report_leadership`).
    reports: RwLock<LeaderReports>,
    partition_timings: GroupTimings,
    /// Whether groups' Raft messages are served. Off while a node that started on an
    /// empty data directory, none of its peers answering, waits to learn whether the
    /// cluster knows it (`set_admitting`): until then it must not vote or accept entries.
    admitting: std::sync::atomic::AtomicBool,
}

impl<T: RaftTransport> Groups<T> {
    pub fn new(node: NodeId, engine: Arc<dyn Engine>, transport: T) -> Groups<T> {
        Groups {
            node,
            engine,
            router: Router::new(transport),
            groups: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            reports: RwLock::new(LeaderReports::default()),
            partition_timings: GroupTimings::PARTITION,
            admitting: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Serves groups' Raft messages (votes, appends, snapshots, forwarded writes), or
    /// refuses them all; node-wide messages (`Registered`, pings, leadership reports) are
    /// answered either way.
    pub fn set_admitting(&self, admitting: bool) {
        self.admitting.store(admitting, std::sync::atomic::Ordering::SeqCst);
    }

    /// Partition groups' heartbeat and election timings (default `GroupTimings::PARTITION`).
    pub fn with_partition_timings(mut self, timings: GroupTimings) -> Groups<T> {
        self.partition_timings = timings;
        self
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn router(&self) -> &Router<T> {
        &self.router
    }

    pub fn get(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().expect("groups lock poisoned").get(&id).cloned()
    }

    /// The groups whose Raft timers run (`Group::set_ticking`): those not quiet.
    pub fn ticking(&self) -> Vec<GroupId> {
        self.groups.read().expect("groups lock poisoned").values().filter(|g| g.is_ticking()).map(|g| g.id).collect()
    }

    /// The partition group `id`, typed; `None` when it does not run here (or is not a
    /// partition group).
    pub fn partition(&self, id: GroupId) -> Option<crate::PartitionGroup> {
        self.get(id).and_then(crate::PartitionGroup::new)
    }

    /// The metadata group (`METADATA_GROUP`), typed, once it runs here.
    pub fn metadata(&self) -> Option<crate::MetadataGroup> {
        self.get(flotilla_types::METADATA_GROUP).and_then(crate::MetadataGroup::new)
    }

    pub fn ids(&self) -> Vec<GroupId> {
        self.groups.read().expect("groups lock poisoned").keys().copied().collect()
    }

    /// Starts the group on this node if it is not running: recovers it from storage, or,
    /// when storage has nothing of it, initialises it with `voters` if given (every
    /// initial replica initialises with the same voters, so whichever starts first, they
    /// agree) or else waits empty for a leader to add it as a learner.
    pub async fn ensure(
        &self,
        id: GroupId,
        kind: GroupKind,
        voters: Option<&BTreeSet<NodeId>>,
    ) -> Result<Arc<Group>, String> {
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        let _guard = self.lifecycle.lock().await;
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        assert_eq!(kind == GroupKind::Metadata, id == METADATA_GROUP, "group 0 is the metadata group");
        let (timings, initial) = match kind {
            GroupKind::Metadata => (GroupTimings::METADATA, GroupState::Metadata(MetadataState::new())),
            GroupKind::Partition => (self.partition_timings, GroupState::Partition(PartitionState::new())),
        };
        let config = timings.openraft_config(format!("group-{id}"), kind);
        // A replica this node held before and removed: start from what it remembered.
        let vote_floor = restore_from_tombstone(self.engine.as_ref(), id)
            .await
            .map_err(|e| format!("group {id}: cannot read its tombstone: {e}"))?;
        let log = LogStore::new(id, self.engine.clone());
        let sm = StateMachineStore::open(id, self.engine.clone(), initial)
            .map_err(|e| format!("group {id}: cannot read its applied state: {e}"))?
            .with_tail(log.tail());
        let shared = sm.shared();
        let network = NetworkFactory::new(self.router.clone(), id);
        let raft: Raft = openraft::Raft::new(self.node, config, network, log.clone(), sm)
            .await
            .map_err(|e| format!("group {id}: cannot start: {e}"))?;
        if let Some(voters) = voters {
            match raft.initialize(voters.clone()).await {
                Ok(()) => tracing::info!(group = id, ?voters, "initialised group"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!(group = id, "group recovered from storage")
                }
                Err(e) => return Err(format!("group {id}: cannot initialise: {e}")),
            }
        }
        let group = Arc::new(Group {
            id,
            node: self.node,
            kind,
            raft,
            shared,
            log,
            ticking: std::sync::atomic::AtomicBool::new(true),
            last_append: std::sync::Mutex::new(None),
            vote_floor: std::sync::Mutex::new(vote_floor),
            leaving: std::sync::atomic::AtomicBool::new(false),
            transfer: std::sync::Mutex::new(None),
        });
        self.groups.write().expect("groups lock poisoned").insert(id, group.clone());
        Ok(group)
    }

    /// Stops the group and deletes its data from this node.
    pub async fn remove(&self, id: GroupId) -> Result<(), GroupError> {
        assert_ne!(id, METADATA_GROUP, "the metadata group is never removed");
        let _guard = self.lifecycle.lock().await;
        let Some(group) = self.groups.write().expect("groups lock poisoned").remove(&id) else {
            return Ok(());
        };
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = id, error = %e, "group did not shut down cleanly");
        }
        destroy(self.engine.as_ref(), id)
            .await
            .map_err(|e| GroupError::Storage { group: id, reason: format!("cannot delete its data: {e}") })?;
        tracing::info!(group = id, "removed group");
        Ok(())
    }

    /// Whether this node may delete its replica of `group`: the group's leader, confirmed
    /// by a quorum, has a committed membership without this node. The local metadata
    /// alone may be stale (a node cut off from the metadata leader across a move away
    /// and back would destroy a replica the group counts as a voter again, and the
    /// entries it acknowledged with it). Asks the leader this replica knows, the one
    /// other nodes report, then `candidates`, following leader hints; `false` when no
    /// leader answers.
    pub async fn released_by_leader(&self, group: GroupId, candidates: &[NodeId]) -> bool {
        let mut queue: Vec<NodeId> = Vec::new();
        let local = self.get(group);
        queue.extend(local.as_ref().and_then(|g| g.leader()));
        queue.extend(self.reported_leader(group));
        queue.extend(candidates.iter().copied());
        let leaving = |on: bool| {
            if let Some(g) = &local {
                g.leaving.store(on, std::sync::atomic::Ordering::SeqCst);
            }
        };
        leaving(true);
        let released = self.ask_leader_to_release(group, local.as_ref(), queue).await;
        if !released {
            leaving(false);
        }
        released
    }

    /// Asks `queue` in order (following leader hints, at most `ASKS_MAX` nodes) until a
    /// replica that leads `group` answers; whether it released this node.
    async fn ask_leader_to_release(&self, group: GroupId, local: Option<&Arc<Group>>, mut queue: Vec<NodeId>) -> bool {
        const ASKS_MAX: usize = 8;
        let timeout = std::time::Duration::from_secs(2);
        let mut asked: BTreeSet<NodeId> = BTreeSet::new();
        while let Some(target) = queue.first().copied() {
            queue.remove(0);
            if asked.len() >= ASKS_MAX || !asked.insert(target) {
                continue;
            }
            let reply = if target == self.node {
                match local {
                    Some(g) => {
                        let (leads, keeps) = g.keeps_member(self.node).await;
                        RaftReply::Membership { leads, keeps, leader: g.leader() }
                    }
                    None => continue,
                }
            } else {
                match self.router.call(target, group, &RaftRpc::Membership(self.node), timeout).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(group, target, error = %e, "membership question not answered");
                        continue;
                    }
                }
            };
            match reply {
                RaftReply::Membership { leads: true, keeps, .. } => return !keeps,
                RaftReply::Membership { leads: false, leader: Some(l), .. } => queue.insert(0, l),
                _ => {}
            }
        }
        false
    }

    /// Stops every group (their data stays).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Group>> = self.groups.write().expect("groups lock poisoned").values().cloned().collect();
        for g in all {
            let _ = g.raft.shutdown().await;
        }
    }

    /// Sends every other node in `peers` the partition groups this node leads, so that
    /// any node can name the leader of a partition it does not host (metadata answers,
    /// `cluster describe`). Each report replaces the sender's previous one.
    pub async fn report_leadership(
        &self,
        peers: &[NodeId],
        leading: Vec<(GroupId, u64)>,
        timeout: std::time::Duration,
    ) {
        let rpc = RaftRpc::Leading(leading);
        let targets: Vec<NodeId> = peers.iter().copied().filter(|p| *p != self.node).collect();
        let sends = targets.iter().map(|p| self.router.call(*p, METADATA_GROUP, &rpc, timeout));
        for (peer, result) in targets.iter().zip(futures::future::join_all(sends).await) {
            if let Err(e) = result {
                tracing::debug!(peer, error = %e, "leadership report not delivered");
            }
        }
    }

    /// The node-level heartbeat: whether `peer`'s node answers at all. `Ok` once it
    /// answered (whatever it said); `Err(Unreachable)` when the call failed outright (no
    /// connection: nothing listens at its address), `Err(Timeout)` when no answer came.
    pub async fn ping(&self, peer: NodeId, timeout: std::time::Duration) -> Result<(), TransportError> {
        self.router.call(peer, METADATA_GROUP, &RaftRpc::Ping, timeout).await.map(|_| ())
    }

    /// Starts an election for `group` at once (its leader's node is gone), unless one of
    /// `others` (the other live voters) campaigns with this replica's vote and a log as
    /// long, or holds a longer log: that one is the replica
    /// that can win, and a candidate behind it would only take the term it needs (a
    /// replica refusing a vote for its shorter log does not move to the candidate's
    /// term, so it would lose its own election in that term too). A voter that does
    /// not answer in time is not waited for.
    pub async fn take_over(&self, group: &Group, others: &[NodeId]) -> Result<(), GroupError> {
        let timeout = std::time::Duration::from_millis(200);
        let mine =
            group.log.last_log_id().map_err(|e| GroupError::Storage { group: group.id, reason: e.to_string() })?;
        let asks = others.iter().map(|n| self.router.call(*n, group.id, &RaftRpc::LastLog, timeout));
        let answers = futures::future::join_all(asks).await;
        let candidate = group.voted_for_candidate();
        for (n, answer) in others.iter().zip(answers) {
            let Ok(RaftReply::LastLog(theirs)) = answer else { continue };
            if theirs > mine {
                return Err(GroupError::LongerLogElsewhere {
                    group: group.id,
                    node: *n,
                    theirs: format!("{theirs:?}"),
                    mine: format!("{mine:?}"),
                });
            }
            // A vote this replica holds for a candidate with a shorter log was not
            // granted but taken from a higher term seen in a reply; that one cannot win.
            if candidate == Some(*n) && theirs >= mine {
                return Err(GroupError::CampaigningElsewhere { group: group.id, node: *n });
            }
        }
        group.take_over().await
    }

    /// The partition groups this node leads, with their terms.
    pub fn leading(&self) -> Vec<(GroupId, u64)> {
        let mut known = BTreeMap::new();
        self.update_leading(&mut known, true);
        known.into_iter().collect()
    }

    /// Brings `known` (the partition groups this node leads, with their terms) up to
    /// date: for every group when `all`, else only for those whose timers run. A quiet
    /// replica takes leadership only when its own timers run, when it is woken to take
    /// over (`quiesce`), or when a transfer names it (which wakes it: `dispatch`); what
    /// that misses (a quiet leader stepping down for another's election, a replica that
    /// stopped, a group created or deleted) waits for the next `all`, and a report of a
    /// higher term from the new leader's node wins meanwhile.
    pub fn update_leading(&self, known: &mut BTreeMap<GroupId, u64>, all: bool) {
        let groups = self.groups.read().expect("groups lock poisoned");
        if all {
            known.retain(|id, _| groups.contains_key(id));
        }
        for g in groups.values().filter(|g| g.id != METADATA_GROUP && (all || g.is_ticking())) {
            match g.leading_term() {
                Some(term) => known.insert(g.id, term),
                None => known.remove(&g.id),
            };
        }
    }

    /// The node whose latest leadership report claims `group` (for a group hosted here
    /// too: whether the leader this replica knows still says it leads).
    pub fn reported_leader(&self, group: GroupId) -> Option<NodeId> {
        self.reports.read().expect("reports lock poisoned").by_group.get(&group).map(|(_, n)| *n)
    }

    /// Handles one message from `from` for `group`; returns the encoded reply.
    pub async fn handle(&self, from: NodeId, group: GroupId, payload: &[u8]) -> Vec<u8> {
        let reply = match decode::<RaftRpc>(payload, "raft message") {
            Err(e) => RaftReply::Refused(e.to_string()),
            Ok(RaftRpc::Leading(leading)) => {
                self.reports.write().expect("reports lock poisoned").apply(from, &leading);
                RaftReply::Noted
            }
            Ok(RaftRpc::Ping) => RaftReply::Noted,
            Ok(RaftRpc::Registered) => match self.get(METADATA_GROUP) {
                // A replica that restarted applies its committed log again first: until
                // then "unknown" could be a registration not applied yet.
                Some(g) => match g.status() {
                    s if s.applied < s.committed => {
                        RaftReply::Refused(format!("node {}'s metadata replica is still applying its log", self.node))
                    }
                    _ => RaftReply::Registered(g.read(|s| match s {
                        GroupState::Metadata(m) => registration(m, from),
                        GroupState::Partition(_) => Registration::Unknown,
                    })),
                },
                None => RaftReply::Refused(format!("node {} hosts no metadata replica yet", self.node)),
            },
            Ok(_) if !self.admitting.load(std::sync::atomic::Ordering::SeqCst) => RaftReply::Refused(format!(
                "node {} started on an empty data directory and has not yet learned whether the cluster knows it",
                self.node
            )),
            Ok(rpc) => match self.get(group) {
                None => RaftReply::Refused(format!("group {group} is not hosted on node {}", self.node)),
                Some(g) => match check_sender(from, &rpc, &g) {
                    Err(why) => {
                        tracing::warn!(from, group, why, "refused a message that names another sender");
                        RaftReply::Refused(why)
                    }
                    Ok(()) => {
                        // Whether the leader this replica knows still claims the group
                        // in its node's leadership report.
                        let claimed = g.leader().is_some_and(|l| self.reported_leader(group) == Some(l));
                        dispatch(&g, rpc, claimed).await
                    }
                },
            },
        };
        if let RaftReply::Refused(why) = &reply {
            tracing::debug!(from, group, why, "refused raft message");
        }
        encode(&reply)
    }
}

async fn dispatch(g: &Group, rpc: RaftRpc, leader_claims: bool) -> RaftReply {
    let refused = |e: &dyn std::fmt::Display| RaftReply::Refused(e.to_string());
    if g.leaving.load(std::sync::atomic::Ordering::SeqCst) && !matches!(rpc, RaftRpc::Membership(_)) {
        return refused(&format!("the replica of group {} on node {} is being deleted", g.id, g.node));
    }
    match rpc {
        RaftRpc::Append(r) => {
            g.note_append();
            // Entries arriving: the group is busy, and a quiet follower's timers run
            // again (as `quiesce` would decide at its next look).
            if !r.entries.is_empty() {
                g.set_ticking(true);
            }
            g.raft.append_entries(r).await.map(RaftReply::Append).unwrap_or_else(|e| refused(&e))
        }
        RaftRpc::Vote(r) => match g.refuse_below_floor(r.last_log_id.as_ref()) {
            Some(no) => RaftReply::Vote(no),
            None => g.raft.vote(r).await.map(RaftReply::Vote).unwrap_or_else(|e| refused(&e)),
        },
        RaftRpc::PreVote(r) => {
            match g.refuse_below_floor(r.last_log_id.as_ref()).or_else(|| g.refuse_pre_vote_while_led(leader_claims)) {
                Some(no) => RaftReply::Vote(no),
                None => g.raft.pre_vote(r).await.map(RaftReply::Vote).unwrap_or_else(|e| refused(&e)),
            }
        }
        RaftRpc::Snapshot { vote, meta, data } => {
            let snapshot = openraft::alias::SnapshotOf::<TypeConfig, _> { meta, snapshot: std::io::Cursor::new(data) };
            g.raft.install_full_snapshot(vote, snapshot).await.map(RaftReply::Snapshot).unwrap_or_else(|e| refused(&e))
        }
        RaftRpc::TransferLeader(r) => {
            g.set_ticking(true);
            g.raft.handle_transfer_leader(r).await.map(RaftReply::TransferLeader).unwrap_or_else(|e| refused(&e))
        }
        // A forwarded write is written here or refused (`Group::write` never forwards), so it
        // cannot bounce between nodes: a NotLeader answer names the leader instead.
        RaftRpc::Write(c) => match check_forwarded(&c) {
            Err(why) => RaftReply::Refused(why),
            Ok(()) => RaftReply::Write(
                g.write(c, std::time::Duration::from_millis(flotilla_types::limits::FORWARDED_WRITE_TIMEOUT_MS)).await,
            ),
        },
        RaftRpc::Leading(_) | RaftRpc::Ping | RaftRpc::Registered => refused(&"a node-wide message"),
        RaftRpc::Membership(node) => {
            let (leads, keeps) = g.keeps_member(node).await;
            RaftReply::Membership { leads, keeps, leader: g.leader() }
        }
        RaftRpc::LastLog => g.log.last_log_id().map(RaftReply::LastLog).unwrap_or_else(|e| refused(&e)),
    }
}

/// What metadata state `m` says of node `node`, for its start on an empty disk.
fn registration(m: &MetadataState, node: NodeId) -> Registration {
    match (m.brokers().contains_key(&node), m.replacements().get(&node)) {
        (false, _) => Registration::Unknown,
        (true, None) => Registration::Registered,
        (true, Some(r)) if r.ready() => Registration::Replaceable { first_new_group: r.first_new_group },
        (true, Some(r)) => Registration::Replacing { groups_left: r.pending.len() as u64 },
    }
}

/// Checks a write another node forwarded as this node's own API checks it, so that a
/// malformed one is refused here instead of reaching the state machines, whose
/// assertions assume checked commands (a produce of zero records stops every replica).
/// Metadata commands are checked by the metadata state machine itself.
/// Refuses a message whose content speaks for a node other than `from`, its sender: a
/// vote asked, entries appended, a snapshot installed or a leadership handed over in
/// another node's name, a membership question about another node, or a registration
/// that would change another registered node's addresses. With node-to-node TLS, `from`
/// is the node the peer's certificate names (`flotilla_rpc`), so no process can speak
/// as a node whose certificate it does not hold.
pub(crate) fn check_sender(from: NodeId, rpc: &RaftRpc, g: &Group) -> Result<(), String> {
    use openraft::vote::RaftLeaderId;
    let claimed = match rpc {
        RaftRpc::Append(r) => Some(*r.vote.leader_id.node_id()),
        RaftRpc::Vote(r) | RaftRpc::PreVote(r) => Some(*r.vote.leader_id.node_id()),
        RaftRpc::Snapshot { vote, .. } => Some(*vote.leader_id.node_id()),
        RaftRpc::TransferLeader(r) => Some(*r.from_leader().leader_id.node_id()),
        RaftRpc::Membership(node) => Some(*node),
        RaftRpc::Write(crate::Command::Metadata(flotilla_metadata::Command::RegisterBroker(b))) if b.id != from => {
            // Registering a new node is an operator's act (`AddNode`, forwarded by the
            // node that took it); changing a registered node's addresses is its own.
            let changes = g.read(|s| match s {
                GroupState::Metadata(m) => {
                    m.brokers().get(&b.id).is_some_and(|old| old.addr != b.addr || old.rpc_address() != b.rpc_address())
                }
                GroupState::Partition(_) => false,
            });
            changes.then_some(b.id)
        }
        _ => None,
    };
    match claimed {
        Some(node) if node != from => Err(format!("node {from} sent a message in the name of node {node}")),
        _ => Ok(()),
    }
}

pub(crate) fn check_forwarded(c: &crate::Command) -> Result<(), String> {
    match c {
        crate::Command::Partition(flotilla_partition::Command::Produce { batch, records, .. }) => {
            let decoded = flotilla_types::RecordBatch::decode(batch.clone())
                .map_err(|e| format!("forwarded produce refused: {e}"))?;
            if decoded.len() != *records {
                return Err(format!(
                    "forwarded produce refused: it claims {records} records, its batch holds {}",
                    decoded.len()
                ));
            }
            Ok(())
        }
        crate::Command::Partition(flotilla_partition::Command::DeleteRecords { .. }) => Ok(()),
        crate::Command::Metadata(_) => Ok(()),
    }
}

/// The partition groups each other node last reported leading, with their terms.
#[derive(Default)]
struct LeaderReports {
    by_group: BTreeMap<GroupId, (u64, NodeId)>,
    by_node: BTreeMap<NodeId, BTreeSet<GroupId>>,
}

impl LeaderReports {
    /// `from`'s report replaces its previous one. A group another node reported leading
    /// in a higher term keeps that leader.
    fn apply(&mut self, from: NodeId, leading: &[(GroupId, u64)]) {
        for g in self.by_node.remove(&from).unwrap_or_default() {
            if self.by_group.get(&g).is_some_and(|(_, n)| *n == from) {
                self.by_group.remove(&g);
            }
        }
        let mut mine = BTreeSet::new();
        for &(g, term) in leading {
            if self.by_group.get(&g).is_some_and(|(t, _)| *t > term) {
                continue;
            }
            if let Some((_, other)) = self.by_group.insert(g, (term, from))
                && let Some(theirs) = self.by_node.get_mut(&other)
            {
                theirs.remove(&g);
            }
            mine.insert(g);
        }
        self.by_node.insert(from, mine);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flotilla_storage::MemEngine;
    use openraft::Vote;
    use openraft::raft::VoteRequest;

    use super::*;
    use crate::network::TransportError;
    use crate::{Command, WriteError, keys};

    /// A single-node test reaches nobody.
    #[derive(Clone)]
    struct Nowhere;

    impl RaftTransport for Nowhere {
        async fn call(&self, target: NodeId, _: GroupId, _: Vec<u8>, _: Duration) -> Result<Vec<u8>, TransportError> {
            Err(TransportError::Unreachable(target, "no network in this test".into()))
        }
    }

    #[test]
    fn leadership_reports_replace_the_senders_previous_one_and_keep_higher_terms() {
        let mut r = LeaderReports::default();
        r.apply(2, &[(10, 3), (11, 1)]);
        r.apply(3, &[(12, 1)]);
        assert_eq!(r.by_group.get(&10), Some(&(3, 2)));
        // Node 3 now leads 11 in a higher term; node 2's stale claim of 10 in a lower
        // term than it reported before loses to nothing (its own new report replaces it).
        r.apply(3, &[(11, 2), (12, 1)]);
        assert_eq!(r.by_group.get(&11), Some(&(2, 3)));
        r.apply(2, &[(10, 3), (11, 1)]);
        assert_eq!(r.by_group.get(&11), Some(&(2, 3)), "a lower term does not take over");
        // Node 2 no longer leads 10: gone from the table.
        r.apply(2, &[]);
        assert_eq!(r.by_group.get(&10), None);
        assert_eq!(r.by_group.get(&11), Some(&(2, 3)));
        assert_eq!(r.by_group.get(&12), Some(&(1, 3)));
    }

    /// Counts the calls that reach it; nothing listens behind it.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl RaftTransport for Counting {
        async fn call(&self, target: NodeId, _: GroupId, _: Vec<u8>, _: Duration) -> Result<Vec<u8>, TransportError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(TransportError::Refused(target, "nothing listens".into()))
        }
    }

    /// Regression (10,000 partitions, a node killed): every group's replication to the
    /// killed node dialled it afresh each backoff, thousands of refused connections a
    /// second on the survivors. A peer judged down by the node-level heartbeats is no
    /// longer dialled but by the pings that can clear it.
    #[tokio::test]
    async fn calls_to_a_peer_judged_down_fail_at_once_but_pings_still_go() {
        let counting = Counting::default();
        let reached = || counting.0.load(std::sync::atomic::Ordering::SeqCst);
        let groups = Groups::new(1, Arc::new(MemEngine::new()), counting.clone());
        let router = groups.router();
        let t = Duration::from_millis(100);
        assert!(matches!(router.call(2, 7, &RaftRpc::LastLog, t).await, Err(TransportError::Refused(2, _))));
        assert_eq!(reached(), 1);
        router.set_down(BTreeSet::from([2]));
        assert!(matches!(router.call(2, 7, &RaftRpc::LastLog, t).await, Err(TransportError::Refused(2, _))));
        assert_eq!(reached(), 1, "a call to a peer judged down does not reach the transport");
        let _ = router.call(3, 7, &RaftRpc::LastLog, t).await;
        assert_eq!(reached(), 2, "other peers are called as before");
        let _ = groups.ping(2, t).await;
        assert_eq!(reached(), 3, "pings still go, to clear the judgement");
        router.set_down(BTreeSet::new());
        let _ = router.call(2, 7, &RaftRpc::LastLog, t).await;
        assert_eq!(reached(), 4);
    }

    /// Every call times out: the message may or may not have arrived.
    #[derive(Clone)]
    struct Silent;

    impl RaftTransport for Silent {
        async fn call(&self, target: NodeId, _: GroupId, _: Vec<u8>, _: Duration) -> Result<Vec<u8>, TransportError> {
            Err(TransportError::Timeout(target))
        }
    }

    /// t95 (docs/simulation.md, "Defects found by review"): a forwarded write whose call
    /// times out may still be committed by the leader, so it is a timeout
    /// (indeterminate), never `Unavailable` (definite, which let a retried CreateTopic
    /// answer TOPIC_EXISTS without saying it may have been the first try that applied).
    #[tokio::test]
    async fn t95_a_forwarded_write_that_times_out_is_indeterminate() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let groups = Groups::new(1, engine, Silent);
        let g = groups.ensure(0, GroupKind::Metadata, None).await.unwrap();
        let cmd = Command::Metadata(flotilla_metadata::Command::DeleteTopic { name: "t".into() });
        let r = g.forward_to(groups.router(), 2, cmd, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(WriteError::Timeout { group: 0 })), "{r:?}");
    }

    /// t95 (as above): membership changes answer typed errors, and one that was
    /// proposed but not committed in time is a timeout (it may still commit), not a
    /// string: a node without a leader refuses at once (`NotLeader`); a single voter
    /// asked to promote an unreachable learner proposes the joint configuration, which
    /// cannot commit (`Timeout`); promoting a node that is not a learner is refused
    /// (`Refused`, definite).
    #[tokio::test]
    async fn t95_membership_changes_tell_not_leader_from_a_timeout() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let groups = Groups::new(1, engine, Nowhere);
        let lone = groups.ensure(8, GroupKind::Partition, None).await.unwrap();
        let r = lone.add_learner(2).await;
        assert!(matches!(r, Err(crate::MembershipError::NotLeader { group: 8, .. })), "{r:?}");

        let g = groups.ensure(7, GroupKind::Partition, Some(&BTreeSet::from([1]))).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !g.is_leader() {
            assert!(tokio::time::Instant::now() < deadline, "a single voter elects itself");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Promoting a node that is not a learner yet is refused: nothing changed.
        let r = g.change_voters(BTreeSet::from([1, 2]), false).await;
        assert!(matches!(r, Err(crate::MembershipError::Refused { group: 7, .. })), "{r:?}");
        // A learner commits with the one voter; promoting it needs its vote, which never comes.
        g.add_learner(2).await.unwrap();
        let r = g.change_voters(BTreeSet::from([1, 2]), false).await;
        assert!(matches!(r, Err(crate::MembershipError::Timeout { group: 7, .. })), "{r:?}");
    }

    async fn ask_vote(g: &Group, req: VoteRequest<TypeConfig>) -> bool {
        match dispatch(g, RaftRpc::Vote(req), false).await {
            RaftReply::Vote(r) => r.vote_granted,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Regression (simulation seed 42, controller profile, with quiescing): a replica
    /// removed from a group and re-created empty on the same node granted its vote to a
    /// lagging member that still counted it as a voter of the old configuration, which
    /// then led with a log missing committed entries. The re-created replica now starts
    /// from the removed one's vote and refuses candidates whose log is shorter than the
    /// one it held.
    #[tokio::test]
    async fn a_re_created_replica_remembers_its_vote_and_the_log_it_held() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let groups = Groups::new(1, engine.clone(), Nowhere);
        let g = groups.ensure(7, GroupKind::Partition, Some(&BTreeSet::from([1]))).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !g.is_leader() {
            assert!(tokio::time::Instant::now() < deadline, "a single voter elects itself");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let batch = bytes::Bytes::from_static(b"x");
        let cmd = Command::Partition(flotilla_partition::Command::Produce {
            batch,
            records: 1,
            timestamp_ms: 1,
            producers: Default::default(),
        });
        for _ in 0..3 {
            g.write(cmd.clone(), Duration::from_secs(10)).await.unwrap();
        }
        let held = g.log.last_log_id().unwrap().expect("entries written");
        let term = g.status().term;
        drop(g);
        groups.remove(7).await.unwrap();
        assert_eq!(engine.scan(&keys::log(7, 0), &keys::log_end(7), 10).unwrap(), vec![], "the log is gone");

        let g = groups.ensure(7, GroupKind::Partition, None).await.unwrap();
        assert_eq!(g.log.last_log_id().unwrap(), None, "re-created empty");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while g.status().term != term {
            assert!(tokio::time::Instant::now() < deadline, "the vote it had is back: term {}", g.status().term);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A candidate of a higher term with a shorter log than the one held: refused.
        let shorter = Some(openraft::LogId::new(held.leader_id, held.index - 1));
        assert!(!ask_vote(&g, VoteRequest::new(Vote::new(term + 1, 2), shorter)).await);
        assert!(!ask_vote(&g, VoteRequest::new(Vote::new(term + 1, 2), None)).await);
        // As long as the one it held: openraft decides, and grants.
        assert!(ask_vote(&g, VoteRequest::new(Vote::new(term + 1, 2), Some(held))).await);

        // Removed again (now with a vote of term + 1 and no log): the tombstone keeps the
        // longest log and the highest vote it has seen.
        drop(g);
        groups.remove(7).await.unwrap();
        let t = crate::log_store::tombstone(engine.as_ref(), 7).unwrap().unwrap();
        assert_eq!(t.last_log_id, Some(held));
        assert_eq!(t.vote.map(|v| v.leader_id.term), Some(term + 1));
    }
}
