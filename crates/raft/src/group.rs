//! One Raft group on this node: writes, leadership, and reads of applied state and of
//! the log.

use std::sync::Arc;
use std::time::Duration;

use flotilla_types::{GroupId, NodeId};
use openraft::alias::LogIdOf;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use openraft::raft::VoteResponse;
use openraft::{EntryPayload, ServerState};
use serde::{Deserialize, Serialize};

use crate::log_store::LogStore;
use crate::network::{RaftReply, RaftRpc, RaftTransport, Router, TransportError};
use crate::state_machine::{GroupState, SharedState};
use crate::{Command, Raft, Response, TypeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    Metadata,
    Partition,
}

/// Why a write was not applied. `NotLeader` and `Unavailable` are definite: nothing was
/// proposed. `LeaderChanged` and `Timeout` are indeterminate: the entry may still commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("leadership of group {group} changed while the write was in flight")]
    LeaderChanged { group: GroupId, leader: Option<NodeId> },
    #[error("group {group} is unavailable: {reason}")]
    Unavailable { group: GroupId, reason: String },
    #[error("write to group {group} timed out")]
    Timeout { group: GroupId },
}

/// Why a membership change (add a learner, change the voters, remove learners) failed.
/// Whether it may still happen is in the variant, not in a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This replica does not lead the group; nothing was proposed.
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    /// Refused before or when proposed (a change already in flight, a lease that could
    /// not be renewed, a stopped replica): the membership did not change.
    #[error("group {group} refused the membership change: {reason}")]
    Refused { group: GroupId, reason: String },
    /// Proposed but not committed in time: it may still be (indeterminate).
    #[error("the membership change of group {group} was not committed within {after:?}; it may still be")]
    Timeout { group: GroupId, after: Duration },
}

/// Why an operation on one replica did not happen: a leadership transfer, a heartbeat,
/// an election, a compaction, or its removal from this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// openraft refused it (this replica does not lead, or is stopping): nothing changed.
    #[error("group {group} refused: {reason}")]
    Refused { group: GroupId, reason: String },
    /// Another live voter holds a longer log: that one campaigns, not this replica.
    #[error("group {group}: node {node} holds a longer log ({theirs} against {mine}): it goes first")]
    LongerLogElsewhere { group: GroupId, node: NodeId, theirs: String, mine: String },
    /// Another live voter campaigns with this replica's vote, and its log is as long:
    /// a take-over here would void that election.
    #[error("group {group}: node {node} campaigns with this replica's vote: it goes first")]
    CampaigningElsewhere { group: GroupId, node: NodeId },
    /// The storage engine failed.
    #[error("group {group}: storage: {reason}")]
    Storage { group: GroupId, reason: String },
}

/// A snapshot of a group's Raft status on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub voters: Vec<NodeId>,
}

pub struct Group {
    pub(crate) id: GroupId,
    pub(crate) node: NodeId,
    pub(crate) kind: GroupKind,
    pub(crate) raft: Raft,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) log: LogStore,
    /// Whether openraft's ticker runs (see `set_ticking`).
    pub(crate) ticking: std::sync::atomic::AtomicBool,
    /// When this replica last received an AppendEntries (a heartbeat or entries).
    pub(crate) last_append: std::sync::Mutex<Option<RtInstant>>,
    /// For a replica re-created on a node that hosted it before: the last log id the
    /// removed replica held (`log_store::Tombstone`), until this replica's own log passes
    /// it. No vote goes to a candidate whose log is shorter.
    pub(crate) vote_floor: std::sync::Mutex<Option<LogIdOf<TypeConfig>>>,
    /// The last leadership transfer this replica started as leader: to whom, in which
    /// term, and when.
    pub(crate) transfer: std::sync::Mutex<Option<(NodeId, u64, RtInstant)>>,
    /// Set while this node asks the group's leader whether it may delete this replica,
    /// and from then until it is deleted: the replica takes no message meanwhile, so a
    /// leader that re-adds the node right after answering cannot record progress on a
    /// log about to be destroyed (it would see that log go back).
    pub(crate) leaving: std::sync::atomic::AtomicBool,
}

