//! The gRPC servers of one node: the client listener (client API, admin API,
//! reflection) and the node-to-node listener (Raft messages and forwarded writes, with
//! mutual TLS when the node has certificates: `crate::tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_node::{ApiError, Node, QuotaKind};
use flotilla_proto::raft::v1 as raftpb;
use flotilla_proto::{request, v1};
use flotilla_raft::RaftTransport;
use flotilla_types::acl::{Access, Operation as Op, Principal};
use flotilla_types::limits;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::convert;
use crate::tls::NodeTls;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server failed: {0}")]
    Serve(String),
}

struct ClientApi<T: RaftTransport> {
    node: Node<T>,
    auth: Arc<Authenticator>,
}

struct AdminApi<T: RaftTransport> {
    node: Node<T>,
    auth: Arc<Authenticator>,
}

struct RaftApi<T: RaftTransport> {
    node: Node<T>,
    /// With node-to-node TLS: every message's sender must be the node its connection's
    /// certificate names.
    tls: Option<Arc<NodeTls>>,
}

/// A response with the in-band error every Flotilla answer carries.
trait Answer: Sized {
    fn error(&self) -> Option<&v1::Error>;
    /// The answer to a refused request: the error and nothing else.
    fn refused(error: v1::Error) -> Self;
}

macro_rules! answers {
    ($($t:ty),* $(,)?) => {
        $(impl Answer for $t {
            fn error(&self) -> Option<&v1::Error> {
                self.error.as_ref()
            }
            // Some answers have no field but the error.
            #[allow(clippy::needless_update)]
            fn refused(error: v1::Error) -> Self {
                Self { error: Some(error), ..Default::default() }
            }
        })*
    };
}

answers!(
    v1::ProduceResponse,
    v1::InitProducerResponse,
    v1::FetchResponse,
    v1::ListOffsetsResponse,
    v1::DeleteRecordsResponse,
    v1::CreateTopicResponse,
    v1::DeleteTopicResponse,
    v1::ListTopicsResponse,
    v1::DescribeTopicResponse,
    v1::DescribeClusterResponse,
    v1::AddNodeResponse,
    v1::DrainNodeResponse,
    v1::RemoveNodeResponse,
    v1::ReplaceNodeResponse,
    v1::ReassignResponse,
    v1::TransferLeaderResponse,
    v1::CancelMoveResponse,
    v1::BalanceResponse,
    v1::PlanResponse,
    v1::ListMovesResponse,
    v1::SetTopicConfigResponse,
    v1::AddPartitionsResponse,
    v1::DescribeControllersResponse,
    v1::SetControllersResponse,
    v1::GroupHeartbeatResponse,
    v1::CommitOffsetsResponse,
    v1::ListGroupsResponse,
    v1::DescribeGroupResponse,
    v1::DeleteGroupResponse,
    v1::ResetOffsetsResponse,
    v1::ShareHeartbeatResponse,
    v1::ShareAcquireResponse,
    v1::ShareAckResponse,
    v1::CreateUserResponse,
    v1::DeleteUserResponse,
    v1::ListUsersResponse,
    v1::AclResponse,
    v1::ListAclsResponse,
    v1::SetQuotaResponse,
    v1::ListQuotasResponse,
);

/// The outcome label of a request's latency: `ok` or the error code's name.
fn outcome(error: Option<&v1::Error>) -> &'static str {
    match error {
        Some(e) if !e.is_none() => e.error_code().name(),
        _ => "ok",
    }
}

/// Records how long `method` took and how it ended, and answers with `resp`.
fn timed<T: RaftTransport, R: Answer>(
    node: &Node<T>,
    method: &'static str,
    started: Instant,
    resp: R,
) -> Result<Response<R>, Status> {
    node.metrics().observe(method, outcome(resp.error()), started.elapsed());
    Ok(Response::new(resp))
}

/// What a request that needs `alter` on the cluster needs.
fn alter_cluster<P>(_: &P) -> Vec<Access> {
    vec![Access::cluster(Op::Alter)]
}

/// What a request that needs `describe` on the cluster needs.
fn describe_cluster<P>(_: &P) -> Vec<Access> {
    vec![Access::cluster(Op::Describe)]
}

/// `read` on a group, and `op` on each topic named (once each).
fn group_and_topics<'a>(group: &str, topics: impl IntoIterator<Item = &'a String>, op: Op) -> Vec<Access> {
    let topics: std::collections::BTreeSet<&String> = topics.into_iter().collect();
    std::iter::once(Access::group(group, Op::Read)).chain(topics.into_iter().map(|t| Access::topic(t, op))).collect()
}

/// Who sent `req`, and whether they may have `needs`: the principal, or the error to
/// answer with (wrong credentials, none while authorization is on, no ACL).
fn admit<T: RaftTransport, Q>(
    node: &Node<T>,
    auth: &Authenticator,
    req: &Request<Q>,
    needs: &[Access],
) -> Result<Principal, v1::Error> {
    let who = auth.principal(node, req)?;
    node.authorize(&who, needs).map_err(|e| convert::error(&e))?;
    Ok(who)
}

