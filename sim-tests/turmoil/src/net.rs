//! gRPC over turmoil's TCP: the server's incoming connections and the clients' dialer.
//! Everything above the socket (tonic, hyper, h2) is the production code.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use flotilla_proto::Dialer;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The port every simulated node serves on.
pub const PORT: u16 = 7070;

/// An accepted simulated connection, as tonic's server wants it.
pub struct Accepted(turmoil::net::TcpStream);

impl Connected for Accepted {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Accepted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Binds the node's port on the current simulated host and yields its connections.
pub async fn incoming() -> io::Result<impl Stream<Item = io::Result<Accepted>> + Send + 'static> {
    let listener = turmoil::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, PORT)).await?;
    Ok(futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| Accepted(s));
        Some((next, l))
    }))
}

/// Opens channels over the simulated network, resolving host names through turmoil.
pub fn dialer() -> Dialer {
    Arc::new(|endpoint: tonic::transport::Endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: tonic::transport::Uri| async move {
            let host = uri.host().ok_or_else(|| io::Error::other(format!("no host in {uri}")))?.to_string();
            let port = uri.port_u16().unwrap_or(PORT);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
    })
}