/// The leader a replica's metrics name. openraft initialises a replica with a committed
/// vote for itself at term 0 and names it the leader; no election has happened yet, so
/// there is none (taken at its word, the quiescer thought such a replica remembered
/// leading).
fn known_leader(m: &openraft::RaftMetrics<TypeConfig>) -> Option<NodeId> {
    if m.current_term == 0 { None } else { m.current_leader }
}

type RtInstant = <crate::rt::Runtime as openraft_rt::AsyncRuntime>::Instant;

impl Group {
    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn kind(&self) -> GroupKind {
        self.kind
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<NodeId> {
        known_leader(&self.raft.metrics().borrow_watched())
    }

    /// A replica that stopped (openraft hit a fatal error, such as a failed sync) leads
    /// nothing, whatever its last metrics said.
    pub fn is_leader(&self) -> bool {
        self.leading_term().is_some()
    }

    /// The term this replica leads in, when it leads.
    pub fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let leads = m.running_state.is_ok() && m.state == ServerState::Leader && m.current_leader == Some(self.node);
        leads.then_some(m.current_term)
    }

    /// The other replica this one granted its vote to in a term whose leader is not
    /// established yet: a candidate campaigning now, which a take-over of this replica's
    /// own would only disrupt (its higher term voids the election this vote helps).
    pub fn voted_for_candidate(&self) -> Option<NodeId> {
        use openraft::vote::RaftLeaderId;
        let m = self.raft.metrics();
        let vote = m.borrow_watched().vote;
        let candidate = *vote.leader_id.node_id();
        (!vote.is_committed() && candidate != self.node).then_some(candidate)
    }

    /// Why this replica stopped (a fatal storage error), or `None` while it runs. A
    /// stopped replica serves nothing: its state no longer moves.
    pub fn stopped(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.running_state.as_ref().err().map(|e| e.to_string())
    }

