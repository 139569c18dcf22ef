//! The node's HTTP listener for Prometheus, orchestrators and people, served by axum:
//! `GET /metrics` answers the Prometheus text exposition format, `GET /healthz` 200 while
//! the process serves HTTP at all (liveness), `GET /ready` 200 when the node serves and
//! 503 with the reason when it does not (readiness: `Node::readiness`), `GET /` the
//! built-in console (a page that polls `GET /api/cluster`, the cluster as JSON), anything
//! else 404. One request per connection, request heads bounded in size, connections in
//! number and each in time: a scraper needs no more, and nothing a peer sends can grow
//! it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

// The largest request head read, the time allowed, the connections served at once.
use flotilla_types::limits::{
    METRICS_CONNECTIONS_MAX as CONNECTIONS_MAX, METRICS_REQUEST_BYTES_MAX as REQUEST_BYTES_MAX,
};
const REQUEST_TIMEOUT: Duration = Duration::from_millis(flotilla_types::limits::METRICS_REQUEST_TIMEOUT_MS);
/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The console: one page, its styles and script inline, nothing fetched from elsewhere.
const CONSOLE_HTML: &str = include_str!("console.html");

/// What the endpoint answers with: the metrics text, whether the node is ready (or why
/// not), and the console's view of the cluster as JSON.
pub struct Endpoints {
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    pub console: Box<dyn Fn() -> String + Send + Sync>,
}

/// The routes, over the node's answers.
fn router(endpoints: Arc<Endpoints>) -> Router {
    Router::new()
        .route("/metrics", get(|State(e): State<Arc<Endpoints>>| async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], (e.metrics)()) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|State(e): State<Arc<Endpoints>>| async move {
                match (e.ready)() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                }
            }),
        )
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], CONSOLE_HTML) }))
        .route(
            "/api/cluster",
            get(|State(e): State<Arc<Endpoints>>| async move {
                ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], (e.console)())
            }),
        )
        .fallback(|| async { not_found() })
        .with_state(endpoints)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found; GET /metrics, /healthz, /ready, / (the console) or /api/cluster\n")
        .into_response()
}

/// Serves the routes on `listener`, until the task is dropped or aborted. Accept errors
/// (a full file table) are logged and retried after a pause; a bad request closes only
/// its own connection.
pub async fn serve_metrics(listener: TcpListener, endpoints: Endpoints) {
    let service = TowerToHyperService::new(router(Arc::new(endpoints)));
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /healthz, /ready and the console at /");
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
        let service = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(REQUEST_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_console_and_404_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(std::sync::Mutex::new(Err("no metadata leader known".to_string())));
        let endpoints = Endpoints {
            metrics: Box::new(|| "flotilla_up 1\n".to_string()),
            ready: Box::new({
                let ready = ready.clone();
                move || ready.lock().unwrap().clone()
            }),
            console: Box::new(|| "{\"answered_by\":1}".to_string()),
        };
        let server = tokio::spawn(serve_metrics(listener, endpoints));

        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.to_lowercase().contains("content-length: 14\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nflotilla_up 1\n"), "{ok}");

        let alive = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(alive.starts_with("HTTP/1.1 200 OK\r\n") && alive.ends_with("ok\n"), "{alive}");
        let not_ready = get(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("not ready: no metadata leader known\n"), "{not_ready}");
        *ready.lock().unwrap() = Ok(());
        let now_ready = get(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(now_ready.starts_with("HTTP/1.1 200 OK\r\n") && now_ready.ends_with("ready\n"), "{now_ready}");

        let page = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.to_lowercase().contains("content-type: text/html"), "{page}");
        assert!(page.contains("/api/cluster"), "the page polls the JSON");
        let json = get(addr, b"GET /api/cluster HTTP/1.1\r\n\r\n").await;
        assert!(json.to_lowercase().contains("content-type: application/json"), "{json}");
        assert!(json.ends_with("{\"answered_by\":1}"), "{json}");

        let missing = get(addr, b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        let post = get(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let junk = get(addr, b"\xff\xfe junk\r\n\r\n").await;
        assert!(junk.is_empty() || junk.starts_with("HTTP/1.1 400"), "{junk}");

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
