//! The client's logic against tiny in-test brokers that answer as a script says:
//! routing (redirects, metadata refreshes, admin writes to the metadata leader, fetches
//! from a follower in the consumer's zone), retries and backoff with the
//! definite/indeterminate verdicts, and the producer and consumer on top (batching,
//! partitioning, idempotent sequences with batches in flight, the buffer, checksums).
//! (A fake server is the right tool here: the client's decisions are under test, not
//! the server's.)

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_client::{Client, ClientConfig, ClientError, ErrorCode, ProducerConfig, Record, RecordExt, StartAt};
use flotilla_proto::v1::{self, admin_server, flotilla_server};
use flotilla_types::RecordBatch;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What a broker does with the next request of a kind; `Ok` once the script runs out.
#[derive(Clone)]
enum Act {
    Ok,
    Fail(v1::Error),
    /// Sleep, then answer `Ok`.
    Stall(Duration),
    /// Fetch only: answer with the stored batches, the first one corrupted.
    Corrupt,
    /// Produce only: sleep, then act.
    Late(Duration, Box<Act>),
    /// Produce only: append, then sleep before answering (an answer lost to a timeout).
    AnswerLate(Duration),
}

#[derive(Default)]
struct BrokerState {
    produce: VecDeque<Act>,
    /// Used when `produce` is empty; `Ok` when `None`.
    produce_default: Option<Act>,
    fetch: VecDeque<Act>,
    create: VecDeque<Act>,
    /// Used when `init_producer` is empty; `Ok` when `None`.
    init_producer_default: Option<Act>,
    /// Producer ids issued (each `InitProducer` gets a new one).
    producers_issued: u64,
    /// When set, stamped batches are checked as a partition does (next sequence
    /// appended, retries answered with their first offsets, gaps refused).
    sequences: Option<flotilla_partition::ProducerTable>,
    produce_calls: u32,
    metadata_calls: u32,
    fetch_calls: u32,
    /// `from_follower` of every fetch received.
    fetch_from_follower: Vec<bool>,
    create_calls: u32,
    /// Records per produce call that was answered Ok.
    batch_sizes: Vec<u32>,
    /// (base offset, batch) appended here.
    log: Vec<(u64, Bytes)>,
    next_offset: u64,
    /// When set, answering `NOT_LEADER` without a hint also moves the shared metadata's
    /// leader of every partition to this node (an election the metadata has seen).
    elect_on_not_leader: Option<u64>,
}

/// The metadata every broker answers with, shared like a replicated metadata group.
type Shared = Arc<Mutex<v1::MetadataResponse>>;

#[derive(Clone)]
struct Broker {
    id: u64,
    cluster: Shared,
    state: Arc<Mutex<BrokerState>>,
}

impl Broker {
    /// With sequence checking on, the answer to a stamped batch that is not appended (a
    /// duplicate or a refusal); records an appended one in the table.
    fn check_sequence(s: &mut BrokerState, batch: &RecordBatch, base: u64, acks: i32) -> Option<v1::ProduceResponse> {
        use flotilla_partition::Verdict;
        let (Some(table), Some(stamp)) = (s.sequences.as_mut(), batch.producer()) else { return None };
        let refuse = |code: ErrorCode| {
            let e = v1::Error { code: code.as_u32(), message: format!("{stamp:?}"), ..Default::default() };
            Some(v1::ProduceResponse { error: Some(e), ..Default::default() })
        };
        match table.check(stamp, batch.len()) {
            Verdict::Append => {
                table.appended(stamp, batch.len(), base, 0, Default::default());
                None
            }
            Verdict::Duplicate { base_offset } => Some(v1::ProduceResponse {
                error: None,
                base_offset,
                record_count: batch.len(),
                duplicate: true,
                acks,
                throttle_time_ms: 0,
            }),
            Verdict::OutOfOrder { .. } => refuse(ErrorCode::OutOfOrderSequence),
            Verdict::Fenced { .. } => refuse(ErrorCode::ProducerFenced),
        }
    }

    fn next(queue: &mut VecDeque<Act>, default: &Option<Act>) -> Act {
        queue.pop_front().or_else(|| default.clone()).unwrap_or(Act::Ok)
    }
}

