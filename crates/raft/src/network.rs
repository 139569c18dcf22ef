//! The transport seam: openraft messages become bytes here and cross the network through
//! a `RaftTransport`, which the `rpc` crate implements over one gRPC connection per peer
//! node and the simulator implements over its own network. Every message names its
//! group, so all groups share the connection (design decision 8, docs/decisions.md).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_types::{GroupId, NodeId, limits};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, OptionalSend};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use serde::{Deserialize, Serialize};

use crate::group::WriteError;
use crate::log_store::{decode, encode};
use crate::{Command, Response, TypeConfig};

/// Why a call to a peer did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Nothing accepts connections at the node's address (connection refused): its
    /// process is gone, or not started yet. The node-level heartbeats count only this
    /// as evidence of a dead node (`node::peers`).
    #[error("node {0} refused the connection: {1}")]
    Refused(NodeId, String),
    /// The call failed without an answer for another reason: the connection broke or
    /// was closed (by a peer that exited, or by an HTTP/2 error on a busy link), or the
    /// answer could not be read. Proves nothing about the peer's process on its own.
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("call to node {0} timed out")]
    Timeout(NodeId),
}

/// Carries one group's message to a peer node and brings back its answer.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        group: GroupId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// A message from one node's group to the same group on another node.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A client write forwarded to the group's leader.
    Write(Command),
    /// Node-wide, sent to the metadata group: every partition group the sending node
    /// leads, with its term (`Groups::report_leadership`).
    Leading(Vec<(GroupId, u64)>),
    /// Asked of a group's leader by a node about to delete its replica: does the group
    /// still count that node as a member?
    Membership(NodeId),
    /// Node-wide: the node-level heartbeat (`Groups::ping`), answered `Noted`.
    Ping,
    /// The last log id of the group's replica on the target, asked by a replica about to
    /// take over from a dead leader (`Groups::take_over`).
    LastLog,
    /// Node-wide: does the target's metadata record the sender as a registered broker?
    /// Asked by a node starting on an empty data directory (`registered_at`).
    Registered,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Write(Result<Response, WriteError>),
    /// The group is not hosted on the target (yet), or refused the message.
    Refused(String),
    /// A leadership report was recorded.
    Noted,
    /// The answer to `Membership`: `leads` when the answering replica leads the group,
    /// confirmed by a quorum just now (then `keeps` is whether the asking node is in the
    /// group's latest membership, or a change is in flight); otherwise the leader it
    /// knows.
    Membership {
        leads: bool,
        keeps: bool,
        leader: Option<NodeId>,
    },
    /// The answer to `LastLog`.
    LastLog(Option<openraft::alias::LogIdOf<TypeConfig>>),
    /// The answer to `Registered`.
    Registered(Registration),
}

/// What a peer's metadata says of a node starting on an empty data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Registration {
    /// Not a registered broker: a new node.
    Unknown,
    /// A registered broker: its data is gone, so it must not take part under this id.
    Registered,
    /// Being replaced (`replace-node`), but its old replica is still in `groups_left`
    /// groups: not yet.
    Replacing { groups_left: u64 },
    /// Being replaced, and its old replica has left every group: it may start empty and
    /// must initialise no group below `first_new_group`.
    Replaceable { first_new_group: GroupId },
}

