//! Typed handles on a group: a partition group takes partition commands and answers
//! partition responses, the metadata group likewise, so callers never match on the
//! group-kind union (`Command`, `Response`, `GroupState`). The kind is checked once,
//! when the handle is made; everything else a group does is reached through `Deref`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::MetadataState;
use flotilla_partition::PartitionState;
use flotilla_types::GroupId;

use crate::group::{Group, GroupKind, WriteError};
use crate::network::{RaftTransport, Router};
use crate::state_machine::GroupState;
use crate::{Command, Response};

/// A partition group's replica on this node.
#[derive(Clone)]
pub struct PartitionGroup(Arc<Group>);

/// The metadata group's replica on this node.
#[derive(Clone)]
pub struct MetadataGroup(Arc<Group>);

impl PartitionGroup {
    /// `None` when `group` is not a partition group.
    pub fn new(group: Arc<Group>) -> Option<PartitionGroup> {
        (group.kind() == GroupKind::Partition).then_some(PartitionGroup(group))
    }

    /// Proposes `command` if this replica leads and waits until it is applied.
    pub async fn write(
        &self,
        command: flotilla_partition::Command,
        timeout: Duration,
    ) -> Result<flotilla_partition::Response, WriteError> {
        let group = self.id();
        self.0.write(Command::Partition(command), timeout).await.and_then(|r| partition_response(group, r))
    }

    /// Proposes a produce if this replica leads and answers once the entry is durable in
    /// this replica's own log, with the response it gets when it is applied (acks=leader):
    /// see [`Group::write_leader_durable`].
    pub async fn write_leader_durable(
        &self,
        command: flotilla_partition::Command,
        timeout: Duration,
    ) -> Result<flotilla_partition::Response, WriteError> {
        let group = self.id();
        self.0
            .write_leader_durable(Command::Partition(command), timeout)
            .await
            .and_then(|r| partition_response(group, r))
    }

    /// Runs `f` on the partition's state as this replica has applied it.
    pub fn read<R>(&self, f: impl FnOnce(&PartitionState) -> R) -> R {
        self.0.read(|s| match s {
            GroupState::Partition(p) => f(p),
            GroupState::Metadata(_) => unreachable!("a partition group's state is a partition's (checked in new)"),
        })
    }

    pub fn group(&self) -> &Arc<Group> {
        &self.0
    }
}

impl MetadataGroup {
    /// `None` when `group` is not the metadata group.
    pub fn new(group: Arc<Group>) -> Option<MetadataGroup> {
        (group.kind() == GroupKind::Metadata).then_some(MetadataGroup(group))
    }

    /// Proposes `command` if this replica leads and waits until it is applied.
    pub async fn write(
        &self,
        command: flotilla_metadata::Command,
        timeout: Duration,
    ) -> Result<flotilla_metadata::Response, WriteError> {
        let group = self.id();
        self.0.write(Command::Metadata(command), timeout).await.and_then(|r| metadata_response(group, r))
    }

    /// Writes through this replica if it leads, else forwards the write to the leader.
    pub async fn write_or_forward<T: RaftTransport>(
        &self,
        router: &Router<T>,
        command: flotilla_metadata::Command,
        timeout: Duration,
    ) -> Result<flotilla_metadata::Response, WriteError> {
        let group = self.id();
        let r = self.0.write_or_forward(router, Command::Metadata(command), timeout).await;
        r.and_then(|r| metadata_response(group, r))
    }

    /// Sends a write to `node`'s replica, which writes it if it leads.
    pub async fn forward_to<T: RaftTransport>(
        &self,
        router: &Router<T>,
        node: flotilla_types::NodeId,
        command: flotilla_metadata::Command,
        timeout: Duration,
    ) -> Result<flotilla_metadata::Response, WriteError> {
        let group = self.id();
        let r = self.0.forward_to(router, node, Command::Metadata(command), timeout).await;
        r.and_then(|r| metadata_response(group, r))
    }

    /// Runs `f` on the metadata state as this replica has applied it.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        self.0.read(|s| match s {
            GroupState::Metadata(m) => f(m),
            GroupState::Partition(_) => unreachable!("the metadata group's state is metadata (checked in new)"),
        })
    }

    pub fn group(&self) -> &Arc<Group> {
        &self.0
    }
}

impl Deref for PartitionGroup {
    type Target = Group;

    fn deref(&self) -> &Group {
        &self.0
    }
}

impl Deref for MetadataGroup {
    type Target = Group;

    fn deref(&self) -> &Group {
        &self.0
    }
}

/// A partition command applied in a partition group answers a partition response
/// (`state_machine::apply_one`). Anything else can only come from a peer that forwarded
/// a write and answered nonsense: refused, never trusted.
fn partition_response(group: GroupId, r: Response) -> Result<flotilla_partition::Response, WriteError> {
    match r {
        Response::Partition(r) => Ok(r),
        other => Err(WriteError::Unavailable { group, reason: format!("a partition write answered {other:?}") }),
    }
}

fn metadata_response(group: GroupId, r: Response) -> Result<flotilla_metadata::Response, WriteError> {
    match r {
        Response::Metadata(r) => Ok(r),
        other => Err(WriteError::Unavailable { group, reason: format!("a metadata write answered {other:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded write's answer comes off the network: one of the other kind is an
    /// error for the caller, never a panic of the node.
    #[test]
    fn an_answer_of_the_other_kind_is_refused_not_trusted() {
        let produced = Response::Partition(flotilla_partition::Response::Produced {
            base_offset: 3,
            records: 1,
            duplicate: false,
        });
        assert!(matches!(metadata_response(0, produced.clone()), Err(WriteError::Unavailable { group: 0, .. })));
        assert_eq!(
            partition_response(7, produced),
            Ok(flotilla_partition::Response::Produced { base_offset: 3, records: 1, duplicate: false })
        );
        for other in [Response::WrongGroup, Response::None, Response::Metadata(flotilla_metadata::Response::Ok)] {
            assert!(matches!(partition_response(7, other), Err(WriteError::Unavailable { group: 7, .. })));
        }
        assert_eq!(
            metadata_response(0, Response::Metadata(flotilla_metadata::Response::Ok)),
            Ok(flotilla_metadata::Response::Ok)
        );
    }
}