#[tonic::async_trait]
impl flotilla_server::Flotilla for Broker {
    async fn produce(&self, req: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        let mut act = {
            let mut s = self.state.lock().unwrap();
            s.produce_calls += 1;
            let default = s.produce_default.clone();
            Broker::next(&mut s.produce, &default)
        };
        if let Act::Late(d, then) = act {
            tokio::time::sleep(d).await;
            act = *then;
        }
        match act {
            Act::Fail(e) => {
                let mut s = self.state.lock().unwrap();
                if e.error_code() == ErrorCode::NotLeader
                    && e.leader_hint().is_none()
                    && let Some(new) = s.elect_on_not_leader.take()
                {
                    let mut c = self.cluster.lock().unwrap();
                    for t in &mut c.topics {
                        for p in &mut t.partitions {
                            p.leader_id = new;
                        }
                    }
                }
                return Ok(Response::new(v1::ProduceResponse { error: Some(e), ..Default::default() }));
            }
            Act::Stall(d) => tokio::time::sleep(d).await,
            Act::Ok | Act::Corrupt | Act::Late(..) | Act::AnswerLate(..) => {}
        }
        let req = req.into_inner();
        let acks = req.acks;
        let batch = RecordBatch::decode(req.batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let answer_late = match act {
            Act::AnswerLate(d) => Some(d),
            _ => None,
        };
        let (base, early) = {
            let mut s = self.state.lock().unwrap();
            let base = s.next_offset;
            let early = Self::check_sequence(&mut s, &batch, base, acks);
            if early.is_none() {
                s.next_offset += u64::from(batch.len());
                s.batch_sizes.push(batch.len());
                s.log.push((base, batch.bytes().clone()));
            }
            (base, early)
        };
        if let Some(answer) = early {
            return Ok(Response::new(answer));
        }
        if let Some(d) = answer_late {
            tokio::time::sleep(d).await;
        }
        Ok(Response::new(v1::ProduceResponse {
            error: None,
            base_offset: base,
            record_count: batch.len(),
            duplicate: false,
            acks,
            throttle_time_ms: 0,
        }))
    }

    async fn init_producer(
        &self,
        _req: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        let mut s = self.state.lock().unwrap();
        if let Some(Act::Fail(e)) = s.init_producer_default.clone() {
            return Ok(Response::new(v1::InitProducerResponse { error: Some(e), ..Default::default() }));
        }
        s.producers_issued += 1;
        let producer_id = self.id * 1000 + s.producers_issued;
        Ok(Response::new(v1::InitProducerResponse { error: None, producer_id, producer_epoch: 0 }))
    }

    async fn fetch(&self, req: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let req = req.into_inner();
        let mut s = self.state.lock().unwrap();
        s.fetch_calls += 1;
        s.fetch_from_follower.push(req.from_follower);
        let act = Broker::next(&mut s.fetch, &None);
        if let Act::Fail(e) = act {
            return Ok(Response::new(v1::FetchResponse { error: Some(e), ..Default::default() }));
        }
        let mut batches: Vec<v1::FetchedBatch> = s
            .log
            .iter()
            .filter(|(base, b)| base + u64::from(RecordBatch::decode(b.clone()).unwrap().len()) > req.offset)
            .map(|(base, b)| v1::FetchedBatch { base_offset: *base, batch: b.clone() })
            .collect();
        if let (Act::Corrupt, Some(first)) = (act, batches.first_mut()) {
            let mut bytes = first.batch.to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            first.batch = Bytes::from(bytes);
        }
        Ok(Response::new(v1::FetchResponse {
            error: None,
            high_watermark: s.next_offset,
            log_start_offset: 0,
            batches,
            throttle_time_ms: 0,
        }))
    }

    async fn list_offsets(
        &self,
        _req: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let s = self.state.lock().unwrap();
        Ok(Response::new(v1::ListOffsetsResponse {
            error: None,
            earliest: 0,
            latest: s.next_offset,
            offset_for_time: None,
        }))
    }

    async fn group_heartbeat(
        &self,
        _req: Request<v1::GroupHeartbeatRequest>,
    ) -> Result<Response<v1::GroupHeartbeatResponse>, Status> {
        Err(Status::unimplemented("group_heartbeat: not scripted"))
    }

    async fn commit_offsets(
        &self,
        _req: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        Err(Status::unimplemented("commit_offsets: not scripted"))
    }

    async fn share_heartbeat(
        &self,
        _req: Request<v1::ShareHeartbeatRequest>,
    ) -> Result<Response<v1::ShareHeartbeatResponse>, Status> {
        Err(Status::unimplemented("share_heartbeat: not scripted"))
    }

    async fn share_acquire(
        &self,
        _req: Request<v1::ShareAcquireRequest>,
    ) -> Result<Response<v1::ShareAcquireResponse>, Status> {
        Err(Status::unimplemented("share_acquire: not scripted"))
    }

    async fn share_ack(&self, _req: Request<v1::ShareAckRequest>) -> Result<Response<v1::ShareAckResponse>, Status> {
        Err(Status::unimplemented("share_ack: not scripted"))
    }

    async fn delete_records(
        &self,
        _req: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        Err(Status::unimplemented("this test broker keeps every record"))
    }

    async fn metadata(&self, req: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        self.state.lock().unwrap().metadata_calls += 1;
        let asked = req.into_inner().topics;
        let mut m = self.cluster.lock().unwrap().clone();
        if !asked.is_empty() {
            let mut topics: Vec<v1::TopicMetadata> =
                m.topics.iter().filter(|t| asked.contains(&t.name)).cloned().collect();
            for name in asked.iter().filter(|n| !m.topics.iter().any(|t| &t.name == *n)) {
                topics.push(v1::TopicMetadata {
                    name: name.clone(),
                    error: Some(v1::Error::new(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist"))),
                    ..Default::default()
                });
            }
            m.topics = topics;
        }
        Ok(Response::new(m))
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Broker {
    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let req = req.into_inner();
        let act = {
            let mut s = self.state.lock().unwrap();
            s.create_calls += 1;
            Broker::next(&mut s.create, &None)
        };
        if let Act::Fail(e) = act {
            return Ok(Response::new(v1::CreateTopicResponse { error: Some(e), topic: None }));
        }
        let topic = topic(&req.name, req.partitions, self.id, &[self.id]);
        self.cluster.lock().unwrap().topics.push(topic.clone());
        Ok(Response::new(v1::CreateTopicResponse { error: None, topic: Some(topic) }))
    }

    async fn delete_topic(
        &self,
        _req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        Ok(Response::new(v1::DeleteTopicResponse::default()))
    }

    async fn list_topics(
        &self,
        _req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let c = self.cluster.lock().unwrap();
        let topics = c
            .topics
            .iter()
            .map(|t| v1::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
                replication_factor: t.replication_factor,
            })
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { error: None, topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = req.into_inner().name;
        let c = self.cluster.lock().unwrap();
        Ok(Response::new(match c.topics.iter().find(|t| t.name == name) {
            Some(t) => v1::DescribeTopicResponse { error: None, topic: Some(t.clone()) },
            None => v1::DescribeTopicResponse {
                error: Some(v1::Error::new(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist"))),
                topic: None,
            },
        }))
    }

    async fn describe_cluster(
        &self,
        _req: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        let c = self.cluster.lock().unwrap().clone();
        Ok(Response::new(v1::DescribeClusterResponse {
            error: None,
            brokers: c.brokers,
            metadata_leader_id: c.metadata_leader_id,
            topics: c.topics,
            answered_by: self.id,
        }))
    }

    // Cluster operations: the client's routing of them is that of any admin write.
    async fn add_node(&self, _req: Request<v1::AddNodeRequest>) -> Result<Response<v1::AddNodeResponse>, Status> {
        Err(Status::unimplemented("add_node: not scripted"))
    }

    async fn drain_node(&self, _req: Request<v1::DrainNodeRequest>) -> Result<Response<v1::DrainNodeResponse>, Status> {
        Err(Status::unimplemented("drain_node: not scripted"))
    }

    async fn remove_node(
        &self,
        _req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        Err(Status::unimplemented("remove_node: not scripted"))
    }

    async fn replace_node(
        &self,
        _req: Request<v1::ReplaceNodeRequest>,
    ) -> Result<Response<v1::ReplaceNodeResponse>, Status> {
        Err(Status::unimplemented("replace_node: not scripted"))
    }

    async fn reassign(&self, _req: Request<v1::ReassignRequest>) -> Result<Response<v1::ReassignResponse>, Status> {
        Err(Status::unimplemented("reassign: not scripted"))
    }

    async fn transfer_leader(
        &self,
        _req: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("transfer_leader: not scripted"))
    }

    async fn cancel_move(
        &self,
        _req: Request<v1::CancelMoveRequest>,
    ) -> Result<Response<v1::CancelMoveResponse>, Status> {
        Err(Status::unimplemented("cancel_move: not scripted"))
    }

    async fn balance(&self, _req: Request<v1::BalanceRequest>) -> Result<Response<v1::BalanceResponse>, Status> {
        Err(Status::unimplemented("balance: not scripted"))
    }

    async fn plan(&self, _req: Request<v1::PlanRequest>) -> Result<Response<v1::PlanResponse>, Status> {
        Err(Status::unimplemented("plan: not scripted"))
    }

    async fn list_moves(&self, _req: Request<v1::ListMovesRequest>) -> Result<Response<v1::ListMovesResponse>, Status> {
        Err(Status::unimplemented("list_moves: not scripted"))
    }

    async fn set_topic_config(
        &self,
        _req: Request<v1::SetTopicConfigRequest>,
    ) -> Result<Response<v1::SetTopicConfigResponse>, Status> {
        Err(Status::unimplemented("set_topic_config: not scripted"))
    }

    async fn add_partitions(
        &self,
        _req: Request<v1::AddPartitionsRequest>,
    ) -> Result<Response<v1::AddPartitionsResponse>, Status> {
        Err(Status::unimplemented("add_partitions: not scripted"))
    }

    async fn describe_controllers(
        &self,
        _req: Request<v1::DescribeControllersRequest>,
    ) -> Result<Response<v1::DescribeControllersResponse>, Status> {
        Err(Status::unimplemented("describe_controllers: not scripted"))
    }

    async fn list_groups(
        &self,
        _req: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        Err(Status::unimplemented("list_groups: not scripted"))
    }

    async fn describe_group(
        &self,
        _req: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("describe_group: not scripted"))
    }

    async fn delete_group(
        &self,
        _req: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("delete_group: not scripted"))
    }

    async fn reset_offsets(
        &self,
        _req: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        Err(Status::unimplemented("reset_offsets: not scripted"))
    }

    async fn create_user(
        &self,
        _req: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        Err(Status::unimplemented("create_user: not scripted"))
    }

    async fn delete_user(
        &self,
        _req: Request<v1::DeleteUserRequest>,
    ) -> Result<Response<v1::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("delete_user: not scripted"))
    }

    async fn list_users(&self, _req: Request<v1::ListUsersRequest>) -> Result<Response<v1::ListUsersResponse>, Status> {
        Err(Status::unimplemented("list_users: not scripted"))
    }

    async fn add_acl(&self, _req: Request<v1::AclRequest>) -> Result<Response<v1::AclResponse>, Status> {
        Err(Status::unimplemented("add_acl: not scripted"))
    }

    async fn remove_acl(&self, _req: Request<v1::AclRequest>) -> Result<Response<v1::AclResponse>, Status> {
        Err(Status::unimplemented("remove_acl: not scripted"))
    }

    async fn list_acls(&self, _req: Request<v1::ListAclsRequest>) -> Result<Response<v1::ListAclsResponse>, Status> {
        Err(Status::unimplemented("list_acls: not scripted"))
    }

    async fn set_quota(&self, _req: Request<v1::SetQuotaRequest>) -> Result<Response<v1::SetQuotaResponse>, Status> {
        Err(Status::unimplemented("set_quota: not scripted"))
    }

    async fn list_quotas(
        &self,
        _req: Request<v1::ListQuotasRequest>,
    ) -> Result<Response<v1::ListQuotasResponse>, Status> {
        Err(Status::unimplemented("list_quotas: not scripted"))
    }

    async fn set_controllers(
        &self,
        _req: Request<v1::SetControllersRequest>,
    ) -> Result<Response<v1::SetControllersResponse>, Status> {
        Err(Status::unimplemented("set_controllers: not scripted"))
    }
}

fn topic(name: &str, partitions: u32, leader: u64, replicas: &[u64]) -> v1::TopicMetadata {
    v1::TopicMetadata {
        name: name.into(),
        error: None,
        replication_factor: replicas.len() as u32,
        partitions: (0..partitions)
            .map(|p| v1::PartitionMetadata {
                partition: p,
                group_id: 100 + u64::from(p),
                leader_id: leader,
                replicas: replicas.to_vec(),
                high_watermark: None,
            })
            .collect(),
    }
}

/// A cluster of `n` fake brokers (ids 1..=n) plus, optionally, a broker id whose
/// address accepts no connections.
struct Cluster {
    shared: Shared,
    brokers: Vec<Broker>,
    addrs: Vec<SocketAddr>,
}

impl Cluster {
    async fn start(n: u64, dead: Option<u64>) -> Cluster {
        let mut listeners = vec![];
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut brokers: Vec<v1::Broker> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| v1::Broker {
                id: i as u64 + 1,
                addr: a.to_string(),
                region: "r1".into(),
                zone: format!("z{i}"),
                rack: String::new(),
                state: "alive".into(),
                ..Default::default()
            })
            .collect();
        if let Some(id) = dead {
            // A port that was free a moment ago: connections to it are refused.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            drop(l);
            brokers.push(v1::Broker { id, addr: addr.to_string(), state: "alive".into(), ..Default::default() });
        }
        let shared: Shared =
            Arc::new(Mutex::new(v1::MetadataResponse { brokers, topics: vec![], metadata_leader_id: 1 }));
        let mut fakes = vec![];
        for (i, l) in listeners.into_iter().enumerate() {
            let b = Broker { id: i as u64 + 1, cluster: shared.clone(), state: Arc::default() };
            fakes.push(b.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(flotilla_server::FlotillaServer::new(b.clone()))
                    .add_service(admin_server::AdminServer::new(b))
                    .serve_with_incoming(TcpIncoming::from(l).with_nodelay(Some(true))),
            );
        }
        Cluster { shared, brokers: fakes, addrs }
    }

