//! One simulated broker: its disk, its Raft groups, and two endpoints on madsim's network
//! (Raft messages between nodes, writes from clients). This is what a node's `init` runs,
//! on first start and on every restart.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_raft::{Command, GroupKind, GroupTimings, Groups, RaftTransport, Response, TransportError, WriteError};
use flotilla_storage::{Engine, MemEngine};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use madsim::net::Endpoint;
use madsim::net::rpc::Request;
use serde::{Deserialize, Serialize};

use crate::disk::GroupCommitDisk;
use crate::spec::{NODES, Spec};

const PORT: u16 = 7000;

/// The address of broker `id`.
pub fn addr_of(id: NodeId) -> SocketAddr {
    SocketAddr::new(ip_of(id), PORT)
}

pub fn ip_of(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, u8::try_from(id).expect("node ids fit the address plan")))
}

/// One Raft message for `group` from node `from`: openraft's encoded request. The reply is
/// the encoded answer (`Groups::handle`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftMsg {
    pub from: NodeId,
    pub group: GroupId,
    pub payload: Vec<u8>,
}

impl Request for RaftMsg {
    type Response = Vec<u8>;
    const ID: u64 = 1;
}

/// A client's write to `group`, written by the receiving node if it leads the group.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientWrite {
    pub group: GroupId,
    pub command: Command,
}

impl Request for ClientWrite {
    type Response = Result<Response, WriteError>;
    const ID: u64 = 2;
}

/// Raft traffic over madsim's network, so that clogs, loss, latency and dead or paused
/// nodes apply to it.
#[derive(Clone)]
pub struct SimTransport {
    me: NodeId,
    endpoint: Endpoint,
}

impl RaftTransport for SimTransport {
    async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let msg = RaftMsg { from: self.me, group, payload };
        match self.endpoint.call_timeout(addr_of(target), msg, timeout).await {
            Ok(reply) => Ok(reply),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(TransportError::Timeout(target)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(TransportError::Refused(target, e.to_string()))
            }
            Err(e) => Err(TransportError::Unreachable(target, e.to_string())),
        }
    }
}

pub type NodeGroups = Groups<SimTransport>;

/// Where a running node publishes its groups for the supervisor's checks; emptied when
/// the node dies.
pub type Slot = Arc<Mutex<Option<Arc<NodeGroups>>>>;

/// The life of broker `id`, from start (or restart) until it is killed.
/// `flush_ms` is the disk's group-commit window, which the supervisor may change.
pub async fn run(id: NodeId, engine: MemEngine, flush_ms: Arc<AtomicU64>, spec: Spec, slot: Slot) {
    let disk = GroupCommitDisk::new(engine, flush_ms);
    let endpoint = Endpoint::bind(addr_of(id)).await.expect("the node's address is free");
    let transport = SimTransport { me: id, endpoint: endpoint.clone() };
    // This tier has no node-level failure detector, so partition groups elect on their
    // own timeouts: shorter ones than a node's default (`GroupTimings::PARTITION`), which
    // the pause fault and the bounds in `spec` are sized for, keep the faults' elections
    // frequent.
    let groups =
        Arc::new(Groups::new(id, disk.clone() as Arc<dyn Engine>, transport).with_partition_timings(GroupTimings {
            heartbeat_ms: 500,
            election_min_ms: 1500,
            election_max_ms: 3000,
        }));

    let g = groups.clone();
    endpoint.add_rpc_handler(move |m: RaftMsg| {
        let g = g.clone();
        async move { g.handle(m.from, m.group, &m.payload).await }
    });
    let g = groups.clone();
    endpoint.add_rpc_handler(move |w: ClientWrite| {
        let g = g.clone();
        async move {
            match g.get(w.group) {
                Some(group) => group.write(w.command, crate::spec::SERVER_WRITE_TIMEOUT).await,
                None => Err(WriteError::Unavailable { group: w.group, reason: "not started".into() }),
            }
        }
    });

    let voters: BTreeSet<NodeId> = NODES.into_iter().collect();
    for group in spec.groups() {
        let kind = if group == METADATA_GROUP { GroupKind::Metadata } else { GroupKind::Partition };
        groups.ensure(group, kind, Some(&voters)).await.unwrap_or_else(|e| panic!("node {id}: {e}"));
    }
    *slot.lock().expect("slot lock poisoned") = Some(groups);
    tracing::info!(node = id, "node started");
    disk.run_flusher().await;
}
