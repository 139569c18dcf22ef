//! gRPC for Flotilla: the client and admin services over a `Node`, the node-to-node Raft
//! service on its own listener (mutual TLS: `tls`), and `GrpcTransport`, the
//! `RaftTransport` that carries every group's Raft messages to a peer over one HTTP/2
//! connection. Also the plain HTTP endpoint Prometheus
//! scrapes (`serve_metrics`); the server records every client and admin request's latency
//! and outcome in the node's metrics.
//!
//! Protobuf types stop here: requests are checked and converted to domain types on the
//! way in, answers converted on the way out. Junk is rejected in that conversion and
//! nowhere else.

pub mod auth;
mod convert;
mod limit;
mod metrics_http;
mod server;
pub mod tls;
mod transport;

pub use metrics_http::{Endpoints, serve_metrics};
pub use server::{ServeError, serve, serve_nodes, serve_with_incoming};
pub use tls::NodeTls;
pub use transport::GrpcTransport;