    fn add_topic(&self, t: v1::TopicMetadata) {
        self.shared.lock().unwrap().topics.push(t);
    }

    fn broker(&self, id: u64) -> std::sync::MutexGuard<'_, BrokerState> {
        self.brokers[id as usize - 1].state.lock().unwrap()
    }

    fn addr(&self, id: u64) -> String {
        self.addrs[id as usize - 1].to_string()
    }

    async fn client(&self) -> Client {
        self.client_with(config()).await
    }

    async fn client_with(&self, config: ClientConfig) -> Client {
        Client::connect_with(&format!("http://{}", self.addrs[0]), config).await.unwrap()
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(2),
        retry_deadline: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        create_topic_wait: Duration::from_secs(1),
        seed: Some(1),
        ..ClientConfig::default()
    }
}

fn not_leader(id: u64, addr: &str) -> Act {
    Act::Fail(v1::Error::not_leader(Some(id), Some(addr), "not the leader"))
}

fn fail(code: ErrorCode) -> Act {
    Act::Fail(v1::Error::new(code, format!("scripted {code}")))
}

#[tokio::test]
async fn not_leader_with_a_hint_is_redirected_at_once_and_remembered() {
    let c = Cluster::start(2, None).await;
    c.add_topic(topic("t", 1, 1, &[1, 2]));
    c.broker(1).produce_default = Some(not_leader(2, &c.addr(2)));
    let client = c.client().await;
    let p = client.producer("t", ProducerConfig::default());

    assert_eq!(p.send(Record::value("a")).await.unwrap(), (0, 0));
    assert_eq!(c.broker(1).produce_calls, 1);
    assert_eq!(c.broker(2).produce_calls, 1);
    assert_eq!(c.broker(1).metadata_calls, 1, "no refresh needed: the hint named the leader");

    // The hint updated the cache: the next send goes straight to the new leader.
    assert_eq!(p.send(Record::value("b")).await.unwrap(), (0, 1));
    assert_eq!(c.broker(1).produce_calls, 1);
    assert_eq!(c.broker(2).produce_calls, 2);
    assert_eq!(client.cached_topic("t").unwrap().partitions[0].leader, Some(2));
}

