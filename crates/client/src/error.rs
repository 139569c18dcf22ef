//! What can go wrong, and whether a failed write may still have happened.
//!
//! Every failure is either **definite** (the request certainly did not take effect: an
//! in-band error whose [`ErrorCode::is_definite`] is true, a connection refused before
//! anything was sent, a local refusal) or **indeterminate** (a timeout, a connection lost
//! mid-request, `INTERNAL`/`TIMEOUT` answers, a response that makes no sense): a produce
//! that failed indeterminately may have been committed, and retrying it may write the
//! records twice.

use std::time::Duration;

use flotilla_types::{ErrorCode, NodeId, Offset, PartitionId};

/// The error of every client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with an in-band domain error.
    #[error("{}", with_code(message, *code))]
    Server {
        code: ErrorCode,
        message: String,
        /// The node that answered.
        addr: String,
        /// For `NOT_LEADER`: the leader, when the node named one.
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Refused by the client before anything was sent (a record over a limit, an unknown
    /// topic or partition, bad arguments). Definite.
    #[error("{}", with_code(message, *code))]
    Refused { code: ErrorCode, message: String },
    /// No connection could be made, so nothing was sent. Definite.
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The connection failed while the request was in flight. Indeterminate.
    #[error("connection to {addr} failed during the request ({message}); the outcome is unknown")]
    Transport { addr: String, message: String },
    /// No answer in time. Indeterminate.
    #[error("no answer from {addr} within {after:?}; the outcome is unknown")]
    Timeout { addr: String, after: Duration },
    /// Refused by the node's gRPC layer before it reached Flotilla (a message over the size
    /// limit, an unknown method, a malformed protobuf). Definite.
    #[error("{addr} refused the request: gRPC {code:?}: {message}")]
    Rpc { addr: String, code: tonic::Code, message: String },
    /// The answer breaks the protocol (junk in a response). Indeterminate for writes.
    #[error("invalid response from {addr}: {message}")]
    Protocol { addr: String, message: String },
    /// A fetched batch failed its checksum or structure check (`CORRUPT_BATCH`).
    #[error("corrupt batch at offset {base_offset} of {topic}/{partition}: {reason} (CORRUPT_BATCH)")]
    CorruptBatch { topic: String, partition: PartitionId, base_offset: Offset, reason: String },
    /// Retries ran out (the deadline passed), or a retry ended in a final error after an
    /// earlier attempt whose outcome is unknown. `last` is the last attempt's error.
    #[error("{last} (gave up after {attempts} attempts in {elapsed:.1?}{})",
        if *maybe_applied { "; an earlier attempt may have been applied" } else { "" })]
    GaveUp { attempts: u32, elapsed: Duration, maybe_applied: bool, last: Box<ClientError> },
    /// The producer's buffer (`ProducerConfig::buffer_bytes`) cannot take the record now
    /// (`Producer::try_send`). Nothing was queued; definite.
    #[error(
        "the producer's buffer is full: {needed} bytes do not fit in {limit} (BUFFER_FULL); wait and retry, or use send to wait for room"
    )]
    BufferFull { needed: usize, limit: usize },
    /// The producer's background task is gone (the runtime is shutting down).
    #[error("the producer is closed")]
    Closed,
}

fn with_code(message: &str, code: ErrorCode) -> String {
    if message.is_empty() { code.name().to_string() } else { format!("{message} ({code})") }
}

