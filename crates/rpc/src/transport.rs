//! Node-to-node Raft messages over gRPC: one lazily connected HTTP/2 channel per peer
//! node, shared by every group (each message carries its group id), over mutual TLS
//! when the node has certificates (`crate::tls`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::AddressBook;
use flotilla_proto::raft::v1::RaftRequest;
use flotilla_proto::raft::v1::raft_client::RaftClient;
use flotilla_raft::{RaftTransport, TransportError};
use flotilla_types::{GroupId, NodeId, limits};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// The channel to one peer: the address it was opened to, the client on it, and when it
/// last brought back an answer (or was opened).
struct Peer {
    addr: String,
    client: RaftClient<Channel>,
    last_answer: Instant,
}

type Channels = BTreeMap<NodeId, Peer>;

/// How long a channel may go without any answer before a timed-out call on it drops it.
/// A single timeout proves little (a slow disk, a long queue, a latency spike), and a
/// redial costs round trips of its own, so dropping on every timeout would keep replacing
/// the channels to a slow peer; a channel silent this long is taken to be half-open.
const SILENT_BEFORE_REDIAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct GrpcTransport {
    me: NodeId,
    addresses: AddressBook,
    channels: Arc<Mutex<Channels>>,
    dialer: Option<flotilla_proto::Dialer>,
    tls: Option<crate::tls::NodeTls>,
}

impl GrpcTransport {
    pub fn new(me: NodeId, addresses: AddressBook) -> GrpcTransport {
        GrpcTransport { me, addresses, channels: Arc::new(Mutex::new(BTreeMap::new())), dialer: None, tls: None }
    }

    /// A transport that reaches its peers over mutual TLS: each peer must present the
    /// certificate of the node it is dialled as, and this node presents its own.
    pub fn with_tls(me: NodeId, addresses: AddressBook, tls: crate::tls::NodeTls) -> GrpcTransport {
        GrpcTransport { tls: Some(tls), ..GrpcTransport::new(me, addresses) }
    }

    /// A transport that opens its connections through `dialer` (the simulator's network).
    pub fn with_dialer(me: NodeId, addresses: AddressBook, dialer: flotilla_proto::Dialer) -> GrpcTransport {
        GrpcTransport { dialer: Some(dialer), ..GrpcTransport::new(me, addresses) }
    }

