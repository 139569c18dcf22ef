//! The composition root: one Flotilla node is its metadata replica, its partition
//! replicas, the reconciler that keeps the second in line with the first, and the
//! request handlers the `rpc` crate exposes over gRPC.
//!
//! A node is generic over its transport (`RaftTransport`), storage engine
//! (`flotilla_storage::Engine`) and clock (`flotilla_types::Clock`), so the simulator
//! runs this same code over its own network, in-memory disks and time.
//!
//! Architecture invariant: no tonic, prost or rocksdb here. Handlers take and return
//! domain types; protobuf stops at `rpc`.

pub mod admin;
pub mod api;
pub mod config;
pub mod console;
mod controller;
pub mod groups;
pub mod metrics;
pub mod mover;
mod peers;
mod quiesce;
pub mod quota;
mod reconciler;
mod retention;
pub mod security;
pub mod share;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_metadata::MetadataState;
use flotilla_raft::{GroupKind, Groups, MetadataGroup, RaftTransport};
use flotilla_storage::Engine;
use flotilla_types::{Clock, METADATA_GROUP, NodeId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::{ApiError, BrokerInfo, ClusterView, Fetched, FetchedBatch, PartitionInfo, Produced, TopicInfo};
pub use config::NodeConfig;
pub use quota::{QuotaKind, QuotaLimits};

/// The commit this binary was built from (`git rev-parse --short HEAD` at build time),
/// or `unknown` when it was built outside a git checkout.
pub const BUILD_COMMIT: &str = match option_env!("FLOTILLA_BUILD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Node id → address of every known node. Shared with the transport, which dials by id.
#[derive(Clone, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<NodeId, String>>>);

impl AddressBook {
    pub fn new() -> AddressBook {
        AddressBook::default()
    }
    pub fn get(&self, id: NodeId) -> Option<String> {
        self.0.read().expect("address book poisoned").get(&id).cloned()
    }
    pub fn set(&self, id: NodeId, addr: String) {
        self.0.write().expect("address book poisoned").insert(id, addr);
    }
    pub fn all(&self) -> BTreeMap<NodeId, String> {
        self.0.read().expect("address book poisoned").clone()
    }
}

pub(crate) struct Inner<T: RaftTransport> {
    pub(crate) config: NodeConfig,
    pub(crate) groups: Arc<Groups<T>>,
    pub(crate) addresses: AddressBook,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Wakes the controller for an immediate tick ("balance now").
    pub(crate) controller_kick: Arc<tokio::sync::Notify>,
    pub(crate) metrics: metrics::Registry,
    /// The storage engine every group of this node writes to (for its sizes).
    pub(crate) engine: Arc<dyn Engine>,
    /// Why the node refuses writes for lack of disk space (`set_disk_full`), if it does.
    pub(crate) disk_full: RwLock<Option<String>>,
    /// When the consumer group coordinator last heard from each member.
    pub(crate) sessions: groups::Sessions,
    /// The node-level heartbeats' judgement of each peer (`peers`).
    pub(crate) peers: peers::PeerWatch,
    /// Each principal's produce, fetch and request allowance (`quota`).
    pub(crate) quotas: quota::Quotas,
    /// False while a node that started on an empty data directory has not learned
    /// whether the cluster knows it (`NodeConfig::identity_unconfirmed`): it must not
    /// register meanwhile, or its own registration would be the answer it hears next.
    pub(crate) identity_confirmed: watch::Sender<bool>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node<T: RaftTransport> {
    pub(crate) inner: Arc<Inner<T>>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl<T: RaftTransport> Node<T> {
    /// Starts the node: recovers or initialises its metadata replica, then keeps
    /// registering itself and reconciling its partition replicas in the background.
    pub async fn start(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        transport: T,
        addresses: AddressBook,
        clock: Arc<dyn Clock>,
    ) -> Result<Node<T>, String> {
        config.validate()?;
        for (id, addr) in config.peer_map()? {
            addresses.set(id, addr);
        }
        let groups = Arc::new(
            Groups::new(config.id, engine.clone(), transport).with_partition_timings(config.partition_timings()),
        );
        groups.router().throttle().set_rate(config.move_bytes_per_sec);
        // A joining node, or one beyond the initial controllers, starts its metadata
        // replica empty; the metadata leader adds it as a learner once it is registered.
        let mut voters: Option<BTreeSet<NodeId>> = config.initial_metadata_voters()?.map(|v| v.into_iter().collect());
        // Not sure yet that the cluster does not know it: no vote, no entry, no initial
        // membership until `confirm_identity`.
        if config.identity_unconfirmed {
            groups.set_admitting(false);
            voters = None;
        }
        groups.ensure(METADATA_GROUP, GroupKind::Metadata, voters.as_ref()).await?;
        let (shutdown, _) = watch::channel(false);
        let (identity_confirmed, _) = watch::channel(!config.identity_unconfirmed);
        let quotas = config.quotas();
        let node = Node {
            inner: Arc::new(Inner {
                config,
                groups,
                addresses,
                clock,
                shutdown,
                controller_kick: Arc::new(tokio::sync::Notify::new()),
                metrics: metrics::Registry::default(),
                engine,
                disk_full: RwLock::new(None),
                sessions: groups::Sessions::default(),
                peers: peers::PeerWatch::default(),
                quotas,
                identity_confirmed,
            }),
            tasks: Arc::new(std::sync::Mutex::new(Vec::new())),
        };
        let tasks = vec![
            tokio::spawn(reconciler::register_loop(node.clone())),
            tokio::spawn(reconciler::reconcile_loop(node.clone())),
            tokio::spawn(controller::controller_loop(node.clone())),
            tokio::spawn(mover::mover_loop(node.clone())),
            tokio::spawn(reconciler::leadership_loop(node.clone())),
            tokio::spawn(retention::retention_loop(node.clone())),
            tokio::spawn(groups::session_loop(node.clone())),
            tokio::spawn(peers::ping_loop(node.clone())),
        ];
        node.tasks.lock().expect("tasks poisoned").extend(tasks);
        tracing::info!(node = node.id(), addr = node.inner.config.advertised(), "node started");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    /// For a node started with `identity_unconfirmed`, once a peer has answered that the
    /// cluster does not know it (a new cluster forming): serves Raft messages from now on
    /// and initialises the metadata group as an initial controller would.
    pub async fn confirm_identity(&self) -> Result<(), String> {
        self.inner.groups.set_admitting(true);
        if let Some(voters) = self.inner.config.initial_metadata_voters()? {
            self.metadata_group().initialize(voters.into_iter().collect()).await?;
        }
        self.inner.identity_confirmed.send_replace(true);
        Ok(())
    }

    /// Returns once this node knows the cluster does not know it from before (at once
    /// unless it started with `identity_unconfirmed`): what it writes into the cluster
    /// in its own name (its registration, its joining) waits for this.
    pub async fn identity_confirmed(&self) {
        let mut confirmed = self.inner.identity_confirmed.subscribe();
        if confirmed.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn groups(&self) -> &Arc<Groups<T>> {
        &self.inner.groups
    }

    /// Node-to-node addresses, by node id (the transport's).
    pub fn addresses(&self) -> &AddressBook {
        &self.inner.addresses
    }

    /// Where clients reach node `id`, as the metadata group has it registered (what a
    /// `NOT_LEADER` answer names; the address book holds node-to-node addresses).
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        self.with_metadata(|m| m.brokers().get(&id).map(|b| b.addr.clone()))
    }

    pub(crate) fn metadata_group(&self) -> MetadataGroup {
        self.inner.groups.metadata().expect("the metadata group runs for the node's whole life")
    }

    /// Runs `f` on the metadata state as this node has applied it.
    pub fn with_metadata<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        self.metadata_group().read(f)
    }

    /// Handles a Raft message from a peer (the transport's server side).
    pub async fn handle_raft(&self, from: NodeId, group: flotilla_types::GroupId, payload: &[u8]) -> Vec<u8> {
        self.inner.groups.handle(from, group, payload).await
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Stops background work and every Raft group. Data stays on disk.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().expect("tasks poisoned").drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.inner.groups.shutdown().await;
        tracing::info!(node = self.id(), "node stopped");
    }

    pub(crate) fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.produce_timeout_ms)
    }

    /// The Raft groups on this node that stopped after a fatal error (a failed sync, a
    /// corrupt read), with the reason. They serve nothing; the node is unhealthy.
    pub fn stopped_groups(&self) -> Vec<(flotilla_types::GroupId, String)> {
        self.groups().ids().into_iter().filter_map(|id| Some((id, self.groups().get(id)?.stopped()?))).collect()
    }

    /// Whether this node serves (the `/ready` endpoint), or why not: it is in touch with
    /// a metadata leader (it is one, acknowledged by a quorum within `suspect-after-ms`,
    /// or it heard from one that recently) and has applied what it knows committed, it
    /// runs a replica of every partition assigned to it and none has stopped, and its
    /// disk is not full. A node that remembers a leader from before a restart but has
    /// not heard from it is not ready.
    pub fn readiness(&self) -> Result<(), String> {
        let meta = self.metadata_group();
        let recent = self.suspect_after();
        if meta.is_leader() {
            let voters = meta.membership().voters();
            let acked = meta.peer_ack_ages().unwrap_or_default();
            let in_touch = voters
                .iter()
                .filter(|v| **v == self.id() || acked.get(v).copied().flatten().is_some_and(|a| a < recent));
            if in_touch.count() * 2 <= voters.len() {
                return Err("leading the metadata group without a quorum in touch".into());
            }
        } else if meta.leader().is_none() {
            return Err("no metadata leader known".into());
        } else if meta.since_last_append().is_none_or(|d| d >= recent) {
            return Err("no word from the metadata leader lately".into());
        }
        if !reconciler::metadata_caught_up(self) {
            return Err("catching up on the metadata log".into());
        }
        let me = self.id();
        let assigned = self.with_metadata(|m| m.groups_on(me));
        let missing = assigned.keys().filter(|g| self.groups().get(**g).is_none()).count();
        if missing > 0 {
            return Err(format!("{missing} of {} assigned partition replicas not started yet", assigned.len()));
        }
        if let Some((group, why)) = self.stopped_groups().into_iter().next() {
            return Err(format!("the replica of group {group} stopped: {why}"));
        }
        if let Some(why) = self.disk_full() {
            return Err(format!("disk full: {why}"));
        }
        Ok(())
    }

    /// Why this node cannot serve at all (its replica of the metadata group stopped: it
    /// no longer learns the cluster's state), or `None`. The node binary exits on it.
    pub fn fatal(&self) -> Option<String> {
        self.metadata_group().stopped().map(|why| format!("the metadata group's replica stopped: {why}"))
    }

    /// `replica-lag-time-max-ms`: how long a replica may go without acknowledging its
    /// leader and still be in sync (`mover::in_sync`).
    pub(crate) fn lag_time_max(&self) -> Duration {
        Duration::from_millis(self.config().replica_lag_time_max_ms)
    }

    /// Whether `peer`'s process is gone, as this node's own node-level heartbeats say
    /// (connection refused: `peers`).
    pub(crate) fn peer_down(&self, peer: NodeId) -> bool {
        self.inner.peers.down(peer)
    }

    /// How long ago `peer` last answered this node's node-level heartbeat.
    pub(crate) fn peer_answered_ago(&self, peer: NodeId) -> Option<Duration> {
        self.inner.peers.answered_ago(peer)
    }

    /// Where `nodes`' replicas of `group` (led here) stand against this leader's log; a
    /// caught-up replica's node answering this node's pings counts as contact
    /// (`mover::catch_up`).
    pub(crate) fn catch_up(&self, group: &flotilla_raft::Group, nodes: &[NodeId]) -> Vec<mover::CatchUp> {
        mover::catch_up(group, nodes, self.lag_time_max(), |p| self.peer_answered_ago(p))
    }

    /// Whether `node`'s replica of `group` (led here) is in sync (`catch_up`).
    pub(crate) fn in_sync(&self, group: &flotilla_raft::Group, node: NodeId) -> bool {
        self.catch_up(group, &[node]).iter().all(|c| c.in_sync)
    }

    /// When `peer` last answered again after this node judged it down.
    pub(crate) fn peer_returned_at(&self, peer: NodeId) -> Option<tokio::time::Instant> {
        self.inner.peers.returned_at(peer)
    }

    /// Whether `peer` answered one of this node's node-level heartbeats within `within`.
    pub(crate) fn peer_answered_within(&self, peer: NodeId, within: Duration) -> bool {
        self.inner.peers.answered_within(peer, within)
    }

    pub(crate) fn suspect_after(&self) -> Duration {
        Duration::from_millis(self.inner.config.suspect_after_ms)
    }

    /// Whether the node refuses writes for lack of disk space, and why. Set by whoever
    /// watches the data directory's filesystem (the node binary checks it against
    /// `disk-free-min-bytes` every second); produce answers DISK_FULL while it is set,
    /// and fetches, replication and retention go on, so the space comes back by itself.
    pub fn set_disk_full(&self, why: Option<String>) {
        let mut current = self.inner.disk_full.write().expect("disk state poisoned");
        match (&*current, &why) {
            (None, Some(w)) => tracing::warn!(node = self.id(), reason = %w, "refusing writes: disk nearly full"),
            (Some(_), None) => tracing::info!(node = self.id(), "accepting writes again: disk space freed"),
            _ => {}
        }
        *current = why;
    }

    /// Why the node refuses writes for lack of disk space, if it does.
    pub fn disk_full(&self) -> Option<String> {
        self.inner.disk_full.read().expect("disk state poisoned").clone()
    }

    /// Request latency histograms and counters, filled by the `rpc` layer.
    pub fn metrics(&self) -> &metrics::Registry {
        &self.inner.metrics
    }
}