/// Authenticates a request, decodes it into `P`, checks that its principal may have
/// what `needs` says `P` needs, runs it, and answers, recording the latency under
/// `method`. A request refused on the way is answered with the reason, and not run.
async fn handle<T, Q, P, R, Fut>(
    node: &Node<T>,
    auth: &Authenticator,
    method: &'static str,
    req: Request<Q>,
    needs: impl FnOnce(&P) -> Vec<Access>,
    run: impl FnOnce(P) -> Fut,
) -> Result<Response<R>, Status>
where
    T: RaftTransport,
    P: TryFrom<Q, Error = v1::Error>,
    R: Answer,
    Fut: std::future::Future<Output = R>,
{
    handle_waiting(node, auth, method, req, needs, move |p, _| async move { (run(p).await, Duration::ZERO) }).await
}

/// [`handle`] for a request whose answer may wait (a long poll for data, a quota's hold)
/// or that needs its principal (quotas): `run` also says how long it waited, which is
/// not part of the time recorded under `method`.
async fn handle_waiting<T, Q, P, R, Fut>(
    node: &Node<T>,
    auth: &Authenticator,
    method: &'static str,
    req: Request<Q>,
    needs: impl FnOnce(&P) -> Vec<Access>,
    run: impl FnOnce(P, Principal) -> Fut,
) -> Result<Response<R>, Status>
where
    T: RaftTransport,
    P: TryFrom<Q, Error = v1::Error>,
    R: Answer,
    Fut: std::future::Future<Output = (R, Duration)>,
{
    let started = Instant::now();
    let admitted = auth.principal(node, &req).and_then(|who| {
        let p = P::try_from(req.into_inner())?;
        node.authorize(&who, &needs(&p)).map_err(|e| convert::error(&e))?;
        Ok((p, who))
    });
    let (resp, waited) = match admitted {
        Ok((p, who)) => run(p, who).await,
        Err(e) => (R::refused(e), Duration::ZERO),
    };
    node.metrics().observe(method, outcome(resp.error()), started.elapsed().saturating_sub(waited));
    Ok(Response::new(resp))
}

/// The name quotas charge: the proven user, else the client id the request claims.
fn quota_principal<'a>(who: &'a Principal, client_id: &'a str) -> &'a str {
    match who {
        Principal::User(name) => name,
        Principal::Anonymous => client_id,
    }
}

/// The answer `ok` makes of a node call's value, or the call's error.
fn answer<V, R: Answer>(r: Result<V, ApiError>, ok: impl FnOnce(V) -> R) -> R {
    match r {
        Ok(v) => ok(v),
        Err(e) => R::refused(convert::error(&e)),
    }
}

#[tonic::async_trait]
impl<T: RaftTransport> v1::flotilla_server::Flotilla for ClientApi<T> {
    async fn produce(&self, req: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        // An answer held back for a quota is not part of the time to serve.
        handle_waiting(
            &self.node,
            &self.auth,
            "produce",
            req,
            |r: &request::Produce| vec![Access::topic(&r.topic, Op::Write)],
            |r: request::Produce, who| async move {
                let bytes = r.batch.bytes().len() as u64;
                let produced = self.node.produce_with(&r.topic, r.partition, r.batch, r.acks).await;
                let appended = if produced.is_ok() { bytes } else { 0 };
                let mut resp = answer(produced, |p| v1::ProduceResponse {
                    error: None,
                    base_offset: p.base_offset,
                    record_count: p.records,
                    duplicate: p.duplicate,
                    acks: request::acks_to_wire(p.acks),
                    throttle_time_ms: 0,
                });
                let held =
                    self.node.throttle(quota_principal(&who, &r.client_id), QuotaKind::ProduceBytes, appended).await;
                resp.throttle_time_ms = held.as_millis() as u32;
                (resp, held)
            },
        )
        .await
    }