    /// Whether this replica leads and has applied an entry of its own term. Only then
    /// does its state hold everything an earlier leader committed: a new leader's state
    /// machine may lag the old one's, and reading it earlier shows a high watermark that
    /// went back and refuses offsets consumers legitimately reached (openraft commits a
    /// blank entry of the new term first, so this holds soon after an election).
    pub fn applied_own_term(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.node)
            && m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == m.current_term)
    }

    /// Waits up to `timeout` for `applied_own_term`; false if it does not come (or this
    /// replica stops leading).
    pub async fn wait_applied_own_term(&self, timeout: Duration) -> bool {
        let me = self.node;
        let ready = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.state != ServerState::Leader
                || m.current_leader != Some(me)
                || m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == m.current_term)
        };
        self.raft.wait(Some(timeout)).metrics(ready, "leader applied its own term").await.is_ok()
            && self.applied_own_term()
    }

    /// Waits up to `timeout` for the group to have a leader this replica knows of in a
    /// term after `term` (an election it took part in concluded); false if none came.
    pub async fn wait_led_after(&self, term: u64, timeout: Duration) -> bool {
        let led = move |m: &openraft::RaftMetrics<TypeConfig>| m.current_term > term && known_leader(m).is_some();
        self.raft.wait(Some(timeout)).metrics(led, "a leader after a take-over").await.is_ok()
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        GroupStatus {
            leader: known_leader(&m),
            is_leader: m.running_state.is_ok() && m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.cluster_committed.as_ref().map(|l| l.index),
            applied: m.last_applied.as_ref().map(|l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    /// openraft's view of this replica (role, vote, log, snapshot, purged, and as leader
    /// each replica's matched entry), for diagnostics.
    pub fn raft_metrics(&self) -> String {
        self.raft.metrics().borrow_watched().to_string()
    }

    /// The applied state (never hold across an await).
    pub fn state(&self) -> &SharedState {
        &self.shared
    }

    pub fn read<R>(&self, f: impl FnOnce(&GroupState) -> R) -> R {
        self.shared.read(f)
    }

    /// Proposes `command` if this replica leads the group and waits until it is committed
    /// and applied.
    pub async fn write(&self, command: Command, timeout: Duration) -> Result<Response, WriteError> {
        match <crate::rt::Runtime as openraft_rt::AsyncRuntime>::timeout(timeout, self.write_renewing_lease(command))
            .await
        {
            Err(_) => Err(WriteError::Timeout { group: self.id }),
            Ok(r) => r,
        }
    }

    async fn write_renewing_lease(&self, command: Command) -> Result<Response, WriteError> {
        let mut renewed = false;
        loop {
            if !self.is_leader() {
                return Err(WriteError::NotLeader { group: self.id, leader: self.leader() });
            }
            // A write wakes a quiet group at once (`quiesce` looks at quiet ones seldom).
            self.set_ticking(true);
            return match self.raft.client_write(command.clone()).await {
                Ok(r) => Ok(r.data),
                // A leader accepts writes only while a quorum acknowledged it within the
                // leader lease. A quiesced group's leader heartbeats only every keepalive,
                // so its lease has usually lapsed when a write arrives: nothing was
                // proposed; one ReadIndex round (a heartbeat a quorum answers) renews it.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                    if f.reason == ForwardReason::LeaseExpired && !renewed =>
                {
                    renewed = true;
                    self.linearizable_barrier().await?;
                    continue;
                }
                // Refused before anything was proposed: definite.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                    if f.reason != ForwardReason::NotLeader =>
                {
                    Err(WriteError::NotLeader { group: self.id, leader: f.leader_id })
                }
                // The leader stepped down with the write possibly appended: indeterminate.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(WriteError::LeaderChanged { group: self.id, leader: f.leader_id })
                }
                Err(RaftError::APIError(e)) => Err(WriteError::Unavailable { group: self.id, reason: e.to_string() }),
                Err(RaftError::Fatal(f)) => {
                    // The group stopped (storage failure or shutdown) with the write possibly
                    // appended: indeterminate.
                    tracing::error!(group = self.id, error = %f, "raft group stopped");
                    Err(WriteError::LeaderChanged { group: self.id, leader: None })
                }
            };
        }
    }

    /// acks=leader: proposes `command` like [`Group::write`], but answers as soon as the
    /// entry is durable in this replica's own log, before any follower has it, with the
    /// response the entry gets when it is applied: the state machine run ahead, over the
    /// applied state and the log's unapplied tail up to the entry (deterministic, so the
    /// same answer as the apply's if the entry commits; log matching means any leader
    /// that commits it has the same entries before it). If the entry is never committed
    /// (this leader is lost before a quorum has it) the answer was for nothing: the
    /// documented risk of acks=leader. Falls back to the applied answer when it comes
    /// first or the entry is not found in the tail (a command that is not a produce, a
    /// tail past its bound).
    pub async fn write_leader_durable(&self, command: Command, timeout: Duration) -> Result<Response, WriteError> {
        // The entry is found in the tail by its batch's bytes: the command moves into the
        // log entry on this node without a copy, and the request owns its bytes.
        let key = match &command {
            Command::Partition(flotilla_partition::Command::Produce { batch, .. }) => {
                Some((batch.as_ptr() as usize, batch.len()))
            }
            _ => None,
        };
        let Some(key) = key else { return self.write(command, timeout).await };
        let mut durable = self.log.durable();
        let write = self.write(command, timeout);
        tokio::pin!(write);
        let mut index = None;
        loop {
            tokio::select! {
                biased;
                written = &mut write => return written,
                changed = durable.changed() => {
                    if changed.is_err() {
                        return write.await;
                    }
                }
            }
            if index.is_none() {
                index = self.log.tail().find_batch(key);
            }
            if let Some(i) = index
                && *durable.borrow() >= i
            {
                match self.predict(i, key) {
                    Some(r) => return Ok(r),
                    None => return write.await,
                }
            }
        }
    }

    /// The response the entry at `index` (the batch `key`) gets when applied: the applied
    /// state with the tail's entries up to `index` applied to a copy. `None` when the
    /// tail does not hold them all, or no longer holds that batch at `index`.
    fn predict(&self, index: u64, key: (usize, usize)) -> Option<Response> {
        for _ in 0..3 {
            let (applied, mut state) = self.shared.applied_copy();
            if applied >= index {
                return None;
            }
            let Some(entries) = self.log.tail().read(applied + 1, index + 1, usize::MAX) else { continue };
            let last = entries.last()?;
            if last.log_id.index != index || !crate::tail::holds_batch(last, key) {
                return None;
            }
            let mut response = None;
            for e in &entries {
                response = Some(crate::state_machine::apply_one(&mut state, e.log_id.index, &e.payload).0);
            }
            return response;
        }
        None
    }

    /// Writes through this replica if it leads, else forwards the write to the leader.
    pub async fn write_or_forward<T: RaftTransport>(
        &self,
        router: &Router<T>,
        command: Command,
        timeout: Duration,
    ) -> Result<Response, WriteError> {
        match self.write(command.clone(), timeout).await {
            Err(WriteError::NotLeader { leader: Some(leader), .. }) if leader != self.node => {
                self.forward_to(router, leader, command, timeout).await
            }
            other => other,
        }
    }

    /// Sends a write to `node`'s replica of this group, which writes it if it leads; a
    /// `NotLeader` answer names the leader it knows.
    pub async fn forward_to<T: RaftTransport>(
        &self,
        router: &Router<T>,
        node: NodeId,
        command: Command,
        timeout: Duration,
    ) -> Result<Response, WriteError> {
        match router.call(node, self.id, &RaftRpc::Write(command), timeout).await {
            Ok(RaftReply::Write(r)) => r,
            Ok(other) => {
                Err(WriteError::Unavailable { group: self.id, reason: format!("node {node} answered {other:?}") })
            }
            // The write may have reached the leader and be committed after all: a
            // timeout is indeterminate, on this path as on every other.
            Err(TransportError::Timeout(_)) => Err(WriteError::Timeout { group: self.id }),
            Err(e) => Err(WriteError::Unavailable { group: self.id, reason: e.to_string() }),
        }
    }

    /// The batches a fetch at `offset` reads, below `end` (the high watermark read with
    /// the log start), within `max_bytes` (at least one): see `index::batches_from`.
    pub fn batches_from(
        &self,
        offset: flotilla_types::Offset,
        end: flotilla_types::Offset,
        max_bytes: usize,
    ) -> std::io::Result<Vec<flotilla_partition::BatchLocation>> {
        crate::index::batches_from(self.log.engine(), self.id, offset, end, max_bytes)
    }

    /// The batch holding `offset`, if it is indexed.
    pub fn batch_at(
        &self,
        offset: flotilla_types::Offset,
    ) -> std::io::Result<Option<flotilla_partition::BatchLocation>> {
        crate::index::batch_at(self.log.engine(), self.id, offset)
    }

    /// The first offset at or after `start` whose batch (or an earlier one) has a time
    /// at or after `time_ms`: see `index::first_offset_at_or_after`.
    pub fn first_offset_at_or_after(
        &self,
        start: flotilla_types::Offset,
        time_ms: u64,
    ) -> std::io::Result<Option<flotilla_types::Offset>> {
        crate::index::first_offset_at_or_after(self.log.engine(), self.id, start, time_ms)
    }

    /// The first batch at or after `from` (below `end`) that starts at or after byte
    /// `position` of the partition.
    pub fn first_batch_at_position(
        &self,
        from: flotilla_types::Offset,
        end: flotilla_types::Offset,
        position: u64,
    ) -> std::io::Result<Option<flotilla_partition::BatchLocation>> {
        crate::index::first_batch_at_position(self.log.engine(), self.id, from, end, position)
    }

    /// Whether a partition's log start has moved past its snapshot's retention point far
    /// enough that a new snapshot would let the log be purged further.
    pub fn compactable(&self) -> bool {
        let Some((start, hw)) = self.read(|s| match s {
            GroupState::Partition(p) => Some((p.log_start_offset(), p.high_watermark())),
            GroupState::Metadata(_) => None,
        }) else {
            return false;
        };
        let snapshot_start = self.shared.snapshot_start();
        if start <= snapshot_start {
            return false;
        }
        // The new retention point: the start of the batch holding the log start.
        let point = if start < hw {
            match self.batch_at(start) {
                Ok(Some(b)) => b.base_offset,
                _ => return false,
            }
        } else {
            hw
        };
        point > snapshot_start
    }

    /// Asks openraft to take a snapshot at the retention point and purge the log up to
    /// it (`state_machine`): the space of deleted records is given back.
    pub async fn compact_log(&self) -> Result<(), GroupError> {
        self.raft.trigger().snapshot().await.map_err(|e| self.refused(e))
    }

    fn refused(&self, e: impl std::fmt::Display) -> GroupError {
        GroupError::Refused { group: self.id, reason: e.to_string() }
    }

    /// The produce batch stored at `log_index`, read from the log.
    pub fn read_batch(&self, log_index: u64) -> std::io::Result<Option<bytes::Bytes>> {
        Ok(self.log.entry(log_index)?.and_then(|e| match e.payload {
            EntryPayload::Normal(Command::Partition(flotilla_partition::Command::Produce { batch, .. })) => Some(batch),
            _ => None,
        }))
    }

    /// Asks the group to hand leadership to `to`. From then on this leader accepts no
    /// writes and sends no heartbeats; `to` campaigns once it has the leader's last entry.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), GroupError> {
        let term = self.status().term;
        self.raft.trigger().transfer_leader(to).await.map_err(|e| self.refused(e))?;
        *self.transfer.lock().expect("transfer lock poisoned") =
            Some((to, term, <RtInstant as openraft::Instant>::now()));
        Ok(())
    }

    /// On the leader: the target of a leadership transfer started at least `after` ago
    /// in this term that has not happened (the target is down, or its log is behind, or
    /// the request was lost). Until the leader starts another transfer, the group takes
    /// no writes, and only followers' election timers would end it, which a quiesced
    /// group does not run.
    pub fn stalled_transfer(&self, after: Duration) -> Option<NodeId> {
        let status = self.status();
        let t = self.transfer.lock().expect("transfer lock poisoned");
        let (to, term, at) = t.as_ref()?;
        let waited = openraft::Instant::saturating_duration_since(&<RtInstant as openraft::Instant>::now(), *at);
        (self.is_leader() && *term == status.term && waited >= after).then_some(*to)
    }

    /// Turns openraft's ticker on or off. Off, a leader sends no heartbeats and a follower
    /// never times out into an election; entries are still replicated as they are written.
    /// This is how idle groups are quiesced (design decision 7, docs/decisions.md); node
    /// liveness, not the group's own timers, then notices a dead leader.
    pub fn set_ticking(&self, on: bool) {
        use std::sync::atomic::Ordering;
        if self.ticking.swap(on, Ordering::Relaxed) != on {
            self.raft.runtime_config().tick(on);
        }
    }

    pub fn is_ticking(&self) -> bool {
        self.ticking.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one heartbeat to every follower now, ticking or not.
    pub async fn heartbeat_now(&self) -> Result<(), GroupError> {
        self.raft.trigger().heartbeat().await.map_err(|e| self.refused(e))
    }

    pub(crate) fn note_append(&self) {
        *self.last_append.lock().expect("last_append lock poisoned") = Some(<RtInstant as openraft::Instant>::now());
    }

    /// How long ago this replica last received an AppendEntries (none: never, since it
    /// started).
    pub fn since_last_append(&self) -> Option<Duration> {
        let at = *self.last_append.lock().expect("last_append lock poisoned");
        at.map(|t| openraft::Instant::saturating_duration_since(&<RtInstant as openraft::Instant>::now(), t))
    }
}

impl Group {
    /// The refusal of a pre-vote while this replica follows with its timers stopped
    /// (`set_ticking`) a leader whose node still claims the group in its leadership
    /// report (`leader_claims`): it relies on that leader (`node::quiesce`), and refuses
    /// as a ticking follower that heard from its leader within the election timeout
    /// does. A quiet follower hears nothing between keepalives, so openraft alone would
    /// grant any pre-vote; a restarted replica that remembered leading then won its old
    /// groups back from their quiet leaders (10,000 partitions: thousands at once, and
    /// the nodes overloaded). Votes are not refused: take-overs and transfers ask for
    /// those.
    pub(crate) fn refuse_pre_vote_while_led(&self, leader_claims: bool) -> Option<VoteResponse<TypeConfig>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let led = leader_claims
            && !self.is_ticking()
            && m.state == ServerState::Follower
            && known_leader(&m).is_some_and(|l| l != self.node);
        led.then(|| VoteResponse::new(m.vote, self.log.last_log_id().ok().flatten(), false))
    }

    /// The answer to a vote request from a candidate whose last log id is
    /// `candidate_last`, when this re-created replica must refuse it without asking
    /// openraft: the candidate's log is shorter than the one the removed replica held
    /// (`Group::vote_floor`). None: openraft decides.
    pub(crate) fn refuse_below_floor(
        &self,
        candidate_last: Option<&LogIdOf<TypeConfig>>,
    ) -> Option<VoteResponse<TypeConfig>> {
        let mut floor = self.vote_floor.lock().expect("vote floor lock poisoned");
        let f = *floor.as_ref()?;
        let mine = match self.log.last_log_id() {
            Ok(l) => l,
            // Unreadable log: refuse, the safe answer.
            Err(e) => {
                tracing::warn!(group = self.id, error = %e, "cannot read the last log id");
                return Some(VoteResponse::new(self.raft.metrics().borrow_watched().vote, Some(f), false));
            }
        };
        if mine.as_ref() >= Some(&f) {
            *floor = None; // its own log now holds as much; openraft's check suffices
            return None;
        }
        if candidate_last >= Some(&f) {
            return None;
        }
        tracing::info!(group = self.id, floor = %f, candidate_last = ?candidate_last, "vote refused: the candidate's log is shorter than this replica once held");
        Some(VoteResponse::new(self.raft.metrics().borrow_watched().vote, Some(f), false))
    }
}