#[tokio::test]
async fn not_leader_without_a_hint_refreshes_metadata() {
    let c = Cluster::start(2, None).await;
    c.add_topic(topic("t", 1, 1, &[1, 2]));
    {
        let mut b1 = c.broker(1);
        b1.produce_default = Some(fail(ErrorCode::NotLeader));
        b1.elect_on_not_leader = Some(2);
    }
    let client = c.client().await;
    let metadata_before = c.broker(1).metadata_calls + c.broker(2).metadata_calls;
    let offset = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap();
    assert_eq!(offset, 0);
    assert_eq!(c.broker(2).produce_calls, 1);
    assert!(c.broker(1).metadata_calls + c.broker(2).metadata_calls > metadata_before, "metadata was refreshed");
}

#[tokio::test]
async fn unavailable_is_retried_with_backoff() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).produce.extend([fail(ErrorCode::Unavailable), fail(ErrorCode::ShuttingDown)]);
    let client = c.client().await;
    let started = tokio::time::Instant::now();
    let offset = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap();
    assert_eq!(offset, 0);
    assert_eq!(c.broker(1).produce_calls, 3);
    // Two backoffs: at least 2.5 ms then 5 ms (half of 5 ms and 10 ms).
    assert!(started.elapsed() >= Duration::from_micros(7500));
}

