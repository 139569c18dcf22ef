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
use crate::group::{Group, GroupKind};
use crate::log_store::{LogStore, decode, destroy, encode};
use crate::network::{NetworkFactory, RaftReply, RaftRpc, RaftTransport, Router};
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
    partition_timings: GroupTimings,
}

impl<T: RaftTransport> Groups<T> {
    pub fn new(node: NodeId, engine: Arc<dyn Engine>, transport: T) -> Groups<T> {
        Groups {
            node,
            engine,
            router: Router::new(transport),
            groups: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            partition_timings: GroupTimings::PARTITION,
        }
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
        let config = timings.openraft_config(format!("group-{id}"));
        let log = LogStore::new(id, self.engine.clone());
        let sm = StateMachineStore::new(initial);
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
        });
        self.groups.write().expect("groups lock poisoned").insert(id, group.clone());
        Ok(group)
    }

    /// Stops the group and deletes its data from this node.
    pub async fn remove(&self, id: GroupId) -> Result<(), String> {
        assert_ne!(id, METADATA_GROUP, "the metadata group is never removed");
        let _guard = self.lifecycle.lock().await;
        let Some(group) = self.groups.write().expect("groups lock poisoned").remove(&id) else {
            return Ok(());
        };
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = id, error = %e, "group did not shut down cleanly");
        }
        destroy(self.engine.as_ref(), id).map_err(|e| format!("group {id}: cannot delete its data: {e}"))?;
        tracing::info!(group = id, "removed group");
        Ok(())
    }

    /// Stops every group (their data stays).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Group>> = self.groups.write().expect("groups lock poisoned").values().cloned().collect();
        for g in all {
            let _ = g.raft.shutdown().await;
        }
    }

    /// Handles one message from `from` for `group`; returns the encoded reply.
    pub async fn handle(&self, from: NodeId, group: GroupId, payload: &[u8]) -> Vec<u8> {
        let reply = match decode::<RaftRpc>(payload, "raft message") {
            Err(e) => RaftReply::Refused(e.to_string()),
            Ok(rpc) => match self.get(group) {
                None => RaftReply::Refused(format!("group {group} is not hosted on node {}", self.node)),
                Some(g) => dispatch(&g, rpc).await,
            },
        };
        if let RaftReply::Refused(why) = &reply {
            tracing::debug!(from, group, why, "refused raft message");
        }
        encode(&reply)
    }
}

async fn dispatch(g: &Group, rpc: RaftRpc) -> RaftReply {
    let refused = |e: &dyn std::fmt::Display| RaftReply::Refused(e.to_string());
    match rpc {
        RaftRpc::Append(r) => {
            g.note_append();
            g.raft.append_entries(r).await.map(RaftReply::Append).unwrap_or_else(|e| refused(&e))
        }
        RaftRpc::Vote(r) => g.raft.vote(r).await.map(RaftReply::Vote).unwrap_or_else(|e| refused(&e)),
        RaftRpc::PreVote(r) => g.raft.pre_vote(r).await.map(RaftReply::Vote).unwrap_or_else(|e| refused(&e)),
        RaftRpc::Snapshot { vote, meta, data } => {
            let snapshot = openraft::alias::SnapshotOf::<TypeConfig, _> { meta, snapshot: std::io::Cursor::new(data) };
            g.raft.install_full_snapshot(vote, snapshot).await.map(RaftReply::Snapshot).unwrap_or_else(|e| refused(&e))
        }
        RaftRpc::TransferLeader(r) => {
            g.raft.handle_transfer_leader(r).await.map(RaftReply::TransferLeader).unwrap_or_else(|e| refused(&e))
        }
        // A forwarded write is written here or refused (`Group::write` never forwards), so it
        // cannot bounce between nodes: a NotLeader answer names the leader instead.
        RaftRpc::Write(c) => RaftReply::Write(g.write(c, std::time::Duration::from_secs(10)).await),
    }
}