    async fn init_producer(
        &self,
        req: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "init_producer",
            req,
            |_: &request::InitProducer| vec![],
            |r: request::InitProducer| async move {
                answer(self.node.init_producer(r.name).await, |(producer_id, epoch)| v1::InitProducerResponse {
                    error: None,
                    producer_id,
                    producer_epoch: u32::from(epoch),
                })
            },
        )
        .await
    }

    async fn group_heartbeat(
        &self,
        req: Request<v1::GroupHeartbeatRequest>,
    ) -> Result<Response<v1::GroupHeartbeatResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "group_heartbeat",
            req,
            |r: &request::GroupHeartbeat| group_and_topics(&r.group, r.topics.iter(), Op::Describe),
            |r: request::GroupHeartbeat| async move {
                answer(self.node.group_heartbeat(r).await, |a| v1::GroupHeartbeatResponse {
                    error: None,
                    member_epoch: a.epoch,
                    heartbeat_interval_ms: a.interval_ms,
                    assigned: a
                        .assigned
                        .into_iter()
                        .map(|g| v1::AssignedPartition {
                            topic: g.partition.0,
                            partition: g.partition.1,
                            granted_epoch: g.epoch,
                            has_committed: g.committed.is_some(),
                            committed_offset: g.committed.unwrap_or(0),
                        })
                        .collect(),
                    revoking: a.revoking.into_iter().map(topic_partition).collect(),
                })
            },
        )
        .await
    }

    async fn commit_offsets(
        &self,
        req: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "commit_offsets",
            req,
            |r: &request::CommitOffsets| group_and_topics(&r.group, r.offsets.iter().map(|((t, _), _, _)| t), Op::Read),
            |r: request::CommitOffsets| async move {
                answer(self.node.commit_offsets(&r.group, r.member, r.offsets).await, |c| v1::CommitOffsetsResponse {
                    error: None,
                    committed: c
                        .into_iter()
                        .map(|((topic, partition), offset)| v1::OffsetCommit {
                            topic,
                            partition,
                            offset,
                            metadata: String::new(),
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn share_heartbeat(
        &self,
        req: Request<v1::ShareHeartbeatRequest>,
    ) -> Result<Response<v1::ShareHeartbeatResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "share_heartbeat",
            req,
            |r: &request::ShareHeartbeat| group_and_topics(&r.group, r.topics.iter(), Op::Describe),
            |r: request::ShareHeartbeat| async move {
                answer(self.node.share_heartbeat(r).await, |beat| v1::ShareHeartbeatResponse {
                    error: None,
                    heartbeat_interval_ms: beat.interval_ms,
                    config: Some(request::share_config_to_wire(&beat.config)),
                    redeliver: beat
                        .redeliver
                        .into_iter()
                        .map(|((topic, partition), offset)| v1::ShareNext { topic, partition, offset })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn share_acquire(
        &self,
        req: Request<v1::ShareAcquireRequest>,
    ) -> Result<Response<v1::ShareAcquireResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "share_acquire",
            req,
            |r: &request::ShareAcquire| group_and_topics(&r.group, [&r.partition.0], Op::Read),
            |r: request::ShareAcquire| async move {
                answer(self.node.share_acquire(r).await, |(granted, next)| v1::ShareAcquireResponse {
                    error: None,
                    granted: granted
                        .into_iter()
                        .map(|g| v1::ShareGrant {
                            offset: g.offset,
                            deliveries: g.deliveries,
                            dead_letter: g.dead,
                            error: g.error,
                        })
                        .collect(),
                    next_offset: next,
                })
            },
        )
        .await
    }

    async fn share_ack(&self, req: Request<v1::ShareAckRequest>) -> Result<Response<v1::ShareAckResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "share_ack",
            req,
            |r: &request::ShareAcks| group_and_topics(&r.group, r.acks.iter().map(|((t, _), _, _)| t), Op::Read),
            |r: request::ShareAcks| async move {
                answer(self.node.share_ack(r).await, |refused| v1::ShareAckResponse {
                    error: None,
                    refused: refused
                        .into_iter()
                        .map(|((topic, partition), offset, reason)| v1::ShareAckRefusal {
                            topic,
                            partition,
                            offset,
                            reason,
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn fetch(&self, req: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        // The long poll's wait is not part of the time to serve (it has its own
        // histogram, flotilla_fetch_wait_seconds).
        handle_waiting(
            &self.node,
            &self.auth,
            "fetch",
            req,
            |r: &request::Fetch| vec![Access::topic(&r.topic, Op::Read)],
            |r: request::Fetch, who| async move {
                let fetched =
                    self.node.fetch(&r.topic, r.partition, r.offset, r.max_bytes, r.max_wait, r.from_follower).await;
                let waited = fetched.as_ref().map_or(Duration::ZERO, |f| f.waited);
                let mut resp = answer(fetched, |f| v1::FetchResponse {
                    error: None,
                    high_watermark: f.high_watermark,
                    log_start_offset: f.log_start_offset,
                    batches: f
                        .batches
                        .into_iter()
                        .map(|b| v1::FetchedBatch { base_offset: b.base_offset, batch: b.batch })
                        .collect(),
                    throttle_time_ms: 0,
                });
                let bytes = resp.batches.iter().map(|b| b.batch.len() as u64).sum();
                let held = self.node.throttle(quota_principal(&who, &r.client_id), QuotaKind::FetchBytes, bytes).await;
                resp.throttle_time_ms = held.as_millis() as u32;
                (resp, waited + held)
            },
        )
        .await
    }

    async fn list_offsets(
        &self,
        req: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "list_offsets",
            req,
            |r: &request::ListOffsets| vec![Access::topic(&r.topic, Op::Describe)],
            |r: request::ListOffsets| async move {
                let answered = async {
                    let (earliest, latest) = self.node.list_offsets(&r.topic, r.partition).await?;
                    let offset_for_time = match r.timestamp_ms {
                        Some(t) => Some(self.node.offset_for_time(&r.topic, r.partition, t).await?),
                        None => None,
                    };
                    Ok((earliest, latest, offset_for_time))
                };
                answer(answered.await, |(earliest, latest, offset_for_time)| v1::ListOffsetsResponse {
                    error: None,
                    earliest,
                    latest,
                    offset_for_time,
                })
            },
        )
        .await
    }

    async fn delete_records(
        &self,
        req: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "delete_records",
            req,
            |r: &request::DeleteRecords| vec![Access::topic(&r.topic, Op::Delete)],
            |r: request::DeleteRecords| async move {
                answer(self.node.delete_records(&r.topic, r.partition, r.before).await, |log_start_offset| {
                    v1::DeleteRecordsResponse { error: None, log_start_offset }
                })
            },
        )
        .await
    }

    async fn metadata(&self, req: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        let started = Instant::now();
        // A metadata answer has no error field of its own: wrong credentials are a gRPC
        // UNAUTHENTICATED, junk an INVALID_ARGUMENT; a topic the principal may not
        // describe is answered NOT_AUTHORIZED in its own entry, and left out of a
        // listing of every topic.
        // With authorization on, a request without identity learns nothing, brokers
        // included.
        let who = match admit(&self.node, &self.auth, &req, &[]) {
            Ok(who) => who,
            Err(e) => {
                self.node.metrics().observe("metadata", outcome(Some(&e)), started.elapsed());
                return Err(Status::unauthenticated(e.message));
            }
        };
        let r = match request::MetadataQuery::try_from(req.into_inner()) {
            Ok(r) => r,
            Err(e) => {
                self.node.metrics().observe("metadata", outcome(Some(&e)), started.elapsed());
                return Err(Status::invalid_argument(e.message));
            }
        };
        let (brokers, topics, leader) = self.node.metadata(&r.topics);
        let listing = r.topics.is_empty();
        let topics = topics
            .into_iter()
            .zip(r.topics.iter().map(Some).chain(std::iter::repeat(None)))
            .filter_map(|(t, name)| match (name, t) {
                (Some(n), _) if !listing && !self.node.may(&who, &Access::topic(n, Op::Describe)) => {
                    let refused = self.node.authorize(&who, &[Access::topic(n, Op::Describe)]).err();
                    Some((Err(refused.expect("may said no")), name))
                }
                (_, Ok(t)) if listing && !self.node.may(&who, &Access::topic(&t.name, Op::Describe)) => None,
                (_, t) => Some((t, name)),
            })
            .map(|(t, name)| match t {
                Ok(t) => convert::topic(&t),
                Err(e) => v1::TopicMetadata {
                    name: name.cloned().unwrap_or_default(),
                    error: Some(convert::error(&e)),
                    ..Default::default()
                },
            })
            .collect();
        self.node.metrics().observe("metadata", "ok", started.elapsed());
        Ok(Response::new(v1::MetadataResponse {
            brokers: brokers.iter().map(convert::broker).collect(),
            topics,
            metadata_leader_id: leader.unwrap_or(0),
        }))
    }
}

#[tonic::async_trait]
impl<T: RaftTransport> v1::admin_server::Admin for AdminApi<T> {
    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "create_topic",
            req,
            |r: &request::CreateTopic| vec![Access::topic(&r.name, Op::Create)],
            |r: request::CreateTopic| async move {
                answer(self.node.create_topic(&r.name, r.partitions, r.replication_factor, r.policy).await, |t| {
                    v1::CreateTopicResponse { error: None, topic: Some(convert::topic(&t)) }
                })
            },
        )
        .await
    }

    async fn delete_topic(
        &self,
        req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "delete_topic",
            req,
            |r: &request::TopicName| vec![Access::topic(&r.0, Op::Delete)],
            |request::TopicName(name)| async move {
                answer(self.node.delete_topic(&name).await, |()| v1::DeleteTopicResponse::default())
            },
        )
        .await
    }

    async fn list_topics(
        &self,
        req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let started = Instant::now();
        // Only the topics the principal may describe.
        let who = match admit(&self.node, &self.auth, &req, &[]) {
            Ok(who) => who,
            Err(e) => return timed(&self.node, "list_topics", started, v1::ListTopicsResponse::refused(e)),
        };
        let topics = self
            .node
            .list_topics()
            .into_iter()
            .filter(|(name, _, _)| self.node.may(&who, &Access::topic(name, Op::Describe)))
            .map(|(name, partitions, replication_factor)| v1::TopicSummary { name, partitions, replication_factor })
            .collect();
        timed(&self.node, "list_topics", started, v1::ListTopicsResponse { error: None, topics })
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "describe_topic",
            req,
            |r: &request::TopicName| vec![Access::topic(&r.0, Op::Describe)],
            |request::TopicName(name)| async move {
                answer(self.node.describe_topic(&name), |t| v1::DescribeTopicResponse {
                    error: None,
                    topic: Some(convert::topic(&t)),
                })
            },
        )
        .await
    }

    async fn describe_cluster(
        &self,
        req: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Describe)]) {
            return timed(&self.node, "describe_cluster", started, v1::DescribeClusterResponse::refused(e));
        }
        let c = self.node.describe_cluster();
        let resp = v1::DescribeClusterResponse {
            error: None,
            brokers: c.brokers.iter().map(convert::broker).collect(),
            metadata_leader_id: c.metadata_leader.unwrap_or(0),
            topics: c.topics.iter().map(convert::topic).collect(),
            answered_by: c.answered_by,
        };
        timed(&self.node, "describe_cluster", started, resp)
    }

    async fn add_node(&self, req: Request<v1::AddNodeRequest>) -> Result<Response<v1::AddNodeResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "add_node",
            req,
            alter_cluster::<request::AddNode>,
            |r: request::AddNode| async move {
                answer(self.node.add_node(r.id, &r.addr, &r.rpc_addr, r.labels).await, |()| {
                    v1::AddNodeResponse::default()
                })
            },
        )
        .await
    }

    async fn drain_node(&self, req: Request<v1::DrainNodeRequest>) -> Result<Response<v1::DrainNodeResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "drain_node",
            req,
            alter_cluster::<request::DrainNode>,
            |r: request::DrainNode| async move {
                let done = if r.undo { self.node.undrain_node(r.id).await } else { self.node.drain_node(r.id).await };
                answer(done, |()| v1::DrainNodeResponse::default())
            },
        )
        .await
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "remove_node",
            req,
            alter_cluster::<request::NodeRef>,
            |request::NodeRef(id)| async move {
                answer(self.node.remove_node(id).await, |()| v1::RemoveNodeResponse::default())
            },
        )
        .await
    }

    async fn replace_node(
        &self,
        req: Request<v1::ReplaceNodeRequest>,
    ) -> Result<Response<v1::ReplaceNodeResponse>, Status> {
        // Reporting needs `describe` on the cluster, starting one `alter`.
        fn needs(r: &request::ReplaceNode) -> Vec<Access> {
            vec![Access::cluster(if r.status_only { Op::Describe } else { Op::Alter })]
        }
        handle(&self.node, &self.auth, "replace_node", req, needs, |r: request::ReplaceNode| async move {
            answer(self.node.replace_node(r.id, r.status_only).await, |info| v1::ReplaceNodeResponse {
                error: None,
                state: info.state,
                groups_left: info.groups_left,
                metadata_voter: info.metadata_voter,
                first_new_group: info.first_new_group,
            })
        })
        .await
    }

    async fn reassign(&self, req: Request<v1::ReassignRequest>) -> Result<Response<v1::ReassignResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "reassign",
            req,
            alter_cluster::<request::Reassign>,
            |r: request::Reassign| async move {
                answer(self.node.reassign(&r.topic, r.partition, r.replicas).await, |move_id| v1::ReassignResponse {
                    error: None,
                    move_id,
                })
            },
        )
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "transfer_leader",
            req,
            alter_cluster::<request::TransferLeader>,
            |r: request::TransferLeader| async move {
                answer(self.node.transfer_leader(&r.topic, r.partition, r.to).await, |()| {
                    v1::TransferLeaderResponse::default()
                })
            },
        )
        .await
    }

    async fn cancel_move(
        &self,
        req: Request<v1::CancelMoveRequest>,
    ) -> Result<Response<v1::CancelMoveResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "cancel_move",
            req,
            alter_cluster::<request::TopicPartition>,
            |r: request::TopicPartition| async move {
                answer(self.node.cancel_move(&r.topic, r.partition).await, |()| v1::CancelMoveResponse::default())
            },
        )
        .await
    }

    async fn balance(&self, req: Request<v1::BalanceRequest>) -> Result<Response<v1::BalanceResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Alter)]) {
            return timed(&self.node, "balance", started, v1::BalanceResponse::refused(e));
        }
        let resp = answer(self.node.balance_now().await, |p| v1::BalanceResponse {
            error: None,
            plan: Some(convert::plan(&p)),
        });
        timed(&self.node, "balance", started, resp)
    }

    async fn plan(&self, req: Request<v1::PlanRequest>) -> Result<Response<v1::PlanResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "plan",
            req,
            describe_cluster::<request::PlanScenario>,
            |s: request::PlanScenario| async move {
                answer(self.node.plan(&s), |p| v1::PlanResponse { error: None, plan: Some(convert::plan(&p)) })
            },
        )
        .await
    }

    async fn list_moves(&self, req: Request<v1::ListMovesRequest>) -> Result<Response<v1::ListMovesResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Describe)]) {
            return timed(&self.node, "list_moves", started, v1::ListMovesResponse::refused(e));
        }
        let moves = self.node.moves().iter().map(convert::move_info).collect();
        timed(
            &self.node,
            "list_moves",
            started,
            v1::ListMovesResponse { error: None, moves, answered_by: self.node.id() },
        )
    }

    async fn set_topic_config(
        &self,
        req: Request<v1::SetTopicConfigRequest>,
    ) -> Result<Response<v1::SetTopicConfigResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "set_topic_config",
            req,
            |r: &request::TopicConfig| vec![Access::topic(&r.name, Op::Alter)],
            |r: request::TopicConfig| async move {
                let done = async {
                    // A merge applies to the topic's config as this node's metadata has it.
                    let (rf, current) = self.node.topic_config(&r.name)?;
                    let (rf, policy) = r.merged(rf, &current);
                    self.node.set_topic_config(&r.name, rf, policy).await
                };
                answer(done.await, |()| v1::SetTopicConfigResponse::default())
            },
        )
        .await
    }

    async fn add_partitions(
        &self,
        req: Request<v1::AddPartitionsRequest>,
    ) -> Result<Response<v1::AddPartitionsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "add_partitions",
            req,
            |r: &request::AddPartitions| vec![Access::topic(&r.name, Op::Alter)],
            |r: request::AddPartitions| async move {
                answer(self.node.add_partitions(&r.name, r.total).await, |()| v1::AddPartitionsResponse::default())
            },
        )
        .await
    }

    async fn describe_controllers(
        &self,
        req: Request<v1::DescribeControllersRequest>,
    ) -> Result<Response<v1::DescribeControllersResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Describe)]) {
            return timed(&self.node, "describe_controllers", started, v1::DescribeControllersResponse::refused(e));
        }
        let controllers = Some(convert::controllers(&self.node.controllers()));
        timed(&self.node, "describe_controllers", started, v1::DescribeControllersResponse { error: None, controllers })
    }

    async fn set_controllers(
        &self,
        req: Request<v1::SetControllersRequest>,
    ) -> Result<Response<v1::SetControllersResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "set_controllers",
            req,
            alter_cluster::<request::SetControllers>,
            |r: request::SetControllers| async move {
                answer(self.node.set_controllers(r.voters).await, |c| v1::SetControllersResponse {
                    error: None,
                    controllers: Some(convert::controllers(&c)),
                })
            },
        )
        .await
    }

    async fn list_groups(
        &self,
        req: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let started = Instant::now();
        // Only the groups the principal may describe.
        let who = match admit(&self.node, &self.auth, &req, &[]) {
            Ok(who) => who,
            Err(e) => return timed(&self.node, "list_groups", started, v1::ListGroupsResponse::refused(e)),
        };
        let both = self.node.list_groups().and_then(|c| Ok((c, self.node.list_share_groups()?)));
        let resp = answer(both, |(consumers, sharers)| {
            let mut groups: Vec<v1::GroupSummary> = consumers
                .into_iter()
                .map(|(name, g)| v1::GroupSummary {
                    name,
                    members: g.members.len() as u32,
                    epoch: g.epoch,
                    assignor: g.assignor.name().to_string(),
                    kind: "consumer".into(),
                })
                .chain(sharers.into_iter().map(|(name, g)| v1::GroupSummary {
                    name,
                    members: g.members.len() as u32,
                    epoch: 0,
                    assignor: String::new(),
                    kind: "share".into(),
                }))
                .collect();
            groups.retain(|g| self.node.may(&who, &Access::group(&g.name, Op::Describe)));
            groups.sort_by(|a, b| a.name.cmp(&b.name));
            v1::ListGroupsResponse { error: None, groups }
        });
        timed(&self.node, "list_groups", started, resp)
    }

    async fn describe_group(
        &self,
        req: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "describe_group",
            req,
            |r: &request::GroupName| vec![Access::group(&r.0, Op::Describe)],
            |request::GroupName(name): request::GroupName| async move {
                match self.node.describe_share_group(&name) {
                    Ok(Some((g, members))) => return describe_share_group(name, g, members),
                    Ok(None) => {}
                    Err(e) => return v1::DescribeGroupResponse::refused(convert::error(&e)),
                }
                answer(self.node.describe_group(&name), |(g, members)| v1::DescribeGroupResponse {
                    error: None,
                    group: name.clone(),
                    epoch: g.epoch,
                    assignor: g.assignor.name().to_string(),
                    members: members
                        .into_iter()
                        .map(|m| v1::GroupMember {
                            revoking: m.member.revoking().cloned().map(topic_partition).collect(),
                            member_id: m.id,
                            client_id: m.member.client,
                            zone: m.member.zone,
                            member_epoch: m.member.epoch,
                            topics: m.member.topics.into_iter().collect(),
                            assigned: m.member.assigned.into_keys().map(topic_partition).collect(),
                            session_timeout_ms: m.member.session_timeout_ms,
                            heard_ms_ago: m.heard_ago.map_or(0, |d| d.as_millis() as u64),
                        })
                        .collect(),
                    offsets: g
                        .offsets
                        .into_iter()
                        .map(|((topic, partition), c)| v1::OffsetCommit {
                            topic,
                            partition,
                            offset: c.offset,
                            metadata: c.metadata,
                        })
                        .collect(),
                    kind: "consumer".into(),
                    ..Default::default()
                })
            },
        )
        .await
    }

    async fn delete_group(
        &self,
        req: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "delete_group",
            req,
            |r: &request::GroupName| vec![Access::group(&r.0, Op::Delete)],
            |request::GroupName(name): request::GroupName| async move {
                answer(self.node.delete_group(&name).await, |()| v1::DeleteGroupResponse::default())
            },
        )
        .await
    }

    async fn reset_offsets(
        &self,
        req: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "reset_offsets",
            req,
            |r: &request::ResetOffsets| group_and_topics(&r.group, r.offsets.iter().map(|((t, _), _)| t), Op::Read),
            |r: request::ResetOffsets| async move {
                answer(self.node.reset_offsets(&r.group, r.offsets).await, |()| v1::ResetOffsetsResponse::default())
            },
        )
        .await
    }

    async fn create_user(
        &self,
        req: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "create_user",
            req,
            alter_cluster::<request::CreateUser>,
            |r: request::CreateUser| async move {
                // The salted hash is made here; the password goes no further than this node.
                let credential = crate::auth::credential(&r.password);
                answer(self.node.put_user(&r.name, credential, false).await, |()| v1::CreateUserResponse::default())
            },
        )
        .await
    }

    async fn delete_user(
        &self,
        req: Request<v1::DeleteUserRequest>,
    ) -> Result<Response<v1::DeleteUserResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "delete_user",
            req,
            alter_cluster::<request::UserName>,
            |request::UserName(name)| async move {
                answer(self.node.delete_user(&name).await, |()| v1::DeleteUserResponse::default())
            },
        )
        .await
    }

    async fn list_users(&self, req: Request<v1::ListUsersRequest>) -> Result<Response<v1::ListUsersResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Describe)]) {
            return timed(&self.node, "list_users", started, v1::ListUsersResponse::refused(e));
        }
        let users = self
            .node
            .list_users()
            .into_iter()
            .map(|(name, c)| v1::UserInfo { name, mechanism: crate::auth::MECHANISM.into(), iterations: c.iterations })
            .collect();
        timed(&self.node, "list_users", started, v1::ListUsersResponse { error: None, users })
    }

    async fn add_acl(&self, req: Request<v1::AclRequest>) -> Result<Response<v1::AclResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "add_acl",
            req,
            alter_cluster::<request::AclChange>,
            |request::AclChange(e)| async move { answer(self.node.add_acl(e).await, |()| v1::AclResponse::default()) },
        )
        .await
    }

    async fn remove_acl(&self, req: Request<v1::AclRequest>) -> Result<Response<v1::AclResponse>, Status> {
        handle(&self.node, &self.auth, "remove_acl", req, alter_cluster::<request::AclChange>, |request::AclChange(e)| async move {
            answer(self.node.remove_acl(e).await, |()| v1::AclResponse::default())
        })
        .await
    }

    async fn set_quota(&self, req: Request<v1::SetQuotaRequest>) -> Result<Response<v1::SetQuotaResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "set_quota",
            req,
            alter_cluster::<request::SetQuota>,
            |r: request::SetQuota| async move {
                answer(self.node.set_quota(r.principal, r.limits).await, |()| v1::SetQuotaResponse::default())
            },
        )
        .await
    }

    async fn list_quotas(
        &self,
        req: Request<v1::ListQuotasRequest>,
    ) -> Result<Response<v1::ListQuotasResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = admit(&self.node, &self.auth, &req, &[Access::cluster(Op::Describe)]) {
            return timed(&self.node, "list_quotas", started, v1::ListQuotasResponse::refused(e));
        }
        let (default, each) = self.node.list_quotas();
        let quotas = default
            .iter()
            .map(|l| request::quota_to_wire(None, l))
            .chain(each.iter().map(|(p, l)| request::quota_to_wire(Some(p), l)))
            .collect();
        timed(&self.node, "list_quotas", started, v1::ListQuotasResponse { error: None, quotas })
    }

    async fn list_acls(&self, req: Request<v1::ListAclsRequest>) -> Result<Response<v1::ListAclsResponse>, Status> {
        handle(
            &self.node,
            &self.auth,
            "list_acls",
            req,
            describe_cluster::<request::ListAcls>,
            |r: request::ListAcls| async move {
                let acls = self.node.list_acls(r.principal.as_deref()).iter().map(request::acl_to_wire).collect();
                v1::ListAclsResponse { error: None, acls }
            },
        )
        .await
    }
}