/// What `peer`'s metadata records of this node (the transport's sender): asked by a node
/// whose data directory is empty before it takes part in any group, since a registered
/// node that lost its data must not vote again with the votes it forgot unless it is
/// being replaced. `Err` when the peer did not answer (or cannot tell yet).
pub async fn registered_at<T: RaftTransport>(
    transport: &T,
    peer: NodeId,
    timeout: Duration,
) -> Result<Registration, String> {
    let bytes = transport
        .call(peer, flotilla_types::METADATA_GROUP, encode(&RaftRpc::Registered), timeout)
        .await
        .map_err(|e| e.to_string())?;
    match decode::<RaftReply>(&bytes, "raft reply").map_err(|e| e.to_string())? {
        RaftReply::Registered(known) => Ok(known),
        RaftReply::Refused(why) => Err(why),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Caps the rate of log data sent to replicas that are catching up during a partition
/// move (`(group, node)` pairs the node's mover registers), so moves do not starve
/// producers. Paced with tokio time, so the simulator drives it.
pub struct MoveThrottle {
    bytes_per_sec: AtomicU64,
    pairs: RwLock<BTreeSet<(GroupId, NodeId)>>,
    /// When the next throttled byte may leave.
    next_free: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    sent: AtomicU64,
}

/// How far ahead of the rate a burst may run.
const THROTTLE_BURST: Duration = Duration::from_millis(100);

impl MoveThrottle {
    pub fn new(bytes_per_sec: u64) -> MoveThrottle {
        MoveThrottle {
            bytes_per_sec: AtomicU64::new(bytes_per_sec.max(1)),
            pairs: RwLock::new(BTreeSet::new()),
            next_free: tokio::sync::Mutex::new(None),
            sent: AtomicU64::new(0),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.bytes_per_sec.store(bytes_per_sec.max(1), Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.bytes_per_sec.load(Ordering::Relaxed)
    }

    /// The pairs whose appends are throttled (replaces the previous set).
    pub fn set_pairs(&self, pairs: BTreeSet<(GroupId, NodeId)>) {
        *self.pairs.write().expect("throttle lock poisoned") = pairs;
    }

    /// Throttles one more pair at once (before its learner is added, so its first append
    /// is paced too).
    pub fn add_pair(&self, group: GroupId, node: NodeId) {
        self.pairs.write().expect("throttle lock poisoned").insert((group, node));
    }

    /// Bytes sent to throttled replicas since the node started.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn applies(&self, group: GroupId, target: NodeId) -> bool {
        self.pairs.read().expect("throttle lock poisoned").contains(&(group, target))
    }

    /// Waits until `bytes` more fit the rate: a message leaves once the bytes sent before
    /// it and itself are at most `THROTTLE_BURST` ahead of the rate.
    async fn pace(&self, bytes: usize) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate() as f64);
        let send_at = {
            let mut next = self.next_free.lock().await;
            let now = tokio::time::Instant::now();
            let done = next.map_or(now, |n| n.max(now)) + cost;
            *next = Some(done);
            done.checked_sub(THROTTLE_BURST).unwrap_or(now)
        };
        tokio::time::sleep_until(send_at).await;
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Routes every group's messages through one transport.
#[derive(Clone)]
pub struct Router<T: RaftTransport> {
    transport: T,
    throttle: Arc<MoveThrottle>,
    /// Notified whenever a call other than a ping fails outright
    /// (`TransportError::Refused` or `Unreachable`), with the peers it failed to: the node-level
    /// heartbeats probe them at once instead of at their next round.
    refused: Arc<tokio::sync::Notify>,
    refused_peers: Arc<std::sync::Mutex<BTreeSet<NodeId>>>,
    /// Peers the node-level heartbeats judge down (`set_down`): every call to them but a
    /// ping fails at once. Without this, each group's replication to a killed node
    /// dialled it afresh every backoff: at thousands of groups, thousands of refused
    /// connections a second, on the survivors that must take those groups over.
    down: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl<T: RaftTransport> Router<T> {
    pub fn new(transport: T) -> Router<T> {
        Router {
            transport,
            throttle: Arc::new(MoveThrottle::new(limits::MOVE_BYTES_PER_SEC_DEFAULT)),
            refused: Arc::new(tokio::sync::Notify::new()),
            refused_peers: Arc::new(std::sync::Mutex::new(BTreeSet::new())),
            down: Arc::new(RwLock::new(BTreeSet::new())),
        }
    }

    /// The peers judged down by the node-level heartbeats (replaces the previous set);
    /// calls to them other than pings fail at once until a ping clears them.
    pub fn set_down(&self, peers: BTreeSet<NodeId>) {
        let mut down = self.down.write().expect("down peers lock poisoned");
        if *down != peers {
            *down = peers;
        }
    }

    fn is_down(&self, peer: NodeId) -> bool {
        self.down.read().expect("down peers lock poisoned").contains(&peer)
    }

    /// Notified when a call to a peer failed outright (reset, refused, no route); the
    /// peers are in `take_refused`.
    pub fn refusals(&self) -> &Arc<tokio::sync::Notify> {
        &self.refused
    }

    /// The peers a call failed to outright since the last time this was asked.
    pub fn take_refused(&self) -> BTreeSet<NodeId> {
        std::mem::take(&mut *self.refused_peers.lock().expect("refused peers poisoned"))
    }

    pub fn throttle(&self) -> &Arc<MoveThrottle> {
        &self.throttle
    }

    pub(crate) async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: &RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, TransportError> {
        if !matches!(rpc, RaftRpc::Ping) && self.is_down(target) {
            return Err(TransportError::Refused(target, "judged down by the node-level heartbeats".into()));
        }
        let bytes = match self.transport.call(target, group, encode(rpc), timeout).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if matches!(e, TransportError::Refused(..) | TransportError::Unreachable(..))
                    && !matches!(rpc, RaftRpc::Ping)
                {
                    self.refused_peers.lock().expect("refused peers poisoned").insert(target);
                    self.refused.notify_one();
                }
                return Err(e);
            }
        };
        decode(&bytes, "raft reply").map_err(|e| TransportError::Unreachable(target, e.to_string()))
    }

    async fn rpc(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftReply, Unreachable<TypeConfig>> {
        let timeout = option.hard_ttl().min(Duration::from_millis(limits::RAFT_CALL_TIMEOUT_MS));
        match self.call(target, group, &rpc, timeout).await {
            Ok(RaftReply::Refused(why)) => Err(unreachable(format!("node {target} group {group}: {why}"))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

fn unreachable(msg: String) -> Unreachable<TypeConfig> {
    Unreachable::new(&std::io::Error::other(msg))
}

fn unexpected<R>(what: &str) -> Result<R, RPCError<TypeConfig>> {
    Err(RPCError::Unreachable(unreachable(format!("unexpected reply to {what}"))))
}

/// The bytes an entry adds to an AppendEntries message (its batch, or a small constant).
fn entry_bytes(payload: &crate::Payload) -> usize {
    match payload {
        EntryPayload::Normal(Command::Partition(flotilla_partition::Command::Produce { batch, .. })) => {
            batch.len() + 64
        }
        _ => 256,
    }
}

impl<T: RaftTransport> GroupRouter<TypeConfig, GroupId> for Router<T> {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &self,
        target: NodeId,
        group: GroupId,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Bound the message by bytes: send the longest prefix within the limit (at least
        // one entry) and report a partial success, which openraft continues from.
        let mut total = 0usize;
        let mut keep = rpc.entries.len();
        for (i, e) in rpc.entries.iter().enumerate() {
            total += entry_bytes(&e.payload);
            if i > 0 && total > limits::RAFT_APPEND_BYTES_MAX {
                keep = i;
                break;
            }
        }
        let truncated = keep < rpc.entries.len();
        if truncated {
            rpc.entries.truncate(keep);
        }
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        if !rpc.entries.is_empty() && self.throttle.applies(group, target) {
            self.throttle.pace(total.min(limits::RAFT_APPEND_BYTES_MAX)).await;
        }
        match self.rpc(target, group, RaftRpc::Append(rpc), &option).await.map_err(RPCError::Unreachable)? {
            RaftReply::Append(AppendEntriesResponse::Success) if truncated => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            RaftReply::Append(r) => Ok(r),
            _ => unexpected("append_entries"),
        }
    }

    async fn vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(target, group, RaftRpc::Vote(rpc), &option).await.map_err(RPCError::Unreachable)? {
            RaftReply::Vote(r) => Ok(r),
            _ => unexpected("vote"),
        }
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(target, group, RaftRpc::PreVote(rpc), &option).await.map_err(RPCError::Unreachable)? {
            RaftReply::Vote(r) => Ok(r),
            _ => unexpected("pre_vote"),
        }
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        match self.rpc(target, group, rpc, &option).await.map_err(StreamingError::Unreachable)? {
            RaftReply::Snapshot(r) => Ok(r),
            _ => Err(StreamingError::Unreachable(unreachable("unexpected reply to full_snapshot".into()))),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(target, group, RaftRpc::TransferLeader(req), &option).await.map_err(RPCError::Unreachable)? {
            RaftReply::TransferLeader(r) => Ok(r),
            _ => unexpected("transfer_leader"),
        }
    }

    /// Between failed messages to one peer: 200 ms, doubling to at most 1 s. A peer
    /// judged down fails every call at once (`Router::set_down`), and each group's
    /// stream to it retries once a second until a ping clears it.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::successors(Some(Duration::from_millis(200)), |d| {
            Some((*d * 2).min(Duration::from_secs(1)))
        })))
    }
}

/// openraft's per-group network factory: binds the router to a group.
pub type NetworkFactory<T> = GroupNetworkFactory<Router<T>, GroupId>;

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router<T>>;

    async fn new_client(&mut self, target: NodeId, _node: &openraft::EmptyNode) -> Self::Network {
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id)
    }
}
