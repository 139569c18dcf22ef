//! The share group coordinator (RFC 0007): the metadata leader's node, as for consumer
//! groups. Joins, acquisitions and acknowledgements are metadata commands
//! (`flotilla_metadata::share`); the coordinator stamps each acquisition and
//! acknowledgement with its clock, which is what lock timeouts are measured by. When it
//! last heard each member stays in memory ([`crate::groups::Sessions`], shared with
//! consumer groups: a name is one kind of group or the other), and [`session_loop`]
//! evicts a silent member, freeing what it held.
//!
//! [`session_loop`]: crate::groups::session_loop

use flotilla_metadata::groups::TopicPartition;
use flotilla_metadata::share::{Grant, ShareGroup, ShareOp, ShareResponse, redeliverable};
use flotilla_metadata::{Command as MetaCommand, Response as MetaResponse};
use flotilla_raft::RaftTransport;
use flotilla_types::group::{ShareAcks, ShareAcquire, ShareConfig, ShareHeartbeat};
use flotilla_types::{ErrorCode, Offset, limits};

use crate::groups::MemberView;
use crate::{ApiError, Node};

/// An acknowledgement the coordinator refused: partition, offset and why.
pub type Refused = ((String, u32), Offset, String);

/// The coordinator's answer to a share heartbeat.
#[derive(Debug, Clone)]
pub struct ShareBeat {
    /// The group's configuration (its creator's).
    pub config: ShareConfig,
    pub interval_ms: u32,
    /// Per partition of the member's topics, the first record to give again.
    pub redeliver: Vec<(TopicPartition, Offset)>,
}

impl<T: RaftTransport> Node<T> {
    pub(crate) async fn share_write(&self, group: &str, op: ShareOp) -> Result<MetaResponse, ApiError> {
        self.metadata_write(MetaCommand::Share { name: group.to_string(), op }).await
    }

    /// A share group member's join, heartbeat or leave; answers the group's
    /// configuration and the heartbeat interval (ms).
    pub async fn share_heartbeat(&self, hb: ShareHeartbeat) -> Result<ShareBeat, ApiError> {
        self.coordinating()?;
        let sessions = &self.inner.sessions;
        if hb.leave {
            sessions.forget(&hb.group, &hb.member);
            let op = ShareOp::Leave { member: hb.member.clone(), reason: "left".into() };
            let left = ShareBeat { config: hb.config, interval_ms: 0, redeliver: Vec::new() };
            return match self.share_write(&hb.group, op).await {
                Ok(_) => Ok(left),
                Err(e) if matches!(e.code, ErrorCode::UnknownMember | ErrorCode::UnknownGroup) => Ok(left),
                Err(e) => Err(e),
            };
        }
        let current = self.with_metadata(|m| m.share_group(&hb.group).and_then(|g| g.members.get(&hb.member)).cloned());
        let join = current.is_none_or(|m| {
            m.topics != hb.topics || m.client != hb.client || m.session_timeout_ms != hb.session_timeout_ms
        });
        if join {
            let op = ShareOp::Join {
                member: hb.member.clone(),
                client: hb.client.clone(),
                topics: hb.topics.clone(),
                session_timeout_ms: hb.session_timeout_ms,
                config: hb.config,
            };
            self.share_write(&hb.group, op).await?;
        }
        sessions.heard(&hb.group, &hb.member);
        let now_ms = self.inner.clock.now_ms();
        let beat = self.with_metadata(|m| {
            m.share_group(&hb.group).map(|g| ShareBeat {
                config: g.config,
                interval_ms: limits::GROUP_HEARTBEAT_MS,
                redeliver: redeliverable(g, &hb.topics, now_ms),
            })
        });
        beat.ok_or_else(|| ApiError::new(ErrorCode::UnknownGroup, format!("share group '{}' was deleted", hb.group)))
    }

    /// Gives the member the records it fetched that are free; answers them and where it
    /// should fetch next.
    pub async fn share_acquire(&self, a: ShareAcquire) -> Result<(Vec<Grant>, Offset), ApiError> {
        self.coordinating()?;
        let op = ShareOp::Acquire {
            member: a.member.clone(),
            seq: a.seq,
            partition: a.partition,
            now_ms: self.inner.clock.now_ms(),
            log_start: a.log_start,
            from: a.from,
            to: a.to,
            records: a.records,
            max: a.max,
        };
        match self.share_write(&a.group, op).await? {
            MetaResponse::Share(ShareResponse::Acquired { granted, next }) => {
                self.inner.sessions.heard(&a.group, &a.member);
                Ok((granted, next))
            }
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }

    /// Applies a member's acknowledgements; answers those refused.
    pub async fn share_ack(&self, a: ShareAcks) -> Result<Vec<Refused>, ApiError> {
        self.coordinating()?;
        let op = ShareOp::Ack { member: a.member.clone(), seq: a.seq, now_ms: self.inner.clock.now_ms(), acks: a.acks };
        match self.share_write(&a.group, op).await? {
            MetaResponse::Share(ShareResponse::Acked { refused }) => {
                self.inner.sessions.heard(&a.group, &a.member);
                Ok(refused)
            }
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }

    /// Every share group (at the coordinator).
    pub fn list_share_groups(&self) -> Result<Vec<(String, ShareGroup)>, ApiError> {
        self.coordinating()?;
        Ok(self.with_metadata(|m| m.share_groups().iter().map(|(n, g)| (n.clone(), g.clone())).collect()))
    }

    /// One share group and when the coordinator last heard each member (`None`: it is
    /// not a share group).
    pub fn describe_share_group(&self, group: &str) -> Result<Option<(ShareGroup, Vec<MemberView>)>, ApiError> {
        self.coordinating()?;
        let Some(g) = self.with_metadata(|m| m.share_group(group).cloned()) else { return Ok(None) };
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id: id.clone(),
                member: flotilla_metadata::groups::Member {
                    client: m.client.clone(),
                    zone: String::new(),
                    topics: m.topics.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    epoch: 0,
                    assigned: Default::default(),
                    target: Default::default(),
                },
                heard_ago: self.inner.sessions.heard_ago(group, id),
            })
            .collect();
        Ok(Some((g, members)))
    }

    /// Deletes a share group that has no members (`false`: it is not a share group).
    pub(crate) async fn delete_share_group(&self, group: &str) -> Result<bool, ApiError> {
        if self.with_metadata(|m| m.share_group(group).is_none()) {
            return Ok(false);
        }
        self.share_write(group, ShareOp::Delete).await.map(|_| true)
    }
}