#[tokio::test]
async fn retries_stop_at_the_deadline_with_a_definite_error() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).produce_default = Some(fail(ErrorCode::Unavailable));
    let client = c.client_with(ClientConfig { retry_deadline: Duration::from_millis(300), ..config() }).await;
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert!(matches!(e, ClientError::GaveUp { .. }), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable));
    assert!(!e.is_indeterminate(), "every attempt was refused: nothing was written");
    assert!(e.to_string().contains("gave up after"), "{e}");
    assert!(c.broker(1).produce_calls > 3);
}

#[tokio::test]
async fn internal_is_indeterminate_and_not_retried() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).produce.push_back(fail(ErrorCode::Internal));
    let client = c.client().await;
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Internal));
    assert!(e.is_indeterminate());
    assert_eq!(c.broker(1).produce_calls, 1);
}

#[tokio::test]
async fn definite_refusals_fail_at_once() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).produce.push_back(fail(ErrorCode::PolicyViolation));
    let client = c.client().await;
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PolicyViolation));
    assert!(!e.is_indeterminate());
    assert_eq!(c.broker(1).produce_calls, 1);
}

#[tokio::test]
async fn a_timed_out_produce_is_retried_only_when_the_caller_opted_in() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client_with(ClientConfig { request_timeout: Duration::from_millis(400), ..config() }).await;

    c.broker(1).produce.push_back(Act::Stall(Duration::from_millis(1200)));
    let careful =
        client.producer("t", ProducerConfig { idempotent: false, retry_indeterminate: false, ..Default::default() });
    let e = careful.send_to(0, Record::value("a")).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert!(e.is_indeterminate());
    assert_eq!(c.broker(1).produce_calls, 1, "not resent");

    // The stalled attempt completes on the server: the write happened although the
    // client saw a timeout. With retries on, the record is written twice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.broker(1).produce.push_back(Act::Stall(Duration::from_millis(1200)));
    let eager = client.producer("t", ProducerConfig { idempotent: false, ..Default::default() });
    eager.send_to(0, Record::value("b")).await.unwrap();
    assert_eq!(c.broker(1).produce_calls, 3);
}

/// An idempotent producer that could not get its id sent nothing: its send fails
/// definitely, whatever became of the request for the id.
#[tokio::test]
async fn a_send_without_a_producer_id_is_definite() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client_with(ClientConfig { retry_deadline: Duration::from_millis(300), ..config() }).await;
    c.broker(1).init_producer_default = Some(fail(ErrorCode::Timeout));
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert!(!e.is_indeterminate(), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(e.to_string().contains("no producer id"), "{e}");
    assert_eq!(c.broker(1).produce_calls, 0, "no batch was sent");
}

/// The values of the records in the broker's log, in log order.
fn logged_values(c: &Cluster, id: u64) -> Vec<String> {
    c.broker(id)
        .log
        .iter()
        .flat_map(|(_, b)| RecordBatch::decode(b.clone()).unwrap().records())
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect()
}