fn describe_share_group(
    name: String,
    g: flotilla_metadata::share::ShareGroup,
    members: Vec<flotilla_node::groups::MemberView>,
) -> v1::DescribeGroupResponse {
    use flotilla_metadata::share::Lock;
    v1::DescribeGroupResponse {
        error: None,
        group: name,
        kind: "share".into(),
        members: members
            .into_iter()
            .map(|m| v1::GroupMember {
                member_id: m.id,
                client_id: m.member.client,
                topics: m.member.topics.into_iter().collect(),
                session_timeout_ms: m.member.session_timeout_ms,
                heard_ms_ago: m.heard_ago.map_or(0, |d| d.as_millis() as u64),
                ..Default::default()
            })
            .collect(),
        share_config: Some(request::share_config_to_wire(&g.config)),
        share_partitions: g
            .partitions
            .into_iter()
            .map(|((topic, partition), p)| {
                let count = |f: &dyn Fn(&flotilla_metadata::share::Tracked) -> bool| {
                    p.records.values().filter(|t| f(t)).count() as u32
                };
                v1::SharePartitionState {
                    topic,
                    partition,
                    start: p.start,
                    end: p.end,
                    held: count(&|t| matches!(t.lock, Lock::Held { .. })),
                    free: count(&|t| t.lock == Lock::Free && !t.dead),
                    dead: count(&|t| t.dead),
                }
            })
            .collect(),
        accepted: g.accepted,
        dead_lettered: g.dead_lettered,
        ..Default::default()
    }
}