    fn client(&self, target: NodeId) -> Result<RaftClient<Channel>, TransportError> {
        let addr =
            self.addresses.get(target).ok_or_else(|| TransportError::Unreachable(target, "no address known".into()))?;
        let mut channels = self.channels.lock().expect("channels poisoned");
        if let Some(p) = channels.get(&target)
            && p.addr == addr
        {
            return Ok(p.client.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| TransportError::Unreachable(target, format!("bad address {addr}: {e}")))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client(target))
                .map_err(|e| TransportError::Unreachable(target, format!("TLS to {addr}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(1000))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            // A busy peer answers calls this node gave up on; such answers are dropped,
            // not taken for the peer's protocol errors (which close the connection).
            .http2_max_concurrent_reset_streams(limits::NODE_RESET_CALLS_REMEMBERED)
            .http2_reset_stream_duration(Duration::from_millis(limits::NODE_RESET_CALLS_REMEMBERED_MS))
            .http2_max_local_error_reset_streams(limits::NODE_LATE_FRAMES_MAX)
            .initial_connection_window_size(limits::NODE_CONNECTION_WINDOW_BYTES);
        let client = RaftClient::new(flotilla_proto::dial(endpoint, self.dialer.as_ref()))
            .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX);
        channels.insert(target, Peer { addr, client: client.clone(), last_answer: Instant::now() });
        Ok(client)
    }
}

impl GrpcTransport {
    fn answered(&self, target: NodeId) {
        if let Some(p) = self.channels.lock().expect("channels poisoned").get_mut(&target) {
            p.last_answer = Instant::now();
        }
    }

    /// After a message to `target` got no answer in time: drops the channel if nothing
    /// came back on it for `SILENT_BEFORE_REDIAL`. The connection may be half-open (its
    /// bytes lost while it stays up), and the next message should dial afresh rather than
    /// wait up to ten seconds for HTTP/2 keepalive to notice.
    fn timed_out(&self, target: NodeId) {
        let mut channels = self.channels.lock().expect("channels poisoned");
        if channels.get(&target).is_some_and(|p| p.last_answer.elapsed() >= SILENT_BEFORE_REDIAL) {
            tracing::debug!(peer = target, "no answer on the channel for {SILENT_BEFORE_REDIAL:?}: redialling");
            channels.remove(&target);
        }
    }
}

/// Whether a call failed for want of an answer in time. tonic enforces the request's
/// deadline on the client side and reports it as CANCELLED "Timeout expired"; a server
/// past the deadline answers DEADLINE_EXCEEDED.
fn is_timeout(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::DeadlineExceeded => true,
        tonic::Code::Cancelled => status.message() == tonic::TimeoutExpired(()).to_string(),
        _ => false,
    }
}

/// Whether a call failed because nothing accepted the connection: an I/O error of kind
/// `ConnectionRefused` among the status's causes (the connector's error, under an
/// UNAVAILABLE status). A connection that breaks or is closed, by a peer that exited or
/// by an HTTP/2 error on a busy link, is not a refusal.
fn refused(status: &tonic::Status) -> bool {
    flotilla_proto::status_causes(status).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// A status's message with its innermost cause ("h2 protocol error: http2 error" says
/// little without the reason under it).
fn status_text(status: &tonic::Status) -> String {
    let text = status.message().to_string();
    match flotilla_proto::status_causes(status).last().map(|e| e.to_string()) {
        Some(last) if !text.contains(&last) => format!("{text} ({last})"),
        _ => text,
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
        let mut req = tonic::Request::new(RaftRequest {
            group_id: group,
            from_node: self.me,
            payload: payload.into(),
            to_node: target,
        });
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.call(req)).await {
            Err(_) => {
                self.timed_out(target);
                Err(TransportError::Timeout(target))
            }
            Ok(Err(status)) if is_timeout(&status) => {
                self.timed_out(target);
                Err(TransportError::Timeout(target))
            }
            Ok(Err(status)) if refused(&status) => Err(TransportError::Refused(target, status_text(&status))),
            Ok(Err(status)) => Err(TransportError::Unreachable(target, status_text(&status))),
            Ok(Ok(resp)) => {
                self.answered(target);
                Ok(resp.into_inner().payload.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::raft::v1::raft_server::{Raft, RaftServer};
    use flotilla_proto::raft::v1::{RaftRequest, RaftResponse};

    /// Answers group 1 at once and never answers group 2.
    struct HalfDeaf;

    #[tonic::async_trait]
    impl Raft for HalfDeaf {
        async fn call(&self, req: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftResponse>, tonic::Status> {
            if req.get_ref().group_id == 2 {
                std::future::pending::<()>().await;
            }
            Ok(tonic::Response::new(RaftResponse { payload: req.into_inner().payload }))
        }
    }

    async fn peer() -> (GrpcTransport, NodeId) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder().add_service(RaftServer::new(HalfDeaf)).serve_with_incoming(incoming),
        );
        let book = AddressBook::new();
        book.set(2, addr.to_string());
        (GrpcTransport::new(1, book), 2)
    }

    fn has_channel(t: &GrpcTransport, peer: NodeId) -> bool {
        t.channels.lock().unwrap().contains_key(&peer)
    }

    /// A deadline tonic enforces on the client side (CANCELLED "Timeout expired") is a
    /// timeout like any other: a channel silent for a second is then redialled, while one
    /// that answered recently is kept. Taking it for a refusal once left half-open
    /// connections in use until HTTP/2 keepalive gave up on them (sim seed 614).
    #[tokio::test]
    async fn a_channel_silent_for_a_second_is_redialled_after_a_timeout_and_a_talkative_one_kept() {
        let (t, peer) = peer().await;
        let short = Duration::from_millis(100);
        assert_eq!(t.call(peer, 1, b"hello".to_vec(), Duration::from_secs(5)).await.unwrap(), b"hello");

        let r = t.call(peer, 2, vec![], short).await;
        assert!(matches!(r, Err(TransportError::Timeout(p)) if p == peer), "{r:?}");
        assert!(has_channel(&t, peer), "a timeout right after an answer must not drop the channel");

        tokio::time::sleep(SILENT_BEFORE_REDIAL).await;
        let r = t.call(peer, 2, vec![], short).await;
        assert!(matches!(r, Err(TransportError::Timeout(_))), "{r:?}");
        assert!(!has_channel(&t, peer), "a channel silent for {SILENT_BEFORE_REDIAL:?} must be dropped");

        // The next call dials afresh and is answered.
        assert_eq!(t.call(peer, 1, b"again".to_vec(), Duration::from_secs(5)).await.unwrap(), b"again");
    }

    /// Answers group 1 at once; group 2 never; group 3 after stalling its whole thread
    /// for a second (a node too busy to read its connections).
    struct Stalling;

    #[tonic::async_trait]
    impl Raft for Stalling {
        async fn call(&self, req: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftResponse>, tonic::Status> {
            match req.get_ref().group_id {
                2 => std::future::pending::<()>().await,
                3 => std::thread::sleep(Duration::from_secs(1)),
                _ => {}
            }
            Ok(tonic::Response::new(RaftResponse { payload: req.into_inner().payload }))
        }
    }

    /// A node that a busy peer's listener does not read for a while resets the calls
    /// it stops waiting for, and the peer then finds them reset before it accepted
    /// them. HTTP/2's default allows only 20 such resets before the listener closes the
    /// connection, failing every group's calls on it; thousands of groups electing at
    /// once did that again and again (a topic of 10,000 partitions). The node-to-node
    /// listener allows `NODE_RESET_STREAMS_MAX`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_reset_before_a_busy_node_accepts_them_do_not_close_its_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        // The peer's listener on a thread of its own, so that stalling it stalls all of it.
        #[allow(clippy::disallowed_methods)] // a real thread: the test stalls it
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(listener).unwrap());
                crate::server::node_builder()
                    .add_service(RaftServer::new(Stalling))
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            });
        });
        let book = AddressBook::new();
        book.set(2, addr.to_string());
        let t = GrpcTransport::new(1, book);
        assert_eq!(t.call(2, 1, b"hello".to_vec(), Duration::from_secs(5)).await.unwrap(), b"hello");
        let stall = tokio::spawn({
            let t = t.clone();
            async move { t.call(2, 3, vec![], Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Sent while the peer stalls, and reset before it reads them.
        let calls = (0..100).map(|_| t.call(2, 2, vec![], Duration::from_millis(200)));
        for r in futures::future::join_all(calls).await {
            assert!(matches!(r, Err(TransportError::Timeout(_))), "{r:?}");
        }
        assert!(stall.await.unwrap().is_ok(), "the stalled call is answered");
        assert_eq!(t.call(2, 1, b"again".to_vec(), Duration::from_secs(5)).await.unwrap(), b"again");
    }

    /// Forwards one connection at a time to `to`, passing the answers back `delay` late
    /// (in order), and counts the connections it accepted.
    async fn slow_answers_proxy(to: std::net::SocketAddr, delay: Duration) -> (std::net::SocketAddr, Arc<Mutex<u32>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                let server = tokio::net::TcpStream::connect(to).await.unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut client_rx, &mut server_tx).await });
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    while let Some((at, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(at).await;
                        if client_tx.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A busy peer answers, by the thousand, calls this node has stopped waiting for.
    /// HTTP/2 remembers only 50 reset calls for a second by default, takes an answer to
    /// a forgotten one for the peer's protocol error, and after 1,024 of those closed the
    /// connection, failing every group's calls on it (a topic of 3,000 partitions never
    /// settled). The answers are dropped, and the connection stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_to_calls_given_up_on_do_not_close_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            crate::server::node_builder().add_service(RaftServer::new(HalfDeaf)).serve_with_incoming(incoming),
        );
        let (proxy, accepted) = slow_answers_proxy(server, Duration::from_millis(300)).await;
        let book = AddressBook::new();
        book.set(2, proxy.to_string());
        let t = GrpcTransport::new(1, book);
        assert_eq!(t.call(2, 1, b"hello".to_vec(), Duration::from_secs(5)).await.unwrap(), b"hello");
        for _ in 0..6 {
            // Answered at once by the peer, 300 ms late here: after this node gave up.
            let calls = (0..300).map(|_| t.call(2, 1, vec![], Duration::from_millis(100)));
            for r in futures::future::join_all(calls).await {
                assert!(matches!(r, Err(TransportError::Timeout(_))), "{r:?}");
            }
            assert_eq!(t.call(2, 1, b"again".to_vec(), Duration::from_secs(5)).await.unwrap(), b"again");
        }
        assert_eq!(*accepted.lock().unwrap(), 1, "the connection was closed and dialled again");
    }

    /// A call to an address where nothing listens is a refusal (the node-level heartbeats
    /// count only those toward "down"); one that timed out is not.
    #[tokio::test]
    async fn a_closed_port_is_a_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let book = AddressBook::new();
        book.set(2, addr.to_string());
        let t = GrpcTransport::new(1, book);
        let r = t.call(2, 1, vec![], Duration::from_secs(5)).await;
        assert!(matches!(r, Err(TransportError::Refused(2, _))), "{r:?}");
    }
}
