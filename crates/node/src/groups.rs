//! The consumer group coordinator (RFC 0005). The metadata leader's node coordinates
//! every group: the group's state is in the metadata state machine
//! (`flotilla_metadata::groups`), written as metadata commands; what is not worth a Raft
//! entry — when each member was last heard — stays here, in memory, and is rebuilt by a
//! new leader, which gives every member a whole session timeout from its first tick.
//!
//! A heartbeat writes only what changes: a join or a changed subscription, a release of
//! partitions the member stopped reading. A member silent for its session timeout is
//! evicted by [`session_loop`] with a `Leave` command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use flotilla_metadata::groups::{ConsumerGroup, GroupOp, GroupResponse, Member, TopicPartition};
use flotilla_metadata::share::ShareOp;
use flotilla_metadata::{Command as MetaCommand, Response as MetaResponse};
use flotilla_raft::RaftTransport;
use flotilla_types::{ErrorCode, GroupHeartbeat as Heartbeat, Offset, limits};
use tokio::time::Instant;

use crate::{ApiError, Node};

/// How often the session loop looks for silent members.
const SESSION_TICK: Duration = Duration::from_millis(250);

/// A partition a member may read, as the coordinator answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub partition: TopicPartition,
    pub epoch: u64,
    pub committed: Option<Offset>,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub epoch: u64,
    pub interval_ms: u32,
    pub assigned: Vec<Granted>,
    pub revoking: Vec<TopicPartition>,
}

/// A member as `group describe` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: String,
    pub member: Member,
    /// Since the coordinator last heard from it (`None`: this node does not coordinate).
    pub heard_ago: Option<Duration>,
}

/// When the coordinator last heard from each member: (group, member) → time.
#[derive(Default)]
pub(crate) struct Sessions {
    heard: Mutex<BTreeMap<(String, String), Instant>>,
}

impl Sessions {
    pub(crate) fn heard(&self, group: &str, member: &str) {
        self.heard.lock().expect("sessions poisoned").insert((group.to_string(), member.to_string()), Instant::now());
    }

    pub(crate) fn forget(&self, group: &str, member: &str) {
        self.heard.lock().expect("sessions poisoned").remove(&(group.to_string(), member.to_string()));
    }

    pub(crate) fn heard_ago(&self, group: &str, member: &str) -> Option<Duration> {
        let heard = self.heard.lock().expect("sessions poisoned");
        heard.get(&(group.to_string(), member.to_string())).map(|t| t.elapsed())
    }
}

impl<T: RaftTransport> Node<T> {
    pub(crate) fn coordinating(&self) -> Result<(), ApiError> {
        let g = self.metadata_group();
        match g.is_leader() {
            true => Ok(()),
            false => Err(self.not_metadata_leader(g.leader())),
        }
    }

    async fn group_write(&self, group: &str, op: GroupOp) -> Result<MetaResponse, ApiError> {
        self.metadata_write(MetaCommand::Group { name: group.to_string(), op }).await
    }

    fn member(&self, group: &str, member: &str) -> Option<Member> {
        self.with_metadata(|m| m.group(group).and_then(|g| g.members.get(member)).cloned())
    }

    /// A member's join, heartbeat or leave, at the coordinator; answers its assignment.
    pub async fn group_heartbeat(&self, hb: Heartbeat) -> Result<Assignment, ApiError> {
        self.coordinating()?;
        let sessions = &self.inner.sessions;
        if hb.leave {
            sessions.forget(&hb.group, &hb.member);
            let op = GroupOp::Leave { member: hb.member.clone(), reason: "left".into() };
            return match self.group_write(&hb.group, op).await {
                Ok(_) => Ok(Assignment { epoch: 0, interval_ms: 0, assigned: Vec::new(), revoking: Vec::new() }),
                Err(e) if matches!(e.code, ErrorCode::UnknownMember | ErrorCode::UnknownGroup) => {
                    Ok(Assignment { epoch: 0, interval_ms: 0, assigned: Vec::new(), revoking: Vec::new() })
                }
                Err(e) => Err(e),
            };
        }
        let current = self.member(&hb.group, &hb.member);
        let join = match &current {
            None if hb.epoch != 0 => {
                return Err(ApiError::new(
                    ErrorCode::UnknownMember,
                    format!(
                        "group '{}' has no member '{}' (it left or its session timed out): join again",
                        hb.group, hb.member
                    ),
                ));
            }
            None => true,
            Some(m) => {
                m.topics != hb.topics
                    || m.zone != hb.zone
                    || m.session_timeout_ms != hb.session_timeout_ms
                    || m.client != hb.client
            }
        };
        if join {
            let op = GroupOp::Join {
                member: hb.member.clone(),
                client: hb.client.clone(),
                zone: hb.zone.clone(),
                topics: hb.topics.clone(),
                session_timeout_ms: hb.session_timeout_ms,
                assignor: hb.assignor,
            };
            self.group_write(&hb.group, op).await?;
        }
        sessions.heard(&hb.group, &hb.member);
        let Some(m) = self.member(&hb.group, &hb.member) else {
            return Err(ApiError::new(ErrorCode::UnknownMember, format!("member '{}' left meanwhile", hb.member)));
        };
        // Partitions being revoked that the member no longer reads go to their next
        // owners. Only a member that has seen its latest epoch (or a joining one, which
        // reads nothing) is believed: an older heartbeat may predate a grant.
        if hb.epoch == m.epoch || hb.epoch == 0 {
            let owned: BTreeSet<&TopicPartition> = hb.owned.iter().collect();
            let released: Vec<TopicPartition> = m.revoking().filter(|tp| !owned.contains(tp)).cloned().collect();
            if !released.is_empty() {
                self.group_write(&hb.group, GroupOp::Release { member: hb.member.clone(), partitions: released })
                    .await?;
            }
        }
        self.assignment(&hb.group, &hb.member)
    }

