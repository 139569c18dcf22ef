//! A minimal HTTP/1.1 server for Prometheus and orchestrators: `GET /metrics` answers
//! the text exposition format, `GET /healthz` 200 while the process serves HTTP at all
//! (liveness), `GET /ready` 200 when the node serves and 503 with the reason when it
//! does not (readiness: `Node::readiness`), anything else 404. One request per connection (answered with
//! `Connection: close`), requests bounded in size and time, connections bounded in
//! number: a scraper needs no more, and nothing a peer sends can grow it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

// The largest request head read, the time allowed, the connections served at once.
use flotilla_types::limits::{
    METRICS_CONNECTIONS_MAX as CONNECTIONS_MAX, METRICS_REQUEST_BYTES_MAX as REQUEST_BYTES_MAX,
};
const REQUEST_TIMEOUT: Duration = Duration::from_millis(flotilla_types::limits::METRICS_REQUEST_TIMEOUT_MS);
/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint answers with: the metrics text, and whether the node is ready (or
/// why not).
pub struct Endpoints {
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Serves `GET /metrics`, `/healthz` and `/ready` on `listener`, until the task is
/// dropped or aborted. Accept errors (a full file table) are logged and retried after a
/// pause; a bad request closes only its own connection.
pub async fn serve_metrics(listener: TcpListener, endpoints: Endpoints) {
    let render = Arc::new(endpoints);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
    loop {
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let served = tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, &render)).await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Ready,
    NotFound,
    BadRequest,
}

/// Routes a request head (everything before the blank line).
fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else { return Route::BadRequest };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/ready") => Route::Ready,
        _ => Route::NotFound,
    }
}

/// The end of the request head (the index after `\r\n\r\n` or `\n\n`), if it is in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn serve_one(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        if let Some(end) = head_end(&buf) {
            break Some(end);
        }
        if buf.len() >= REQUEST_BYTES_MAX {
            break None;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // closed before a whole request came
        }
        buf.extend_from_slice(&chunk[..n.min(REQUEST_BYTES_MAX - buf.len())]);
    };
    let (status, content_type, body) = match head_len.map(|end| route(&buf[..end])) {
        None => ("431 Request Header Fields Too Large", "text/plain", "request too large\n".to_string()),
        Some(Route::BadRequest) => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        Some(Route::NotFound) => {
            ("404 Not Found", "text/plain", "not found; GET /metrics, /healthz or /ready\n".to_string())
        }
        Some(Route::Metrics) => ("200 OK", CONTENT_TYPE, (endpoints.metrics)()),
        Some(Route::Healthz) => ("200 OK", "text/plain", "ok\n".to_string()),
        Some(Route::Ready) => match (endpoints.ready)() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
        },
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Route::Healthz);
        assert_eq!(route(b"GET /ready HTTP/1.1\r\n\r\n"), Route::Ready);
        assert_eq!(route(b"POST /ready HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_404_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(std::sync::Mutex::new(Err("no metadata leader known".to_string())));
        let endpoints = Endpoints {
            metrics: Box::new(|| "flotilla_up 1\n".to_string()),
            ready: Box::new({
                let ready = ready.clone();
                move || ready.lock().unwrap().clone()
            }),
        };
        let server = tokio::spawn(serve_metrics(listener, endpoints));

        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("Content-Length: 14\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nflotilla_up 1\n"), "{ok}");

        let alive = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(alive.starts_with("HTTP/1.1 200 OK\r\n") && alive.ends_with("ok\n"), "{alive}");
        let not_ready = get(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("not ready: no metadata leader known\n"), "{not_ready}");
        *ready.lock().unwrap() = Ok(());
        let now_ready = get(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(now_ready.starts_with("HTTP/1.1 200 OK\r\n") && now_ready.ends_with("ready\n"), "{now_ready}");

        let missing = get(addr, b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");

        // A request head over the limit is refused without waiting for its end.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(REQUEST_BYTES_MAX, b'a');
        let big = get(addr, &huge).await;
        assert!(big.starts_with("HTTP/1.1 431"), "{big}");

        // The request may arrive in pieces.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"ics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");

        server.abort();
    }
}