/// Up to five batches in flight to one partition: when a later batch reaches the
/// partition before an earlier one (here the first is held up on its way), the partition
/// refuses it as out of order, and the producer sends it again once the earlier one is
/// acknowledged. Every record is appended once, in the order it was queued.
#[tokio::test]
async fn batches_in_flight_that_cross_are_sent_again_in_order() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).sequences = Some(Default::default());
    c.broker(1).produce.push_back(Act::Stall(Duration::from_millis(300)));
    let client = c.client().await;
    let producer = client.producer("t", ProducerConfig { max_in_flight: 5, ..ProducerConfig::default() });
    let mut acks = vec![producer.enqueue_to(0, Record::value("v0")).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..40 {
        acks.push(producer.enqueue_to(0, Record::value(format!("v{i}"))).await.unwrap());
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (i, a) in acks.into_iter().enumerate() {
        assert_eq!(a.await.unwrap(), (0, i as u64), "record {i} at the offset of its place in the queue");
    }
    let values: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    assert_eq!(logged_values(&c, 1), values);
    let b = c.broker(1);
    assert!(b.batch_sizes.len() >= 2, "several batches: {:?}", b.batch_sizes);
    assert!(b.produce_calls as usize > b.batch_sizes.len(), "some were refused and sent again");
    assert_eq!(b.producers_issued, 1, "crossing batches do not renew the producer id");
}

/// A batch appended whose answer is lost is retried; meanwhile the later batches are
/// answered, but no more than four go past it, so that the partition still remembers it
/// when the retry comes (it remembers five batches per producer) and answers the retry as
/// a duplicate. Regression: the window moved on past the unanswered batch, the partition
/// forgot it, and the retry was appended a second time (simulation seeds 132 and 165).
#[tokio::test]
async fn a_retry_behind_acknowledged_batches_is_still_recognised() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).sequences = Some(Default::default());
    c.broker(1).produce.push_back(Act::AnswerLate(Duration::from_millis(1500)));
    let client = c.client_with(ClientConfig { request_timeout: Duration::from_millis(300), ..config() }).await;
    let producer = client.producer("t", ProducerConfig { max_in_flight: 5, ..ProducerConfig::default() });
    let mut acks = vec![];
    for i in 0..12 {
        acks.push(producer.enqueue_to(0, Record::value(format!("v{i}"))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let offsets = futures_in_order(acks).await;
    assert_eq!(offsets, (0..12).collect::<Vec<u64>>());
    assert_eq!(logged_values(&c, 1), (0..12).map(|i| format!("v{i}")).collect::<Vec<_>>());
}

/// A batch that fails for good with later batches in flight behind it leaves a gap they
/// cannot follow: the producer takes a new id, and the later batches are numbered again
/// under it, in order. The failed batch's record gets its error; the rest are appended
/// once each, in order.
#[tokio::test]
async fn a_batch_failing_with_others_in_flight_renews_the_id_and_the_rest_follow_in_order() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).sequences = Some(Default::default());
    c.broker(1).produce.push_back(Act::Late(Duration::from_millis(300), Box::new(fail(ErrorCode::InvalidRequest))));
    let client = c.client().await;
    let producer = client.producer("t", ProducerConfig { max_in_flight: 5, ..ProducerConfig::default() });
    let first = producer.enqueue_to(0, Record::value("lost")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut acks = vec![];
    for i in 0..20 {
        acks.push(producer.enqueue_to(0, Record::value(format!("v{i}"))).await.unwrap());
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let e = first.await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    let offsets: Vec<u64> = futures_in_order(acks).await;
    assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
    assert_eq!(logged_values(&c, 1), (0..20).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert_eq!(c.broker(1).producers_issued, 2, "one new producer id after the gap");
}

/// Awaits each ack in turn; their offsets.
async fn futures_in_order(acks: Vec<flotilla_client::Ack>) -> Vec<u64> {
    let mut offsets = vec![];
    for a in acks {
        offsets.push(a.await.unwrap().1);
    }
    offsets
}

#[tokio::test]
async fn a_final_error_after_an_unknown_outcome_stays_indeterminate() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client_with(ClientConfig { request_timeout: Duration::from_millis(400), ..config() }).await;
    c.broker(1).produce.extend([Act::Stall(Duration::from_millis(1000)), fail(ErrorCode::InvalidRequest)]);
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert!(matches!(e, ClientError::GaveUp { maybe_applied: true, .. }), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    assert!(e.is_indeterminate(), "the first attempt may have been applied");
}

#[tokio::test]
async fn a_refused_connection_is_definite_and_the_replicas_are_tried() {
    // Broker 3 is the cached leader but accepts no connections; broker 1 now leads.
    let c = Cluster::start(1, Some(3)).await;
    c.add_topic(topic("t", 1, 3, &[3, 1]));
    let client = c.client().await;
    let offset = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap();
    assert_eq!(offset, 0);
    assert_eq!(c.broker(1).produce_calls, 1);

    // With nowhere else to go, the failure is definite.
    let c = Cluster::start(1, Some(3)).await;
    c.add_topic(topic("t", 1, 3, &[3]));
    let client = c.client_with(ClientConfig { retry_deadline: Duration::from_millis(300), ..config() }).await;
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    let ClientError::GaveUp { last, .. } = &e else { panic!("{e:?}") };
    assert!(matches!(**last, ClientError::Connect { .. }), "{last:?}");
    assert!(!e.is_indeterminate(), "nothing was sent: {e}");
}

#[tokio::test]
async fn unknown_topics_refresh_once_then_fail() {
    let c = Cluster::start(1, None).await;
    let client = c.client().await;
    let before = c.broker(1).metadata_calls;
    let e = client.producer("nope", ProducerConfig::default()).send(Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    assert!(!e.is_indeterminate());
    assert_eq!(e.to_string(), "topic 'nope' does not exist (UNKNOWN_TOPIC)");
    assert_eq!(c.broker(1).metadata_calls, before + 1);

    // The cache says it exists, the leader says it does not, and a refresh agrees with
    // the cache: one retry, then the leader's answer.
    c.add_topic(topic("t", 1, 1, &[1]));
    c.broker(1).produce_default = Some(fail(ErrorCode::UnknownTopic));
    let e = client.producer("t", ProducerConfig::default()).send_to(0, Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    assert_eq!(c.broker(1).produce_calls, 2);

    let e = client.producer("t", ProducerConfig::default()).send_to(7, Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownPartition));
}

#[tokio::test]
async fn concurrent_sends_share_batches_and_get_their_own_offsets() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client().await;
    let p = client.producer("t", ProducerConfig { linger: Duration::from_millis(50), ..Default::default() });
    let sends = (0..200).map(|i| {
        let p = p.clone();
        async move { (i, p.send(Record::value(format!("v{i}")).with_key(format!("k{i}"))).await.unwrap()) }
    });
    let results = futures_join_all(sends).await;
    let mut offsets: Vec<u64> = results
        .iter()
        .map(|(_, (part, off))| {
            assert_eq!(*part, 0);
            *off
        })
        .collect();
    offsets.sort();
    assert_eq!(offsets, (0..200).collect::<Vec<_>>());
    let sizes = c.broker(1).batch_sizes.clone();
    assert!(sizes.len() < 20, "200 concurrent sends went out in {} batches", sizes.len());
    assert_eq!(sizes.iter().sum::<u32>(), 200);

    // Each caller's offset holds its own record.
    let log = c.broker(1).log.clone();
    for (i, (_, off)) in results {
        let (base, bytes) = log.iter().rev().find(|(base, _)| *base <= off).unwrap();
        let rec = &RecordBatch::decode(bytes.clone()).unwrap().records()[(off - base) as usize];
        assert_eq!(rec.value, Bytes::from(format!("v{i}")));
        assert!(rec.timestamp_ms > 0, "stamped by the producer");
    }
}

/// `futures::future::join_all` without the dependency.
async fn futures_join_all<F: std::future::Future + Send + 'static>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn keyed_records_land_on_the_kafka_partition() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 10, 1, &[1]));
    let client = c.client().await;
    let p = client.producer("t", ProducerConfig::default());
    let (part, _) = p.send(Record::value("v").with_key("hello")).await.unwrap();
    assert_eq!(part, flotilla_client::partitioner::partition_for_key(b"hello", 10));
    assert_eq!(part, 2_132_663_229 % 10);
}

#[tokio::test]
async fn send_batch_and_local_limits() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client().await;
    let p = client.producer("t", ProducerConfig::default());
    assert_eq!(p.send_batch(0, vec![Record::value("a"), Record::value("b")]).await.unwrap(), 0);
    assert_eq!(p.send_batch(0, vec![Record::value("c")]).await.unwrap(), 2);
    assert_eq!(c.broker(1).batch_sizes, vec![2, 1]);

    let e = p.send(Record::value(vec![0u8; flotilla_types::limits::BATCH_BYTES_MAX])).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RecordTooLarge));
    let e = p.send_batch(0, vec![]).await.unwrap_err();
    assert!(!e.is_indeterminate());
    assert_eq!(c.broker(1).produce_calls, 2, "nothing over a limit was sent");
}

