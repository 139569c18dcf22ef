//! Server-side connection limits: at most `limits::CONNECTIONS_MAX` open connections per
//! listener (one more is closed as soon as it is accepted), and a connection that sends
//! nothing within `limits::CONNECTION_GREETING_MS` is closed. With the per-connection
//! stream limit, the request timeout and HTTP/2 keepalive (set on the server builder),
//! a slow or silent client cannot pin a node's memory or tasks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// One accepted connection, holding its place under the connection limit until closed.
pub struct Limited<IO> {
    io: IO,
    _place: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the connection is closed for silence.
    greet_by: Option<Pin<Box<Sleep>>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read
            && buf.filled().len() > before
        {
            self.greet_by = None;
        }
        if read.is_pending()
            && let Some(deadline) = self.greet_by.as_mut()
        {
            ready!(deadline.as_mut().poll(cx));
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing")));
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of `incoming`, at most `max` open at once; `greeting` is how long a
/// new one may stay silent.
pub fn limit_connections<S, IO, E>(
    incoming: S,
    max: usize,
    greeting: Duration,
) -> impl Stream<Item = Result<Limited<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send + 'static,
    E: Send + 'static,
{
    let places = Arc::new(Semaphore::new(max));
    incoming.filter_map(move |conn| {
        let places = places.clone();
        async move {
            match conn {
                Err(e) => Some(Err(e)),
                Ok(io) => match places.try_acquire_owned() {
                    Ok(place) => {
                        Some(Ok(Limited { io, _place: place, greet_by: Some(Box::pin(tokio::time::sleep(greeting))) }))
                    }
                    Err(_) => {
                        tracing::warn!(max, "connection refused: the node has its most open connections");
                        None // dropping it closes it
                    }
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pair() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
        tokio::io::duplex(64)
    }

    /// t93 (wire safety): a connection past the limit is closed at once, and its place is
    /// given back when one closes.
    #[tokio::test]
    async fn t93_connections_past_the_limit_are_closed_and_places_come_back() {
        let (a, _a_peer) = pair();
        let (b, _b_peer) = pair();
        let (c, mut c_peer) = pair();
        let (d, _d_peer) = pair();
        let incoming = futures::stream::iter(vec![Ok::<_, io::Error>(a), Ok(b), Ok(c)]);
        let accepted: Vec<_> = limit_connections(incoming, 2, Duration::from_secs(10)).collect().await;
        assert_eq!(accepted.len(), 2, "the third connection is over the limit");
        // The refused one was dropped: its peer reads end of stream.
        let mut buf = [0u8; 1];
        assert_eq!(c_peer.read(&mut buf).await.unwrap(), 0);
        drop(accepted);
        let again = limit_connections(futures::stream::iter(vec![Ok::<_, io::Error>(d)]), 2, Duration::from_secs(10));
        assert_eq!(again.collect::<Vec<_>>().await.len(), 1);
    }

    /// t93 (wire safety): a client that connects and says nothing is closed after the
    /// greeting time; one that speaks is not.
    #[tokio::test(start_paused = true)]
    async fn t93_a_silent_connection_is_closed_and_a_talking_one_kept() {
        let (silent, _silent_peer) = pair();
        let (talking, mut talking_peer) = pair();
        let incoming = futures::stream::iter(vec![Ok::<_, io::Error>(silent), Ok(talking)]);
        let mut conns: Vec<_> = limit_connections(incoming, 8, Duration::from_millis(100)).collect().await;
        let mut talking = conns.pop().unwrap().unwrap();
        let mut silent = conns.pop().unwrap().unwrap();
        talking_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        talking.read_exact(&mut buf).await.unwrap();
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Past the greeting, the talking one waits for its next bytes as long as it takes.
        let later = tokio::time::timeout(Duration::from_secs(60), talking.read(&mut buf)).await;
        assert!(later.is_err(), "a connection that spoke is not closed for a later silence");
    }
}
