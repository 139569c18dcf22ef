//! What a Raft entry carries: a metadata command or a partition command.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Metadata(flotilla_metadata::Command),
    Partition(flotilla_partition::Command),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Metadata(c) => write!(f, "metadata:{c:?}"),
            Command::Partition(flotilla_partition::Command::Produce { batch, records, .. }) => {
                write!(f, "produce:{records} records, {} bytes", batch.len())
            }
            Command::Partition(flotilla_partition::Command::DeleteRecords { before }) => {
                write!(f, "delete-records:before {before}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Metadata(flotilla_metadata::Response),
    Partition(flotilla_partition::Response),
    /// A command of the wrong kind reached a group (a metadata command in a partition
    /// group or the reverse). Applied as a no-op.
    WrongGroup,
    /// A blank or membership entry.
    None,
}