#[tokio::test]
async fn consumer_skips_below_its_position_and_verifies_checksums() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client().await;
    let p = client.producer("t", ProducerConfig::default());
    p.send_batch(0, (0..5).map(|i| Record::value(format!("a{i}"))).collect()).await.unwrap();
    p.send_batch(0, (5..10).map(|i| Record::value(format!("b{i}"))).collect()).await.unwrap();

    let mut consumer = client.consumer("t", 0, StartAt::Offset(3)).await.unwrap();
    let got = consumer.poll(Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
    assert_eq!(got[0].record.value, Bytes::from("a3"));
    assert_eq!(consumer.position(), 10);
    assert_eq!(consumer.high_watermark(), Some(10));
    assert!(consumer.poll(Duration::from_millis(10)).await.unwrap().is_empty());

    let end = client.consumer("t", 0, StartAt::End).await.unwrap();
    assert_eq!(end.position(), 10);
    let beginning = client.consumer("t", 0, StartAt::Beginning).await.unwrap();
    assert_eq!(beginning.position(), 0);
    assert_eq!(client.list_offsets("t", 0).await.unwrap(), (0, 10));

    consumer.seek(0);
    c.broker(1).fetch.push_back(Act::Corrupt);
    let e = consumer.poll(Duration::from_millis(10)).await.unwrap_err();
    assert!(matches!(e, ClientError::CorruptBatch { base_offset: 0, .. }), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::CorruptBatch));
    assert_eq!(consumer.position(), 0, "a corrupt batch is not skipped");
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 10);

    // Fetches are routed and retried like produces.
    c.broker(1).fetch.push_back(fail(ErrorCode::Unavailable));
    consumer.seek(9);
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn admin_writes_follow_the_metadata_leader() {
    let c = Cluster::start(2, None).await;
    c.broker(1).create.push_back(not_leader(2, &c.addr(2)));
    let client = c.client().await;
    let t = client.create_topic("orders", 3, 1).await.unwrap();
    assert_eq!(t.name, "orders");
    assert_eq!(t.partitions.len(), 3);
    assert!(t.partitions.iter().all(|p| p.leader == Some(2)));
    assert_eq!(c.broker(1).create_calls, 1);
    assert_eq!(c.broker(2).create_calls, 1);

    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].partitions, 3);
    let d = client.describe_topic("orders").await.unwrap();
    assert_eq!(d.partitions.len(), 3);
    let e = client.describe_topic("missing").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));

    let cluster = client.describe_cluster().await.unwrap();
    assert_eq!(cluster.brokers.len(), 2);
    assert_eq!(cluster.metadata_leader, Some(1));
    assert!(cluster.answered_by.is_some());
    let json = serde_json::to_value(&cluster).unwrap();
    assert_eq!(json["topics"][0]["name"], "orders");
    assert_eq!(json["brokers"][0]["zone"], "z0");

    // Local checks refuse junk before sending.
    let e = client.create_topic("bad name", 1, 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    let e = client.create_topic("x", 0, 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    assert_eq!(c.broker(1).create_calls + c.broker(2).create_calls, 2);
}

#[tokio::test]
async fn connect_fails_clearly_when_nothing_listens() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = Client::connect_with(
        &addr.to_string(),
        ClientConfig { connect_timeout: Duration::from_millis(200), ..config() },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(!e.is_indeterminate());
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    let e = Client::connect("no-port").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
}

#[tokio::test]
async fn leader_changed_is_indeterminate_and_retried_only_when_opted_in() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 1, 1, &[1]));
    let client = c.client().await;
    c.broker(1).produce.push_back(fail(ErrorCode::LeaderChanged));
    let careful =
        client.producer("t", ProducerConfig { idempotent: false, retry_indeterminate: false, ..Default::default() });
    let e = careful.send_to(0, Record::value("a")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LeaderChanged));
    assert!(e.is_indeterminate());
    assert_eq!(c.broker(1).produce_calls, 1);

    c.broker(1).produce.push_back(fail(ErrorCode::LeaderChanged));
    client.producer("t", ProducerConfig::default()).send_to(0, Record::value("b")).await.unwrap();
    assert_eq!(c.broker(1).produce_calls, 3);

    // Reads are always retried.
    c.broker(1).fetch.push_back(fail(ErrorCode::Timeout));
    let mut consumer = client.consumer("t", 0, StartAt::Beginning).await.unwrap();
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 1);
}