/// Result of every client operation.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// True when a write that failed with this error may nonetheless have been applied:
    /// retrying it may duplicate records. False when it certainly was not applied.
    pub fn is_indeterminate(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => !code.is_definite(),
            ClientError::Transport { .. } | ClientError::Timeout { .. } | ClientError::Protocol { .. } => true,
            ClientError::GaveUp { maybe_applied, last, .. } => *maybe_applied || last.is_indeterminate(),
            ClientError::Refused { .. }
            | ClientError::Connect { .. }
            | ClientError::Rpc { .. }
            | ClientError::CorruptBatch { .. }
            | ClientError::BufferFull { .. }
            | ClientError::Closed => false,
        }
    }

    /// The domain error code, when the failure has one (a client-side timeout is
    /// `TIMEOUT`; connection failures have none).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Refused { code, .. } => Some(*code),
            ClientError::Timeout { .. } => Some(ErrorCode::Timeout),
            ClientError::CorruptBatch { .. } => Some(ErrorCode::CorruptBatch),
            ClientError::GaveUp { last, .. } => last.code(),
            ClientError::Connect { .. }
            | ClientError::Transport { .. }
            | ClientError::Rpc { .. }
            | ClientError::Protocol { .. }
            | ClientError::BufferFull { .. }
            | ClientError::Closed => None,
        }
    }

    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Refused { code, message: message.into() }
    }

    pub(crate) fn protocol(addr: &str, message: impl Into<String>) -> ClientError {
        ClientError::Protocol { addr: addr.to_string(), message: message.into() }
    }

    /// The in-band error `e` answered by `addr`.
    pub(crate) fn server(addr: &str, e: &flotilla_proto::v1::Error) -> ClientError {
        let hint = e.leader_hint().unwrap_or_default();
        ClientError::Server {
            code: e.error_code(),
            message: e.message.clone(),
            addr: addr.to_string(),
            leader_id: hint.id,
            leader_addr: hint.addr,
        }
    }

    /// Classifies a gRPC status: a connection that was never made is definite; a
    /// connection lost, reset or cancelled mid-request is indeterminate; a status the
    /// node's gRPC layer answered with (size limits, unknown method) is definite.
    pub(crate) fn from_status(addr: &str, status: &tonic::Status) -> ClientError {
        if flotilla_proto::status_causes(status).any(|e| e.downcast_ref::<tonic::ConnectError>().is_some()) {
            return ClientError::Connect { addr: addr.to_string(), message: error_chain(status) };
        }
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::DataLoss => ClientError::Transport { addr: addr.to_string(), message: error_chain(status) },
            // A request without a domain answer (Metadata) refused for its credentials.
            tonic::Code::Unauthenticated => ClientError::server(
                addr,
                &flotilla_proto::v1::Error::new(ErrorCode::NotAuthenticated, status.message()),
            ),
            code => ClientError::Rpc { addr: addr.to_string(), code, message: status.message().to_string() },
        }
    }
}

/// A status's message and the messages of its sources, deduplicated.
fn error_chain(status: &tonic::Status) -> String {
    let mut parts: Vec<String> = vec![];
    if !status.message().is_empty() {
        parts.push(status.message().to_string());
    }
    for e in flotilla_proto::status_causes(status) {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    if parts.is_empty() { format!("gRPC {:?}", status.code()) } else { parts.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server { code, message: "m".into(), addr: "a".into(), leader_id: None, leader_addr: None }
    }

    #[test]
    fn in_band_codes_follow_is_definite() {
        for code in ErrorCode::ALL {
            let e = server(code);
            assert_eq!(e.is_indeterminate(), !code.is_definite(), "{code}");
            if matches!(code, ErrorCode::Internal | ErrorCode::Timeout) {
                assert!(e.is_indeterminate());
            }
            assert_eq!(e.code(), Some(code));
        }
    }

    #[test]
    fn transport_failures_are_classified() {
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError("connection refused".into())));
        let e = ClientError::from_status("n1", &connect);
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(!e.is_indeterminate());
        assert!(e.to_string().contains("connection refused"), "{e}");

        let lost = tonic::Status::unavailable("connection reset");
        let e = ClientError::from_status("n1", &lost);
        assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
        assert!(e.is_indeterminate());
        assert_eq!(e.code(), None);

        for code in [tonic::Code::Cancelled, tonic::Code::Internal, tonic::Code::Unknown, tonic::Code::DeadlineExceeded]
        {
            assert!(ClientError::from_status("n", &tonic::Status::new(code, "x")).is_indeterminate(), "{code:?}");
        }
        for code in [tonic::Code::OutOfRange, tonic::Code::Unimplemented, tonic::Code::InvalidArgument] {
            let e = ClientError::from_status("n", &tonic::Status::new(code, "x"));
            assert!(matches!(e, ClientError::Rpc { .. }) && !e.is_indeterminate(), "{code:?}");
        }

        let t = ClientError::Timeout { addr: "n".into(), after: Duration::from_secs(1) };
        assert!(t.is_indeterminate());
        assert_eq!(t.code(), Some(ErrorCode::Timeout));
    }

    #[test]
    fn gave_up_remembers_an_earlier_unknown_outcome() {
        let e = ClientError::GaveUp {
            attempts: 3,
            elapsed: Duration::from_secs(2),
            maybe_applied: false,
            last: Box::new(server(ErrorCode::Unavailable)),
        };
        assert!(!e.is_indeterminate());
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        let ClientError::GaveUp { attempts, elapsed, last, .. } = e else { unreachable!() };
        let e = ClientError::GaveUp { attempts, elapsed, maybe_applied: true, last };
        assert!(e.is_indeterminate());
        assert!(e.to_string().contains("may have been applied"), "{e}");
    }

    #[test]
    fn messages_name_the_code() {
        let e = ClientError::refused(ErrorCode::UnknownTopic, "topic 'x' does not exist");
        assert_eq!(e.to_string(), "topic 'x' does not exist (UNKNOWN_TOPIC)");
        assert!(!e.is_indeterminate());
    }
}