fn topic_partition((topic, partition): (String, flotilla_types::PartitionId)) -> v1::TopicPartition {
    v1::TopicPartition { topic, partition }
}

#[tonic::async_trait]
impl<T: RaftTransport> raftpb::raft_server::Raft for RaftApi<T> {
    async fn call(&self, req: Request<raftpb::RaftRequest>) -> Result<Response<raftpb::RaftResponse>, Status> {
        if let Some(tls) = &self.tls {
            let certs = req.peer_certs();
            if let Err(why) = tls.check_sender(certs.as_deref().map(Vec::as_slice), req.get_ref().from_node) {
                self.node.metrics().node_message_refused("sender");
                tracing::warn!(from = req.get_ref().from_node, why, "refused a node-to-node message");
                return Err(Status::permission_denied(why));
            }
        }
        let r = req.into_inner();
        if r.to_node != 0 && r.to_node != self.node.id() {
            self.node.metrics().node_message_refused("recipient");
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}: the sender's address book is out of date",
                self.node.id(),
                r.to_node
            )));
        }
        let payload = self.node.handle_raft(r.from_node, r.group_id, &r.payload).await;
        Ok(Response::new(raftpb::RaftResponse { payload: payload.into() }))
    }
}

/// Serves the client and admin APIs on `listener` until `shutdown` completes (not the
/// node-to-node service: `serve_nodes`), over TLS with `tls` (`tls::client_listener`).
pub async fn serve<T: RaftTransport>(
    node: Node<T>,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, tls = tls.is_some(), "serving clients (gRPC)");
    // serve_with_incoming ignores the builder's nodelay: set it on the incoming stream.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(|e| ServeError::Serve(format!("client TLS: {e}")))?;
    }
    server
        .add_routes(client_routes(&node)?)
        .serve_with_incoming_shutdown(limited(incoming), shutdown)
        .await
        .map_err(|e| ServeError::Serve(e.to_string()))
}

