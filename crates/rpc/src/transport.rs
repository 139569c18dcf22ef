//! Node-to-node Raft messages over gRPC: one lazily connected HTTP/2 channel per peer
//! node, shared by every group (each message carries its group id).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::AddressBook;
use flotilla_proto::raft::v1::RaftRequest;
use flotilla_proto::raft::v1::raft_client::RaftClient;
use flotilla_raft::{RaftTransport, TransportError};
use flotilla_types::{GroupId, NodeId, limits};
use tonic::transport::{Channel, Endpoint};

/// Per peer: the address the channel was opened to, and the client on it.
type Channels = BTreeMap<NodeId, (String, RaftClient<Channel>)>;

#[derive(Clone)]
pub struct GrpcTransport {
    me: NodeId,
    addresses: AddressBook,
    channels: Arc<Mutex<Channels>>,
    dialer: Option<flotilla_proto::Dialer>,
}

impl GrpcTransport {
    pub fn new(me: NodeId, addresses: AddressBook) -> GrpcTransport {
        GrpcTransport { me, addresses, channels: Arc::new(Mutex::new(BTreeMap::new())), dialer: None }
    }

    /// A transport that opens its connections through `dialer` (the simulator's network).
    pub fn with_dialer(me: NodeId, addresses: AddressBook, dialer: flotilla_proto::Dialer) -> GrpcTransport {
        GrpcTransport { dialer: Some(dialer), ..GrpcTransport::new(me, addresses) }
    }

    fn client(&self, target: NodeId) -> Result<RaftClient<Channel>, TransportError> {
        let addr =
            self.addresses.get(target).ok_or_else(|| TransportError::Unreachable(target, "no address known".into()))?;
        let mut channels = self.channels.lock().expect("channels poisoned");
        if let Some((a, c)) = channels.get(&target)
            && *a == addr
        {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TransportError::Unreachable(target, format!("bad address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(1000))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let client = RaftClient::new(flotilla_proto::dial(endpoint, self.dialer.as_ref()))
            .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX);
        channels.insert(target, (addr, client.clone()));
        Ok(client)
    }
}

impl GrpcTransport {
    /// Drops the channel to `target` after a message on it got no answer in time: the
    /// connection may be half-open (its bytes lost while it stays up), and the next
    /// message should dial afresh rather than wait for HTTP/2 keepalive to notice.
    fn forget(&self, target: NodeId) {
        self.channels.lock().expect("channels poisoned").remove(&target);
    }
}

impl RaftTransport for GrpcTransport {
    async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let mut client = self.client(target)?;
        let mut req = tonic::Request::new(RaftRequest { group_id: group, from_node: self.me, payload: payload.into() });
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.call(req)).await {
            Err(_) => {
                self.forget(target);
                Err(TransportError::Timeout(target))
            }
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                self.forget(target);
                Err(TransportError::Timeout(target))
            }
            Ok(Err(status)) => Err(TransportError::Unreachable(target, status.message().to_string())),
            Ok(Ok(resp)) => Ok(resp.into_inner().payload.into()),
        }
    }
}
