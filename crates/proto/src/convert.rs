//! Domain error codes to and from the wire.
//!
//! A domain error travels in-band in [`v1::Error`]; `code` is an [`ErrorCode`] number.
//! An absent error and an error with code 0 (`NONE`) both mean success.

use flotilla_types::{BatchError, ErrorCode, NodeId, RecordBatch};

use crate::v1;

/// Where a `NOT_LEADER` error says the leader is. Either part may be unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderHint {
    /// The leader's node id, when the answering node knows it.
    pub id: Option<NodeId>,
    /// The leader's client address (`host:port`), when the answering node knows it.
    pub addr: Option<String>,
}

impl v1::Error {
    /// An in-band error with `code` and a human-readable message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> v1::Error {
        v1::Error { code: code.as_u32(), message: message.into(), leader_id: 0, leader_addr: String::new() }
    }

    /// `NOT_LEADER`, naming the current leader when it is known.
    pub fn not_leader(leader_id: Option<NodeId>, leader_addr: Option<&str>, message: impl Into<String>) -> v1::Error {
        v1::Error {
            code: ErrorCode::NotLeader.as_u32(),
            message: message.into(),
            leader_id: leader_id.unwrap_or(0),
            leader_addr: leader_addr.unwrap_or_default().to_string(),
        }
    }

    /// The domain code. A number this build does not know (from a newer server) is
    /// `Internal`, which a client treats as indeterminate and does not retry.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_u32(self.code)
    }

    /// True when this is no error at all (code 0).
    pub fn is_none(&self) -> bool {
        self.code == ErrorCode::None.as_u32()
    }

    /// The leader this error names, if it names one (only `NOT_LEADER` does).
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        let id = (self.leader_id != 0).then_some(self.leader_id);
        let addr = (!self.leader_addr.trim().is_empty()).then(|| self.leader_addr.trim().to_string());
        (id.is_some() || addr.is_some()).then_some(LeaderHint { id, addr })
    }
}

impl From<ErrorCode> for v1::Error {
    fn from(code: ErrorCode) -> v1::Error {
        v1::Error::new(code, code.name())
    }
}

impl std::fmt::Display for v1::Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.error_code())
        } else {
            write!(f, "{} ({})", self.message, self.error_code())
        }
    }
}

impl std::error::Error for v1::Error {}

/// The in-band error of a response, if it is one: `None` and code 0 are success.
pub fn check(error: &Option<v1::Error>) -> Result<(), &v1::Error> {
    match error {
        Some(e) if !e.is_none() => Err(e),
        _ => Ok(()),
    }
}

/// The code a refused batch is answered with: a checksum or structure failure is
/// `CORRUPT_BATCH`, a limit broken is `RECORD_TOO_LARGE`.
pub fn batch_error_code(e: &BatchError) -> ErrorCode {
    match e {
        BatchError::Checksum { .. } | BatchError::Malformed(_) => ErrorCode::CorruptBatch,
        BatchError::TooLarge(_) => ErrorCode::RecordTooLarge,
        BatchError::Unsupported(_) => ErrorCode::UnsupportedFormat,
    }
}

impl From<&BatchError> for v1::Error {
    fn from(e: &BatchError) -> v1::Error {
        v1::Error::new(batch_error_code(e), e.to_string())
    }
}

impl v1::FetchedBatch {
    /// Verifies the batch's checksum and structure (never trust bytes off the wire).
    pub fn decode(&self) -> Result<RecordBatch, BatchError> {
        RecordBatch::decode(self.batch.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_wire_error() {
        for code in ErrorCode::ALL {
            let e = v1::Error::new(code, "m");
            assert_eq!(e.error_code(), code);
            assert_eq!(e.is_none(), code == ErrorCode::None);
            assert_eq!(v1::Error::from(code).error_code(), code);
        }
        assert_eq!(v1::Error { code: 4242, ..Default::default() }.error_code(), ErrorCode::Internal);
    }

    #[test]
    fn check_treats_absent_and_none_as_success() {
        assert!(check(&None).is_ok());
        assert!(check(&Some(v1::Error::new(ErrorCode::None, ""))).is_ok());
        let e = v1::Error::new(ErrorCode::UnknownTopic, "topic 'x' does not exist");
        assert_eq!(check(&Some(e.clone())).unwrap_err().error_code(), ErrorCode::UnknownTopic);
        assert_eq!(e.to_string(), "topic 'x' does not exist (UNKNOWN_TOPIC)");
    }

    #[test]
    fn leader_hints() {
        assert_eq!(v1::Error::new(ErrorCode::NotLeader, "").leader_hint(), None);
        let e = v1::Error::not_leader(Some(2), Some("10.0.0.2:7070"), "not the leader");
        assert_eq!(e.error_code(), ErrorCode::NotLeader);
        assert_eq!(e.leader_hint(), Some(LeaderHint { id: Some(2), addr: Some("10.0.0.2:7070".into()) }));
        let e = v1::Error::not_leader(Some(3), None, "");
        assert_eq!(e.leader_hint(), Some(LeaderHint { id: Some(3), addr: None }));
    }

    #[test]
    fn batch_errors_map_to_codes() {
        assert_eq!(batch_error_code(&BatchError::Checksum { expected: 1, actual: 2 }), ErrorCode::CorruptBatch);
        assert_eq!(batch_error_code(&BatchError::Malformed("x".into())), ErrorCode::CorruptBatch);
        assert_eq!(batch_error_code(&BatchError::TooLarge("x".into())), ErrorCode::RecordTooLarge);
        assert_eq!(batch_error_code(&BatchError::Unsupported("x".into())), ErrorCode::UnsupportedFormat);
    }
}