/// Serves the node-to-node service on `listener` until `shutdown` completes: with `tls`,
/// only to connections with a certificate the cluster's authority signed, and only
/// messages from the node that certificate names.
pub async fn serve_nodes<T: RaftTransport>(
    node: Node<T>,
    listener: tokio::net::TcpListener,
    tls: Option<NodeTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        tls = tls.is_some(),
        cluster = tls.as_ref().map(|t| t.cluster()),
        "serving other nodes (gRPC)"
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = node_builder();
    if let Some(tls) = &tls {
        server = server.tls_config(tls.server()).map_err(|e| ServeError::Serve(format!("node-to-node TLS: {e}")))?;
    }
    server
        .add_service(raft_api(&node, tls.map(Arc::new)))
        .serve_with_incoming_shutdown(limited(incoming), shutdown)
        .await
        .map_err(|e| ServeError::Serve(e.to_string()))
}

/// Serves every service of the node, clients' and other nodes', on the connections
/// `incoming` yields until `shutdown` completes, without TLS. The simulator passes the
/// connections of its simulated network.
pub async fn serve_with_incoming<T, S, IO, E>(
    node: Node<T>,
    incoming: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    T: RaftTransport,
    S: futures::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tonic::transport::server::Connected + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    node_builder()
        .add_routes(client_routes(&node)?.add_service(raft_api(&node, None)))
        .serve_with_incoming_shutdown(limited(incoming), shutdown)
        .await
        .map_err(|e| ServeError::Serve(e.to_string()))
}

