//! The gRPC server of one node: client API, admin API, Raft transport, reflection.

use std::net::SocketAddr;

use flotilla_node::Node;
use flotilla_proto::raft::v1 as raftpb;
use flotilla_proto::{request, v1};
use flotilla_raft::RaftTransport;
use flotilla_types::limits;
use tonic::{Request, Response, Status};

use crate::convert;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server failed: {0}")]
    Serve(String),
}

struct ClientApi<T: RaftTransport> {
    node: Node<T>,
}

struct AdminApi<T: RaftTransport> {
    node: Node<T>,
}

struct RaftApi<T: RaftTransport> {
    node: Node<T>,
}

#[tonic::async_trait]
impl<T: RaftTransport> v1::flotilla_server::Flotilla for ClientApi<T> {
    async fn produce(&self, req: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        let r = match request::Produce::try_from(req.into_inner()) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(v1::ProduceResponse { error: Some(e), ..Default::default() })),
        };
        let resp = match self.node.produce(&r.topic, r.partition, r.batch).await {
            Ok((base_offset, record_count)) => v1::ProduceResponse { error: None, base_offset, record_count },
            Err(e) => v1::ProduceResponse { error: Some(convert::error(&e)), ..Default::default() },
        };
        Ok(Response::new(resp))
    }

    async fn fetch(&self, req: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let r = match request::Fetch::try_from(req.into_inner()) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(v1::FetchResponse { error: Some(e), ..Default::default() })),
        };
        let resp = match self.node.fetch(&r.topic, r.partition, r.offset, r.max_bytes, r.max_wait).await {
            Ok(f) => v1::FetchResponse {
                error: None,
                high_watermark: f.high_watermark,
                log_start_offset: f.log_start_offset,
                batches: f
                    .batches
                    .into_iter()
                    .map(|b| v1::FetchedBatch { base_offset: b.base_offset, batch: b.batch })
                    .collect(),
            },
            Err(e) => v1::FetchResponse { error: Some(convert::error(&e)), ..Default::default() },
        };
        Ok(Response::new(resp))
    }

    async fn list_offsets(
        &self,
        req: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let r = match request::TopicPartition::try_from(req.into_inner()) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(v1::ListOffsetsResponse { error: Some(e), ..Default::default() })),
        };
        let resp = match self.node.list_offsets(&r.topic, r.partition).await {
            Ok((earliest, latest)) => v1::ListOffsetsResponse { error: None, earliest, latest },
            Err(e) => v1::ListOffsetsResponse { error: Some(convert::error(&e)), ..Default::default() },
        };
        Ok(Response::new(resp))
    }

    async fn metadata(&self, req: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        // A metadata answer has no error field of its own: junk is a gRPC INVALID_ARGUMENT.
        let r = request::MetadataQuery::try_from(req.into_inner()).map_err(|e| Status::invalid_argument(e.message))?;
        let (brokers, topics, leader) = self.node.metadata(&r.topics);
        let topics = topics
            .into_iter()
            .zip(r.topics.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(t, name)| match t {
                Ok(t) => convert::topic(&t),
                Err(e) => v1::TopicMetadata {
                    name: name.cloned().unwrap_or_default(),
                    error: Some(convert::error(&e)),
                    ..Default::default()
                },
            })
            .collect();
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
        let r = match request::CreateTopic::try_from(req.into_inner()) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(v1::CreateTopicResponse { error: Some(e), topic: None })),
        };
        let resp = match self.node.create_topic(&r.name, r.partitions, r.replication_factor).await {
            Ok(t) => v1::CreateTopicResponse { error: None, topic: Some(convert::topic(&t)) },
            Err(e) => v1::CreateTopicResponse { error: Some(convert::error(&e)), topic: None },
        };
        Ok(Response::new(resp))
    }

    async fn delete_topic(
        &self,
        req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let error = match request::TopicName::try_from(req.into_inner()) {
            Ok(request::TopicName(name)) => self.node.delete_topic(&name).await.err().map(|e| convert::error(&e)),
            Err(e) => Some(e),
        };
        Ok(Response::new(v1::DeleteTopicResponse { error }))
    }

    async fn list_topics(
        &self,
        _req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let topics = self
            .node
            .list_topics()
            .into_iter()
            .map(|(name, partitions, replication_factor)| v1::TopicSummary { name, partitions, replication_factor })
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { error: None, topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = match request::TopicName::try_from(req.into_inner()) {
            Ok(request::TopicName(name)) => name,
            Err(e) => return Ok(Response::new(v1::DescribeTopicResponse { error: Some(e), topic: None })),
        };
        let resp = match self.node.describe_topic(&name) {
            Ok(t) => v1::DescribeTopicResponse { error: None, topic: Some(convert::topic(&t)) },
            Err(e) => v1::DescribeTopicResponse { error: Some(convert::error(&e)), topic: None },
        };
        Ok(Response::new(resp))
    }

    async fn describe_cluster(
        &self,
        _req: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        let c = self.node.describe_cluster();
        Ok(Response::new(v1::DescribeClusterResponse {
            error: None,
            brokers: c.brokers.iter().map(convert::broker).collect(),
            metadata_leader_id: c.metadata_leader.unwrap_or(0),
            topics: c.topics.iter().map(convert::topic).collect(),
            answered_by: c.answered_by,
        }))
    }
}

#[tonic::async_trait]
impl<T: RaftTransport> raftpb::raft_server::Raft for RaftApi<T> {
    async fn call(&self, req: Request<raftpb::RaftRequest>) -> Result<Response<raftpb::RaftResponse>, Status> {
        let r = req.into_inner();
        let payload = self.node.handle_raft(r.from_node, r.group_id, &r.payload).await;
        Ok(Response::new(raftpb::RaftResponse { payload: payload.into() }))
    }
}

/// Serves the node's APIs on `listener` until `shutdown` completes.
pub async fn serve<T: RaftTransport>(
    node: Node<T>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "serving gRPC");
    // serve_with_incoming ignores the builder's nodelay: set it on the incoming stream.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    serve_with_incoming(node, incoming, shutdown).await
}

/// Serves the node's APIs on the connections `incoming` yields until `shutdown`
/// completes. The simulator passes the connections of its simulated network.
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
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Both reflection versions: grpcurl and other tools still ask for v1alpha first.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Serve(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Serve(e.to_string()))?;
    let client = v1::flotilla_server::FlotillaServer::new(ClientApi { node: node.clone() })
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::FETCH_BYTES_MAX + limits::BATCH_BYTES_MAX + 64 * 1024);
    let admin = v1::admin_server::AdminServer::new(AdminApi { node: node.clone() })
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX);
    let raft = raftpb::raft_server::RaftServer::new(RaftApi { node })
        .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(client)
        .add_service(admin)
        .add_service(raft)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ServeError::Serve(e.to_string()))
}
