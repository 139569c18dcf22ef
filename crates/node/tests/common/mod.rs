//! The in-process harness: real `Node`s over an in-memory transport and `MemEngine`s.
//! A node or a link is cut off by making the transport drop its traffic (the call gets no
//! answer: `TransportError::Timeout`, as a network partition looks); a node stopped and
//! taken out of `LocalNet::nodes` refuses every call (`Refused`, as a killed
//! process's closed port does).
#![allow(dead_code)] // each test file uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_node::{AddressBook, ApiError, Node, NodeConfig};
use flotilla_raft::{RaftTransport, TransportError};
use flotilla_storage::MemEngine;
use flotilla_types::{ErrorCode, GroupId, NodeId, Record, RecordBatch, SystemClock};

#[derive(Clone, Default)]
pub struct LocalNet {
    pub nodes: Arc<RwLock<BTreeMap<NodeId, Node<LocalTransport>>>>,
    pub cut: Arc<RwLock<BTreeSet<NodeId>>>,
    /// Links cut in both directions (the nodes still reach everyone else).
    pub cut_links: Arc<RwLock<BTreeSet<(NodeId, NodeId)>>>,
    /// From one node to another: AppendEntries without entries (heartbeats, which carry
    /// the commit index) are dropped, or (`true`) every AppendEntries is.
    pub drop_appends: Arc<RwLock<BTreeMap<(NodeId, NodeId), bool>>>,
}

impl LocalNet {
    pub fn cut_link(&self, a: NodeId, b: NodeId) {
        self.cut_links.write().unwrap().insert((a.min(b), a.max(b)));
    }
}

#[derive(Clone)]
pub struct LocalTransport {
    pub me: NodeId,
    pub net: LocalNet,
}

impl RaftTransport for LocalTransport {
    async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        payload: Vec<u8>,
        _t: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let cut = self.net.cut.read().unwrap().clone();
        let link = (self.me.min(target), self.me.max(target));
        if cut.contains(&self.me) || cut.contains(&target) || self.net.cut_links.read().unwrap().contains(&link) {
            return Err(TransportError::Timeout(target));
        }
        if let Some(all) = self.net.drop_appends.read().unwrap().get(&(self.me, target)).copied()
            && flotilla_raft::wire::append_with_entries(&payload).is_some_and(|entries| all || !entries)
        {
            return Err(TransportError::Unreachable(target, "append dropped".into()));
        }
        let node = self.net.nodes.read().unwrap().get(&target).cloned();
        match node {
            Some(n) => Ok(n.handle_raft(self.me, group, &payload).await),
            // A stopped node's address accepts no connection.
            None => Err(TransportError::Refused(target, "down".into())),
        }
    }
}

pub fn config(id: NodeId) -> NodeConfig {
    NodeConfig {
        id,
        listen: format!("127.0.0.1:{}", 17000 + id),
        peers: (1..=3).map(|i| format!("{i}=127.0.0.1:{}", 17000 + i)).collect(),
        zone: format!("z{id}"),
        ..NodeConfig::default()
    }
}

pub async fn start_cluster(net: &LocalNet, engines: &[MemEngine]) -> Vec<Node<LocalTransport>> {
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(net, config(id), &engines[id as usize - 1]).await);
    }
    nodes
}

/// Starts one node on `engine` and puts it on the network.
pub async fn start_node(net: &LocalNet, config: NodeConfig, engine: &MemEngine) -> Node<LocalTransport> {
    // `RUST_LOG=...` shows the nodes' logs with a failing test's output.
    if std::env::var_os("RUST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::from_default_env();
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let id = config.id;
    let transport = LocalTransport { me: id, net: net.clone() };
    let engine: Arc<dyn flotilla_storage::Engine> = Arc::new(engine.clone());
    let node = Node::start(config, engine, transport, AddressBook::new(), Arc::new(SystemClock)).await.unwrap();
    net.nodes.write().unwrap().insert(id, node.clone());
    node
}

/// The node whose replica of `group` leads it.
pub fn leader_of(nodes: &[Node<LocalTransport>], group: GroupId) -> Option<&Node<LocalTransport>> {
    nodes.iter().find(|n| n.groups().get(group).is_some_and(|g| g.is_leader()))
}

/// Once three brokers have registered, creates topic `name` with one partition of three
/// replicas through the first node; its view.
pub async fn one_partition_topic(nodes: &[Node<LocalTransport>], name: &str) -> flotilla_node::TopicInfo {
    eventually("three brokers", async || (nodes[0].describe_cluster().brokers.len() == 3).then_some(())).await;
    eventually("create topic", async || {
        nodes[0].create_topic(name, 1, 3, flotilla_metadata::TopicPolicy::default()).await.ok()
    })
    .await
}

/// Retries `f` every 50 ms until it gives a value. The whole wait, including an attempt
/// that never returns, is bounded: a test fails with `what` rather than hanging.
pub async fn eventually<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_explained(what, f, String::new).await
}

/// `eventually`, and on a timeout the failure message ends with `explain()`: the state
/// that was waited on, so a failure under load can be read without a rerun.
pub async fn eventually_explained<T>(
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out waiting for {what} (an attempt was still running){}", explain()),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long `eventually` waits.
pub const EVENTUALLY: Duration = Duration::from_secs(45);

pub fn batch(values: &[&str]) -> RecordBatch {
    let records: Vec<Record> = values.iter().map(|v| Record::value(v.to_string())).collect();
    RecordBatch::encode(&records).unwrap()
}

pub async fn produce(nodes: &[Node<LocalTransport>], topic: &str, p: u32, values: &[&str]) -> u64 {
    produce_batch(nodes, topic, p, &batch(values)).await
}

/// Produces `b` through whichever node leads the partition; its base offset.
pub async fn produce_batch(nodes: &[Node<LocalTransport>], topic: &str, p: u32, b: &RecordBatch) -> u64 {
    produce_answer(nodes, topic, p, b).await.base_offset
}

/// Produces `b` through whichever node leads the partition; the whole answer.
pub async fn produce_answer(
    nodes: &[Node<LocalTransport>],
    topic: &str,
    p: u32,
    b: &RecordBatch,
) -> flotilla_node::Produced {
    eventually("a produce to succeed", async || {
        for n in nodes {
            match n.produce(topic, p, b.clone()).await {
                Ok(answer) => return Some(answer),
                Err(ApiError {
                    code: ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::LeaderChanged | ErrorCode::UnknownTopic,
                    ..
                }) => {}
                Err(e) => panic!("produce failed: {e}"),
            }
        }
        None
    })
    .await
}

pub async fn read_all(nodes: &[Node<LocalTransport>], topic: &str, p: u32) -> Vec<String> {
    eventually("a fetch from the leader", async || {
        for n in nodes {
            if let Ok(f) = n.fetch(topic, p, 0, 1 << 20, Duration::ZERO, false).await {
                let mut out = Vec::new();
                for b in f.batches {
                    for r in RecordBatch::decode(b.batch).unwrap().records() {
                        out.push(String::from_utf8(r.value.to_vec()).unwrap());
                    }
                }
                return Some(out);
            }
        }
        None
    })
    .await
}