    fn assignment(&self, group: &str, member: &str) -> Result<Assignment, ApiError> {
        self.with_metadata(|m| {
            let g = m.group(group);
            let Some(mem) = g.and_then(|g| g.members.get(member)) else {
                return Err(ApiError::new(ErrorCode::UnknownMember, format!("member '{member}' left meanwhile")));
            };
            let g = g.expect("the member's group");
            Ok(Assignment {
                epoch: mem.epoch,
                interval_ms: limits::GROUP_HEARTBEAT_MS,
                assigned: mem
                    .assigned
                    .iter()
                    .map(|(tp, e)| Granted {
                        partition: tp.clone(),
                        epoch: *e,
                        committed: g.offsets.get(tp).map(|c| c.offset),
                    })
                    .collect(),
                revoking: mem.revoking().cloned().collect(),
            })
        })
    }

    /// Commits offsets (see `GroupOp::Commit`); answers the committed offsets after it.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member: Option<(String, u64)>,
        offsets: Vec<(TopicPartition, Offset, String)>,
    ) -> Result<Vec<(TopicPartition, Offset)>, ApiError> {
        match self.group_write(group, GroupOp::Commit { member, offsets }).await? {
            MetaResponse::Group(GroupResponse::Committed(c)) => Ok(c),
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }

    /// Sets a group's committed offsets, also while its members read (at the coordinator).
    pub async fn reset_offsets(&self, group: &str, offsets: Vec<(TopicPartition, Offset)>) -> Result<(), ApiError> {
        self.coordinating()?;
        self.group_write(group, GroupOp::Reset { offsets }).await.map(drop)
    }

    /// Deletes a group (consumer or share group) that has no members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ApiError> {
        self.coordinating()?;
        if self.delete_share_group(group).await? {
            return Ok(());
        }
        self.group_write(group, GroupOp::Delete).await.map(drop)
    }

    /// Every group (at the coordinator).
    pub fn list_groups(&self) -> Result<Vec<(String, ConsumerGroup)>, ApiError> {
        self.coordinating()?;
        Ok(self.with_metadata(|m| m.groups().iter().map(|(n, g)| (n.clone(), g.clone())).collect()))
    }

    /// One group with its members (at the coordinator, which knows when it heard them).
    pub fn describe_group(&self, group: &str) -> Result<(ConsumerGroup, Vec<MemberView>), ApiError> {
        self.coordinating()?;
        let Some(g) = self.with_metadata(|m| m.group(group).cloned()) else {
            return Err(ApiError::new(ErrorCode::UnknownGroup, format!("group '{group}' does not exist")));
        };
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id: id.clone(),
                member: m.clone(),
                heard_ago: self.inner.sessions.heard_ago(group, id),
            })
            .collect();
        Ok((g, members))
    }
}

/// At the metadata leader: evicts members not heard from within their session timeout.
/// A member the leader has not heard from yet (a new leader's first ticks) is timed from
/// when the leader first saw it.
pub(crate) async fn session_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let mut applied = node.metadata_group().state().subscribe();
    loop {
        // No timer while no group has members: a cluster without consumer groups pays
        // nothing for them.
        let members = node.with_metadata(|m| {
            m.groups().values().any(|g| !g.members.is_empty())
                || m.share_groups().values().any(|g| !g.members.is_empty())
        });
        tokio::select! {
            _ = tokio::time::sleep(SESSION_TICK), if members => {}
            r = applied.changed(), if !members => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let sessions = &node.inner.sessions;
        if !node.metadata_group().is_leader() {
            sessions.heard.lock().expect("sessions poisoned").clear();
            continue;
        }
        let members: Vec<(String, String, u32)> = node.with_metadata(|m| {
            let consumers = m.groups().iter().flat_map(|(g, group)| {
                group.members.iter().map(|(id, mem)| (g.clone(), id.clone(), mem.session_timeout_ms))
            });
            let sharers = m.share_groups().iter().flat_map(|(g, group)| {
                group.members.iter().map(|(id, mem)| (g.clone(), id.clone(), mem.session_timeout_ms))
            });
            consumers.chain(sharers).collect()
        });
        let mut expired = Vec::new();
        {
            let mut heard = sessions.heard.lock().expect("sessions poisoned");
            let listed: BTreeSet<(String, String)> = members.iter().map(|(g, m, _)| (g.clone(), m.clone())).collect();
            heard.retain(|k, _| listed.contains(k));
            for (g, m, timeout) in members {
                let at = *heard.entry((g.clone(), m.clone())).or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_millis(u64::from(timeout)) {
                    expired.push((g, m, timeout));
                }
            }
        }
        for (group, member, timeout) in expired {
            let reason = format!("not heard from within its session timeout ({timeout} ms)");
            tracing::info!(group, member, reason, "evicting a group member");
            let share = node.with_metadata(|m| m.share_group(&group).is_some());
            let written = match share {
                true => node.share_write(&group, ShareOp::Leave { member: member.clone(), reason }).await,
                false => node.group_write(&group, GroupOp::Leave { member: member.clone(), reason }).await,
            };
            match written {
                Ok(_) => sessions.forget(&group, &member),
                Err(e) => tracing::warn!(group, member, error = %e.message, "evicting a group member failed"),
            }
        }
    }
}
