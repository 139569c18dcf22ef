//! The clients: writers that produce uniquely named record batches to the partition
//! groups and create topics in the metadata group, through whichever node they believe
//! leads, and the history of what was acknowledged to them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_metadata::{Broker, Labels, Topic};
use flotilla_raft::{Command, Response, WriteError};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId, Offset, Record, RecordBatch};
use madsim::net::Endpoint;
use madsim::rand::Rng;

use crate::node::{ClientWrite, addr_of};
use crate::spec::{CLIENT_TIMEOUT, NODES, Spec};

pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));

/// A produce acknowledged to a client: the batch is committed at `base_offset`.
#[derive(Debug, Clone)]
pub struct ProduceAck {
    pub group: GroupId,
    pub base_offset: Offset,
    pub records: u32,
    pub batch: Bytes,
    /// Which node answered, and when the request was sent and answered.
    pub node: NodeId,
    pub sent: Instant,
    pub acked: Instant,
}

/// A metadata write acknowledged to a client, and what it answered.
#[derive(Debug, Clone)]
pub enum MetadataAck {
    Registered(Broker),
    TopicCreated(Topic),
}

/// Everything the clients were told, for the checker.
#[derive(Debug, Default)]
pub struct History {
    pub produced: Vec<ProduceAck>,
    pub metadata: Vec<MetadataAck>,
    /// Writes that got an answer other than success (definite or not).
    pub failed: u64,
    /// Requests that got no answer in time.
    pub unanswered: u64,
}

pub type SharedHistory = Arc<Mutex<History>>;

/// The client side: one endpoint shared by every writer, and a leader hint per group.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    history: SharedHistory,
    leaders: Arc<Mutex<BTreeMap<GroupId, NodeId>>>,
}

/// What one attempt came to.
pub enum Outcome {
    Acked(Response),
    Failed,
}

impl Client {
    pub async fn bind(history: SharedHistory) -> Client {
        let endpoint = Endpoint::bind(SocketAddr::new(CLIENT_IP, 9000)).await.expect("the client's address is free");
        Client { endpoint, history, leaders: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    fn target(&self, group: GroupId) -> NodeId {
        match self.leaders.lock().expect("leader hints poisoned").get(&group) {
            Some(n) => *n,
            None => NODES[madsim::rand::thread_rng().gen_range(0..NODES.len())],
        }
    }

    fn hint(&self, group: GroupId, leader: Option<NodeId>, tried: NodeId) {
        let mut leaders = self.leaders.lock().expect("leader hints poisoned");
        match leader {
            Some(l) if l != tried => {
                leaders.insert(group, l);
            }
            _ => {
                // No better idea: try another node next time.
                let others: Vec<NodeId> = NODES.into_iter().filter(|n| *n != tried).collect();
                leaders.insert(group, others[madsim::rand::thread_rng().gen_range(0..others.len())]);
            }
        }
    }

    /// Sends `command` once, to the node believed to lead `group`, and records an
    /// acknowledgement in the history.
    pub async fn write_once(&self, group: GroupId, command: Command) -> Outcome {
        self.write_to(self.target(group), group, command).await
    }

    /// Sends `command` once to `node`, and records an acknowledgement in the history.
    pub async fn write_to(&self, node: NodeId, group: GroupId, command: Command) -> Outcome {
        let sent = Instant::now();
        let request = ClientWrite { group, command: command.clone() };
        let reply = self.endpoint.call_timeout(addr_of(node), request, CLIENT_TIMEOUT).await;
        let acked = Instant::now();
        let mut history = self.history.lock().expect("history poisoned");
        match reply {
            Ok(Ok(response)) => {
                match (&command, &response) {
                    (
                        Command::Partition(flotilla_partition::Command::Produce { batch, records, .. }),
                        Response::Partition(flotilla_partition::Response::Produced { base_offset, records: acked_n, .. }),
                    ) => {
                        assert_eq!(records, acked_n, "group {group}: the ack counts other records than were sent");
                        history.produced.push(ProduceAck {
                            group,
                            base_offset: *base_offset,
                            records: *records,
                            batch: batch.clone(),
                            node,
                            sent,
                            acked,
                        });
                    }
                    (Command::Metadata(_), Response::Metadata(flotilla_metadata::Response::TopicCreated(t))) => {
                        history.metadata.push(MetadataAck::TopicCreated(t.clone()));
                    }
                    (
                        Command::Metadata(flotilla_metadata::Command::RegisterBroker(b)),
                        Response::Metadata(flotilla_metadata::Response::Ok),
                    ) => {
                        history.metadata.push(MetadataAck::Registered(b.clone()));
                    }
                    (_, Response::Metadata(flotilla_metadata::Response::Error { .. })) => {}
                    (c, r) => panic!("group {group}: {c} was answered with {r:?}"),
                }
                Outcome::Acked(response)
            }
            Ok(Err(e)) => {
                history.failed += 1;
                drop(history);
                let leader = match e {
                    WriteError::NotLeader { leader, .. } | WriteError::LeaderChanged { leader, .. } => leader,
                    WriteError::Unavailable { .. } | WriteError::Timeout { .. } => None,
                };
                self.hint(group, leader, node);
                Outcome::Failed
            }
            Err(_) => {
                history.unanswered += 1;
                drop(history);
                self.hint(group, None, node);
                Outcome::Failed
            }
        }
    }

    /// Retries `make()` until a write is acknowledged or `bound` has passed.
    pub async fn write_until_acked(
        &self,
        group: GroupId,
        bound: Duration,
        mut make: impl FnMut() -> Command,
    ) -> Option<Response> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Outcome::Acked(r) = self.write_once(group, make()).await {
                return Some(r);
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// A produce command with a batch no other write has: `w{writer}-{seq}-{i}` per record.
pub fn produce(writer: usize, seq: u64) -> Command {
    let n = madsim::rand::thread_rng().gen_range(1..=4);
    let records: Vec<Record> = (0..n).map(|i| Record::value(format!("w{writer}-{seq}-{i}"))).collect();
    let batch = RecordBatch::encode(&records).expect("small batches encode");
    Command::Partition(flotilla_partition::produce_command(&batch, 1))
}

pub fn register(id: NodeId) -> Command {
    let labels = Labels { region: "r".into(), zone: format!("z{id}"), rack: format!("k{id}") };
    Command::Metadata(flotilla_metadata::Command::RegisterBroker(Broker::new(id, addr_of(id).to_string(), labels)))
}

pub fn create_topic(writer: usize, seq: u64) -> Command {
    let rf = madsim::rand::thread_rng().gen_range(1..=3);
    Command::Metadata(flotilla_metadata::Command::CreateTopic {
        name: format!("t-{writer}-{seq}"),
        partitions: madsim::rand::thread_rng().gen_range(1..=3),
        replication_factor: rf,
        policy: flotilla_metadata::TopicPolicy::default(),
    })
}

/// One writer: until `stop`, writes to a random group, one request at a time.
pub async fn writer(client: Client, spec: Spec, me: usize, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let (group, command) = if madsim::rand::thread_rng().gen_ratio(1, spec.metadata_every) {
            (METADATA_GROUP, create_topic(me, seq))
        } else {
            (madsim::rand::thread_rng().gen_range(1..=spec.partitions), produce(me, seq))
        };
        if let Outcome::Failed = client.write_once(group, command).await {
            // Back off a little so that a leaderless group is not hammered.
            let pause = madsim::rand::thread_rng().gen_range(10..=100);
            madsim::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}