/// The client listener's services: the client API, the admin API and reflection (both
/// versions: grpcurl and other tools still ask for v1alpha first).
fn client_routes<T: RaftTransport>(node: &Node<T>) -> Result<tonic::service::Routes, ServeError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("flotilla.v1.Flotilla")
        .with_service_name("flotilla.v1.Admin")
        .build_v1()
        .map_err(|e| ServeError::Serve(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("flotilla.v1.Flotilla")
        .with_service_name("flotilla.v1.Admin")
        .build_v1alpha()
        .map_err(|e| ServeError::Serve(e.to_string()))?;
    // One authenticator for both services: a password checked by one is remembered by
    // the other.
    let auth = Arc::new(Authenticator::default());
    Ok(tonic::service::Routes::new(client_api(node, auth.clone()))
        .add_service(admin_api(node, auth))
        .add_service(reflection)
        .add_service(reflection_alpha))
}

fn client_api<T: RaftTransport>(
    node: &Node<T>,
    auth: Arc<Authenticator>,
) -> v1::flotilla_server::FlotillaServer<ClientApi<T>> {
    v1::flotilla_server::FlotillaServer::new(ClientApi { node: node.clone(), auth })
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::FETCH_RESPONSE_BYTES_MAX)
}

fn admin_api<T: RaftTransport>(node: &Node<T>, auth: Arc<Authenticator>) -> v1::admin_server::AdminServer<AdminApi<T>> {
    v1::admin_server::AdminServer::new(AdminApi { node: node.clone(), auth })
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
}

