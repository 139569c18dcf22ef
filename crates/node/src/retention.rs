//! Retention (design decision 13, docs/decisions.md): the partition leader decides which
//! prefix of the log has expired and proposes it as a `DeleteRecords` through Raft, so
//! every replica deletes the same records; each replica then snapshots at its new retention
//! point and purges its log up to it, and the storage engine compacts the deleted range,
//! which is what gives the disk space back.
//!
//! Every `retention-check-interval-ms`, for each partition hosted here:
//! - **as leader**: the new log start is the greater of what `retention-ms` and
//!   `retention-bytes` allow (the topic's own values, else the node's defaults): the
//!   first batch whose time is within `retention-ms` of now (by the time index), and the
//!   first batch from which at most `retention-bytes` remain (by the batches' positions).
//!   Whole batches are deleted, never part of one: a batch that still holds a record in
//!   retention stays, whole.
//! - **as any replica**: once a committed `DeleteRecords` moved the log start past the
//!   batch its snapshot starts at, it takes a new snapshot (`Group::compact_log`), and
//!   openraft purges the log entries below it.
//!
//! A record becomes unreadable at most `retention-ms` plus one check interval (plus the
//! commit of the `DeleteRecords`) after its timestamp; its space is free once the
//! replica's snapshot and the compaction of the range have run.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_partition::Command as PartCommand;
use flotilla_raft::{PartitionGroup, RaftTransport};
use flotilla_types::{GroupId, Offset};

use crate::Node;

/// What retention keeps of one partition; 0: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    pub(crate) ms: u64,
    pub(crate) bytes: u64,
}

pub(crate) async fn retention_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let every = Duration::from_millis(node.config().retention_check_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        check_once(&node).await;
    }
}

/// One pass over the partitions hosted here.
pub(crate) async fn check_once<T: RaftTransport>(node: &Node<T>) {
    let policies = retention_by_group(node);
    for (group_id, retention) in policies {
        let Some(group) = node.groups().partition(group_id) else { continue };
        if group.stopped().is_some() {
            continue;
        }
        if group.is_leader() {
            match expired_before(&group, retention, node.inner.clock.now_ms()) {
                Ok(Some(before)) => {
                    let cmd = PartCommand::DeleteRecords { before };
                    match group.write(cmd, node.produce_timeout()).await {
                        Ok(_) => tracing::debug!(group = group_id, before, "retention moved the log start"),
                        Err(e) => {
                            tracing::debug!(group = group_id, error = %e, "retention could not move the log start")
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(group = group_id, error = %e, "retention could not read the partition's index")
                }
            }
        }
        if group.compactable()
            && let Err(e) = group.compact_log().await
        {
            tracing::debug!(group = group_id, error = %e, "could not start a snapshot at the retention point");
        }
    }
}

/// Every partition hosted here with the retention that applies to it.
fn retention_by_group<T: RaftTransport>(node: &Node<T>) -> BTreeMap<GroupId, Retention> {
    let config = node.config();
    let hosted = node.groups().ids();
    node.with_metadata(|m| {
        let mut out = BTreeMap::new();
        for t in m.topics().values() {
            let retention = Retention {
                ms: t.policy.retention_ms.unwrap_or(config.retention_ms),
                bytes: t.policy.retention_bytes.unwrap_or(config.retention_bytes),
            };
            for p in &t.partitions {
                if hosted.contains(&p.group) {
                    out.insert(p.group, retention);
                }
            }
        }
        out
    })
}

/// The log start retention asks for, when it is past the current one.
pub(crate) fn expired_before(
    group: &PartitionGroup,
    retention: Retention,
    now_ms: u64,
) -> std::io::Result<Option<Offset>> {
    let (start, hw, end_position) = group.read(|p| (p.log_start_offset(), p.high_watermark(), p.end_position()));
    if start >= hw {
        return Ok(None);
    }
    let mut before = start;
    if retention.ms > 0 {
        let cutoff = now_ms.saturating_sub(retention.ms);
        // Every batch before the first one at or after the cutoff is older than it.
        let first_kept = group.first_offset_at_or_after(start, cutoff)?.unwrap_or(hw);
        before = before.max(first_kept);
    }
    if retention.bytes > 0 && end_position > retention.bytes {
        let from_position = end_position - retention.bytes;
        let first_kept = group.first_batch_at_position(start, hw, from_position)?.map_or(hw, |b| b.base_offset);
        before = before.max(first_kept);
    }
    let before = before.min(hw);
    Ok((before > start).then_some(before))
}