/// With a zone, a consumer reads from the replica in its zone (asking it to serve as a
/// follower), falls back to the leader when that fails and stays there for a while;
/// produce still goes to the leader.
#[tokio::test]
async fn a_zoned_consumer_fetches_from_its_zone_and_falls_back_to_the_leader() {
    let c = Cluster::start(3, None).await;
    // Broker 1 leads, in zone z0; broker 2 is a replica in zone z1.
    c.add_topic(topic("t", 1, 1, &[1, 2]));
    let client = c.client_with(ClientConfig { zone: Some("z1".into()), ..config() }).await;
    let p = client.producer("t", ProducerConfig::default());
    p.send_batch(0, (0..4).map(|i| Record::value(format!("r{i}"))).collect()).await.unwrap();
    assert_eq!((c.broker(1).produce_calls, c.broker(2).produce_calls), (1, 0), "produce goes to the leader");
    let (log, next) = {
        let b1 = c.broker(1);
        (b1.log.clone(), b1.next_offset)
    };
    {
        let mut b2 = c.broker(2);
        b2.log = log;
        b2.next_offset = next;
    }

    let mut consumer = client.consumer("t", 0, StartAt::Offset(0)).await.unwrap();
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 4);
    assert_eq!(c.broker(2).fetch_from_follower, vec![true]);
    assert_eq!(c.broker(1).fetch_calls, 0);

    // The replica fails: this poll is answered by the leader, and so is the next.
    c.broker(2).fetch.push_back(fail(ErrorCode::OffsetOutOfRange));
    consumer.seek(2);
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 2);
    consumer.seek(3);
    assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 1);
    assert_eq!(c.broker(2).fetch_calls, 2);
    assert_eq!(c.broker(1).fetch_from_follower, vec![false, false], "the leader is asked as the leader");

    // A consumer in the leader's zone, or in a zone without a replica, reads from the leader.
    for zone in ["z0", "z2"] {
        let client = c.client_with(ClientConfig { zone: Some(zone.into()), ..config() }).await;
        let mut consumer = client.consumer("t", 0, StartAt::Offset(0)).await.unwrap();
        assert_eq!(consumer.poll(Duration::from_millis(10)).await.unwrap().len(), 4);
    }
    assert_eq!(c.broker(1).fetch_calls, 4);
    assert_eq!(c.broker(3).fetch_calls, 0);
}

/// Cluster operations are checked before anything is sent, and a node that does not know
/// an operation is a definite gRPC refusal.
#[tokio::test]
async fn cluster_operations_are_checked_then_sent() {
    let c = Cluster::start(1, None).await;
    let client = c.client().await;
    let e = client.reassign("t", 0, &[1, 1]).await.unwrap_err();
    assert!(matches!(e, ClientError::Refused { code: ErrorCode::InvalidRequest, .. }), "{e:?}");
    assert!(e.to_string().contains("listed twice"), "{e}");
    assert!(client.set_controllers(&[1, 2, 3, 4, 5, 6, 7, 8]).await.is_err());
    assert!(client.drain_node(0).await.is_err());
    let e = client.drain_node(3).await.unwrap_err();
    assert!(matches!(e, ClientError::Rpc { code: tonic::Code::Unimplemented, .. }), "{e:?}");
    assert!(!e.is_indeterminate());
}

/// The producer's buffer bounds what is queued and unanswered: `try_send` fails at once
/// with `BufferFull` (nothing queued) while it is full, `flush` sends what lingers and
/// returns once everything queued before it is answered, and the room comes back.
#[tokio::test]
async fn a_full_buffer_refuses_try_send_and_flush_waits_for_everything_queued() {
    let c = Cluster::start(1, None).await;
    c.add_topic(topic("t", 2, 1, &[1]));
    c.broker(1).produce.push_back(Act::Stall(Duration::from_millis(300)));
    let client = c.client().await;
    let config = ProducerConfig { buffer_bytes: 3000, linger: Duration::from_secs(3600), ..ProducerConfig::default() };
    let producer = client.producer("t", config);
    let value = || Record::value(vec![b'v'; 1400]);
    let first = producer.enqueue_to(0, value()).await.unwrap();
    let second = producer.try_send_to(1, value()).await.expect("room for a second");
    let e = producer.try_send_to(0, value()).await.unwrap_err();
    assert!(matches!(e, flotilla_client::ClientError::BufferFull { limit: 3000, .. }), "{e:?}");
    assert!(!e.is_indeterminate());
    assert!(producer.buffered_bytes() > 2800, "{}", producer.buffered_bytes());

    // The records linger (an hour): flush sends them and waits for both answers.
    let started = tokio::time::Instant::now();
    producer.flush().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "flush does not wait for the linger");
    assert_eq!(producer.buffered_bytes(), 0);
    // (The scripted broker numbers offsets across its partitions.)
    assert_eq!(first.await.unwrap().0, 0);
    assert_eq!(second.await.unwrap().0, 1);
    let again = producer.try_send_to(0, value()).await.expect("room again");
    producer.flush().await.unwrap();
    again.await.unwrap();
    assert_eq!(c.broker(1).produce_calls, 3, "nothing was queued by the refused try_send");
}