fn raft_api<T: RaftTransport>(
    node: &Node<T>,
    tls: Option<Arc<NodeTls>>,
) -> raftpb::raft_server::RaftServer<RaftApi<T>> {
    raftpb::raft_server::RaftServer::new(RaftApi { node: node.clone(), tls })
        .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
}

/// At most `CONNECTIONS_MAX` connections, each greeting within `CONNECTION_GREETING_MS`.
fn limited<S, IO, E>(incoming: S) -> impl futures::Stream<Item = Result<crate::limit::Limited<IO>, E>> + Send + 'static
where
    S: futures::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send + 'static,
    E: Send + 'static,
{
    crate::limit::limit_connections(
        incoming,
        limits::CONNECTIONS_MAX,
        Duration::from_millis(limits::CONNECTION_GREETING_MS),
    )
}

/// [`builder`] for a listener other nodes speak to: it lets them reset more calls before
/// they are accepted (`limits::NODE_RESET_STREAMS_MAX`), and hold more small frames
/// unread (`limits::NODE_CONNECTION_WINDOW_BYTES`).
pub(crate) fn node_builder() -> tonic::transport::Server {
    builder()
        .http2_max_pending_accept_reset_streams(Some(limits::NODE_RESET_STREAMS_MAX))
        .initial_connection_window_size(limits::NODE_CONNECTION_WINDOW_BYTES)
}

/// Every listener's limits: streams per connection, request deadline, keepalive,
/// header size (docs/security.md, "Wire safety").
fn builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
        .concurrency_limit_per_connection(limits::STREAMS_PER_CONNECTION_MAX as usize)
        .timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS))
        .http2_keepalive_interval(Some(Duration::from_millis(limits::KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(limits::KEEPALIVE_TIMEOUT_MS)))
        .http2_max_header_list_size(limits::HEADER_LIST_BYTES_MAX)
}