/// A group's Raft membership as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipView {
    /// Voters of every configuration (two during a joint change).
    pub configs: Vec<std::collections::BTreeSet<NodeId>>,
    pub learners: std::collections::BTreeSet<NodeId>,
    /// The latest membership entry is committed (no change in flight).
    pub committed: bool,
}

impl MembershipView {
    /// The voters when not in a joint configuration.
    pub fn uniform_voters(&self) -> Option<&std::collections::BTreeSet<NodeId>> {
        match self.configs.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.configs.iter().flatten().copied().collect()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.learners.contains(&node) || self.configs.iter().any(|c| c.contains(&node))
    }
}

impl Group {
    pub fn membership(&self) -> MembershipView {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let current = m.membership_config.membership();
        MembershipView {
            configs: current.get_joint_config().clone(),
            learners: current.learner_ids().collect(),
            committed: m.membership_config.log_id() == m.committed_membership_config.log_id(),
        }
    }

    /// On the leader: the last log index each peer (voter or learner) is known to hold.
    pub fn replication_matched(&self) -> Option<std::collections::BTreeMap<NodeId, Option<u64>>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.replication.as_ref().map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index))).collect())
    }

    /// Initialises the group with `voters` if its storage holds nothing yet (a replica
    /// that has state keeps it).
    pub async fn initialize(&self, voters: std::collections::BTreeSet<NodeId>) -> Result<(), String> {
        match self.raft.initialize(voters.clone()).await {
            Ok(()) => {
                tracing::info!(group = self.id, ?voters, "initialised group");
                Ok(())
            }
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(format!("group {}: cannot initialise: {e}", self.id)),
        }
    }

    /// On the leader: starts replicating to `node` as a learner (returns once the
    /// membership entry is committed, not when the learner caught up).
    pub async fn add_learner(&self, node: NodeId) -> Result<(), MembershipError> {
        self.renew_lease().await?;
        self.bounded(self.raft.add_learner(node, openraft::EmptyNode {}, false)).await
    }

    /// Before a membership change: a leader takes one only within its lease, which a
    /// quiesced group's leader has usually let lapse (see `write`).
    async fn renew_lease(&self) -> Result<(), MembershipError> {
        match self.linearizable_barrier().await {
            Ok(()) => Ok(()),
            Err(WriteError::NotLeader { group, leader }) => Err(MembershipError::NotLeader { group, leader }),
            // Nothing was proposed yet: whatever went wrong, the change did not happen.
            Err(e) => Err(MembershipError::Refused { group: self.id, reason: e.to_string() }),
        }
    }

    /// Waits for a membership change, at most `MEMBERSHIP_TIMEOUT`.
    async fn bounded<T>(
        &self,
        change: impl std::future::Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>
        + openraft_rt::OptionalSend,
    ) -> Result<(), MembershipError> {
        let group = self.id;
        match <crate::rt::Runtime as openraft_rt::AsyncRuntime>::timeout(MEMBERSHIP_TIMEOUT, change).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(MembershipError::NotLeader { group, leader: f.leader_id })
            }
            Ok(Err(e)) => Err(MembershipError::Refused { group, reason: e.to_string() }),
            Err(_) => Err(MembershipError::Timeout { group, after: MEMBERSHIP_TIMEOUT }),
        }
    }

    /// On the leader: makes `voters` the voters, through a joint configuration when
    /// needed. With `retain`, removed voters stay learners.
    pub async fn change_voters(
        &self,
        voters: std::collections::BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<(), MembershipError> {
        self.renew_lease().await?;
        self.bounded(self.raft.change_membership(voters, retain)).await
    }

    /// On the leader: stops replicating to these learners.
    pub async fn remove_learners(&self, nodes: std::collections::BTreeSet<NodeId>) -> Result<(), MembershipError> {
        let change = openraft::ChangeMembers::<NodeId, openraft::EmptyNode>::RemoveNodes(nodes);
        self.renew_lease().await?;
        self.bounded(self.raft.change_membership(change, false)).await
    }

    /// Starts an election now, on the cluster's word that the leader's node is gone
    /// (node liveness), without waiting for the leader lease to run out: this replica
    /// hands itself the current leader's term as in a leadership transfer, whose vote
    /// requests followers grant despite the lease (Raft dissertation 4.2.3). Safety does
    /// not rest on the lease (reads use ReadIndex), only the disruption of a live leader
    /// wrongly suspected.
    pub async fn take_over(&self) -> Result<(), GroupError> {
        let vote = self.raft.metrics().borrow_watched().vote;
        let req = openraft::raft::TransferLeaderRequest::new(vote, self.node, None);
        match self.raft.handle_transfer_leader(req).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.refused(e)),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// On the leader: how long ago each peer last acknowledged a heartbeat or append.
    pub fn peer_ack_ages(&self) -> Option<std::collections::BTreeMap<NodeId, Option<Duration>>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.heartbeat
            .as_ref()
            .map(|h| h.iter().map(|(id, t)| (*id, t.as_ref().map(|t| openraft::Instant::elapsed(&**t)))).collect())
    }

    /// Whether this replica leads, confirmed by a quorum just now, and if so whether
    /// `node` must keep its replica: it is in the latest membership (voter or learner),
    /// or a membership change is in flight. Not leading: `(false, true)`.
    pub async fn keeps_member(&self, node: NodeId) -> (bool, bool) {
        if !self.is_leader() || self.linearizable_barrier().await.is_err() || !self.is_leader() {
            return (false, true);
        }
        let m = self.membership();
        (true, !m.committed || m.contains(node))
    }

    /// Waits until this replica has applied everything the group had committed when the
    /// call was made, as confirmed by a quorum (ReadIndex). Only on the leader.
    pub async fn linearizable_barrier(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader { group: self.id, leader: f.leader_id })
            }
            Err(e) => Err(WriteError::Unavailable { group: self.id, reason: e.to_string() }),
        }
    }
}

/// How long a membership change may wait for its commit. A leader cut off from its
/// quorum does not learn that it was deposed until the partition heals, so without a
/// bound the caller (an operator's request, the controller's or the mover's loop) would
/// wait that long.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_millis(flotilla_types::limits::MEMBERSHIP_TIMEOUT_MS);
