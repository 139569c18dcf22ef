//! Cluster operations: adding, draining and removing nodes, moving partitions and
//! leaders, planning, topic configuration and the metadata group's voters, as plain
//! serialisable structs.
//!
//! Metadata writes go to the metadata leader when the client knows it (any node
//! otherwise: a node forwards them itself). `set_controllers` only works at the metadata
//! leader: a `NOT_LEADER` answer naming it is followed.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_proto::{request, v1};
use flotilla_types::{ErrorCode, GroupId, NodeId, PartitionId, limits};
use serde::Serialize;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::router::{Kind, Target};
use crate::wire::{admin, answered, refused, rpc_err};

pub use flotilla_types::cluster::{CatchUpInfo, ControllersInfo, MoveInfo, PlanScenario, ReplacementInfo};
pub use flotilla_types::{Labels, TopicPolicy};

/// What a plan action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Move the partition's replicas from `from` to `to`.
    Move,
    /// Make `to[0]` the preferred leader instead of `from[0]`.
    PreferLeader,
    /// A kind this client does not know (from a newer node); `text` says what it is.
    Other,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanAction {
    pub kind: ActionKind,
    pub topic: String,
    pub partition: PartitionId,
    pub group_id: GroupId,
    pub from: Vec<NodeId>,
    pub to: Vec<NodeId>,
    pub reason: String,
    /// The action as one line, for people.
    pub text: String,
}

/// What the planner found: actions, and notes on what it could not do and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanInfo {
    pub actions: Vec<PlanAction>,
    pub notes: Vec<String>,
}

/// Node ids from the wire: none 0, at most `max`.
fn ids_from_wire(what: &str, ids: &[u64], max: usize) -> std::result::Result<Vec<NodeId>, String> {
    if ids.len() > max {
        return Err(format!("{what}: {} nodes, at most {max} expected", ids.len()));
    }
    if ids.contains(&0) {
        return Err(format!("{what}: node id 0"));
    }
    Ok(ids.to_vec())
}

const TEXT_BYTES_MAX: usize = 4096;

fn text_from_wire(what: &str, s: &str) -> std::result::Result<String, String> {
    if s.len() > TEXT_BYTES_MAX {
        return Err(format!("{what} of {} bytes", s.len()));
    }
    Ok(s.to_string())
}

fn plan_from_wire(p: Option<v1::Plan>) -> std::result::Result<PlanInfo, String> {
    let p = p.ok_or("the answer has no plan")?;
    let replicas_max = limits::REPLICATION_FACTOR_MAX as usize;
    let actions = p
        .actions
        .iter()
        .map(|a| {
            limits::check_topic_name(&a.topic).map_err(|e| format!("plan action on {:?}: {e}", a.topic))?;
            let kind = match v1::plan_action::Kind::try_from(a.kind) {
                Ok(v1::plan_action::Kind::Move) => ActionKind::Move,
                Ok(v1::plan_action::Kind::PreferLeader) => ActionKind::PreferLeader,
                _ => ActionKind::Other,
            };
            Ok(PlanAction {
                kind,
                topic: a.topic.clone(),
                partition: a.partition,
                group_id: a.group_id,
                from: ids_from_wire("plan action from", &a.from, replicas_max)?,
                to: ids_from_wire("plan action to", &a.to, replicas_max)?,
                reason: text_from_wire("a reason", &a.reason)?,
                text: text_from_wire("an action", &a.text)?,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let notes = p.notes.iter().map(|n| text_from_wire("a note", n)).collect::<std::result::Result<_, _>>()?;
    Ok(PlanInfo { actions, notes })
}

fn move_from_wire(m: &v1::Move) -> std::result::Result<MoveInfo, String> {
    limits::check_topic_name(&m.topic).map_err(|e| format!("move of {:?}: {e}", m.topic))?;
    let replicas_max = limits::REPLICATION_FACTOR_MAX as usize;
    Ok(MoveInfo {
        topic: m.topic.clone(),
        partition: m.partition,
        group_id: m.group_id,
        move_id: m.move_id,
        from: ids_from_wire("move from", &m.from, replicas_max)?,
        to: ids_from_wire("move to", &m.to, replicas_max)?,
        reason: text_from_wire("a reason", &m.reason)?,
        leader: (m.leader_id != 0).then_some(m.leader_id),
        progress: m
            .progress
            .iter()
            .take(replicas_max)
            .map(|c| CatchUpInfo { node: c.node, matched: c.matched, leader_last: c.leader_last })
            .collect(),
    })
}

fn controllers_from_wire(c: Option<v1::Controllers>) -> std::result::Result<ControllersInfo, String> {
    let c = c.ok_or("the answer has no controllers")?;
    // Learners are every other node of the cluster: no tighter bound than the brokers.
    Ok(ControllersInfo {
        leader: (c.leader_id != 0).then_some(c.leader_id),
        voters: ids_from_wire("voters", &c.voters, request::CONTROLLERS_MAX)?,
        learners: ids_from_wire("learners", &c.learners, 1 << 16)?,
        changing: c.changing,
    })
}

/// Merges the moves several nodes reported: one per move, with the catch-up progress and
/// the leader from whichever node knew them. When the metadata leader's answer is among
/// them, its list of moves is the truth (a lagging node may still list a finished move);
/// otherwise every move any node listed is kept.
pub(crate) fn merge_moves(answers: Vec<(NodeId, Vec<MoveInfo>)>, metadata_leader: Option<NodeId>) -> Vec<MoveInfo> {
    type Key = (String, PartitionId, u64);
    let key = |m: &MoveInfo| (m.topic.clone(), m.partition, m.move_id);
    let authoritative: Option<std::collections::BTreeSet<Key>> =
        answers.iter().find(|(by, _)| Some(*by) == metadata_leader).map(|(_, moves)| moves.iter().map(key).collect());
    let mut merged: BTreeMap<Key, MoveInfo> = BTreeMap::new();
    for m in answers.into_iter().flat_map(|(_, moves)| moves) {
        let k = key(&m);
        if authoritative.as_ref().is_some_and(|a| !a.contains(&k)) {
            continue;
        }
        match merged.get_mut(&k) {
            None => {
                merged.insert(k, m);
            }
            Some(known) => {
                if known.progress.is_empty() && !m.progress.is_empty() {
                    known.progress = m.progress;
                    // The node with progress leads the partition: its word on the leader wins.
                    known.leader = m.leader.or(known.leader);
                } else if known.leader.is_none() {
                    known.leader = m.leader;
                }
            }
        }
    }
    merged.into_values().collect()
}

impl Client {
    /// Registers a node that joins the cluster (what `flotilla node --join` does),
    /// reached by clients at `addr` and by other nodes at `rpc_addr` (empty: `addr`).
    /// Idempotent: registering again updates its addresses and labels.
    pub async fn add_node(&self, id: NodeId, addr: &str, rpc_addr: &str, labels: &Labels) -> Result<()> {
        let wire = v1::AddNodeRequest {
            id,
            addr: addr.to_string(),
            rpc_addr: rpc_addr.to_string(),
            labels: Some(labels.into()),
        };
        request::AddNode::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(true, move |ch, addr| {
            let wire = wire.clone();
            async move { answered(&addr, &admin(ch).add_node(wire).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }

    /// Drains a node: every replica moves off it, it gets no new ones.
    pub async fn drain_node(&self, id: NodeId) -> Result<()> {
        self.drain(id, false).await
    }

    /// Makes a draining node active again.
    pub async fn undrain_node(&self, id: NodeId) -> Result<()> {
        self.drain(id, true).await
    }

    async fn drain(&self, id: NodeId, undo: bool) -> Result<()> {
        let wire = v1::DrainNodeRequest { id, undo };
        request::DrainNode::try_from(wire).map_err(refused)?;
        self.admin_write(true, move |ch, addr| async move {
            answered(&addr, &admin(ch).drain_node(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
        })
        .await
    }

    /// Removes a node that hosts no replica (drain it first) and does not vote in the
    /// metadata group (see [`Client::set_controllers`]). Its id is never reused.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        let wire = v1::RemoveNodeRequest { id };
        request::NodeRef::try_from(wire).map_err(refused)?;
        self.admin_write(false, move |ch, addr| async move {
            answered(&addr, &admin(ch).remove_node(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
        })
        .await
    }

    /// Starts replacing node `id`, which lost its data, under its old id (RFC 0008), or
    /// with `status_only` only reports how far its replacement got. The node must be
    /// stopped. Once the answer says `ready`, start it on an empty data directory.
    pub async fn replace_node(&self, id: NodeId, status_only: bool) -> Result<ReplacementInfo> {
        let wire = v1::ReplaceNodeRequest { id, status_only };
        request::ReplaceNode::try_from(wire).map_err(refused)?;
        let kind = if status_only { Kind::Read } else { Kind::Write { retry_indeterminate: true } };
        self.inner
            .call(Target::MetadataLeader, kind, Duration::ZERO, None, move |ch, addr| async move {
                let r = admin(ch).replace_node(wire).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                if !matches!(r.state.as_str(), "none" | "removing" | "ready") {
                    return Err(ClientError::protocol(&addr, format!("unknown replacement state '{}'", r.state)));
                }
                Ok(ReplacementInfo {
                    node: id,
                    state: r.state,
                    groups_left: r.groups_left,
                    metadata_voter: r.metadata_voter,
                    first_new_group: r.first_new_group,
                })
            })
            .await
    }

    /// Moves a partition to `replicas` (the first becomes its preferred leader); the id
    /// of the move started.
    pub async fn reassign(&self, topic: &str, partition: PartitionId, replicas: &[NodeId]) -> Result<u64> {
        let wire = v1::ReassignRequest { topic: topic.to_string(), partition, replicas: replicas.to_vec() };
        request::Reassign::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(false, move |ch, addr| {
            let wire = wire.clone();
            async move {
                let r = admin(ch).reassign(wire).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                Ok(r.move_id)
            }
        })
        .await
    }

    /// Makes `to` the partition's preferred leader; leadership moves to it once it has
    /// caught up.
    pub async fn transfer_leader(&self, topic: &str, partition: PartitionId, to: NodeId) -> Result<()> {
        let wire = v1::TransferLeaderRequest { topic: topic.to_string(), partition, to };
        request::TransferLeader::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(true, move |ch, addr| {
            let wire = wire.clone();
            async move {
                answered(&addr, &admin(ch).transfer_leader(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
            }
        })
        .await
    }

    /// Cancels a partition's move: it goes back to its replicas.
    pub async fn cancel_move(&self, topic: &str, partition: PartitionId) -> Result<()> {
        let wire = v1::CancelMoveRequest { topic: topic.to_string(), partition };
        request::TopicPartition::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(false, move |ch, addr| {
            let wire = wire.clone();
            async move {
                answered(&addr, &admin(ch).cancel_move(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
            }
        })
        .await
    }

    /// Runs the planner now and starts what it finds (moves up to the concurrency
    /// limit); the plan.
    pub async fn balance(&self) -> Result<PlanInfo> {
        self.admin_write(false, |ch, addr| async move {
            let r = admin(ch).balance(v1::BalanceRequest {}).await.map_err(rpc_err(&addr))?.into_inner();
            answered(&addr, &r.error)?;
            plan_from_wire(r.plan).map_err(|e| ClientError::protocol(&addr, e))
        })
        .await
    }

    /// What the controller would do in `scenario`, without doing it, as the metadata
    /// leader sees the cluster. A scenario the cluster cannot satisfy (too few eligible
    /// nodes for a policy) fails with the reason.
    pub async fn plan(&self, scenario: &PlanScenario) -> Result<PlanInfo> {
        let wire = v1::PlanRequest::from(scenario);
        request::PlanScenario::try_from(wire.clone()).map_err(refused)?;
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| {
                let wire = wire.clone();
                async move {
                    let r = admin(ch).plan(wire).await.map_err(rpc_err(&addr))?.into_inner();
                    answered(&addr, &r.error)?;
                    plan_from_wire(r.plan).map_err(|e| ClientError::protocol(&addr, e))
                }
            })
            .await
    }

    /// The moves in progress, with their catch-up progress. Only a partition's leader
    /// knows its progress, so every live node is asked and the answers merged (the
    /// metadata leader's list of moves wins when it answers); nodes that do not answer
    /// are skipped (their partitions show no progress). Fails only when no node answers.
    pub async fn moves(&self) -> Result<Vec<MoveInfo>> {
        let cluster = self.metadata().await?;
        let mut asked = tokio::task::JoinSet::new();
        for b in cluster.brokers.into_iter().filter(|b| b.may_serve()) {
            let client = self.clone();
            asked.spawn(async move { client.moves_at(&b.addr).await });
        }
        let (mut answers, mut last) = (Vec::new(), None);
        while let Some(r) = asked.join_next().await {
            match r {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(e)) => last = Some(e),
                Err(e) => last = Some(ClientError::refused(ErrorCode::Internal, format!("a request task failed: {e}"))),
            }
        }
        if answers.is_empty() {
            return Err(last.unwrap_or_else(|| ClientError::refused(ErrorCode::Unavailable, "no node to ask")));
        }
        Ok(merge_moves(answers, cluster.metadata_leader))
    }

    /// The moves as the node at `addr` reports them (one attempt), with its id.
    async fn moves_at(&self, addr: &str) -> Result<(NodeId, Vec<MoveInfo>)> {
        let ch = self.inner.channel(addr)?;
        let after = self.inner.config.request_timeout;
        let r = match tokio::time::timeout(after, admin(ch).list_moves(v1::ListMovesRequest {})).await {
            Ok(r) => r.map_err(rpc_err(addr))?.into_inner(),
            Err(_) => {
                self.inner.forget_channel(addr);
                return Err(ClientError::Timeout { addr: addr.to_string(), after });
            }
        };
        answered(addr, &r.error)?;
        let moves = r
            .moves
            .iter()
            .map(move_from_wire)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| ClientError::protocol(addr, e))?;
        Ok((r.answered_by, moves))
    }

    /// Replaces a topic's replication factor and placement policy; the controller then
    /// moves the replicas that break it.
    pub async fn set_topic_config(&self, name: &str, replication_factor: u32, policy: &TopicPolicy) -> Result<()> {
        let wire = v1::SetTopicConfigRequest {
            name: name.to_string(),
            replication_factor,
            policy: Some(policy.into()),
            merge: false,
            reset: Vec::new(),
        };
        self.topic_config_request(wire).await
    }

    /// Changes only what is given of a topic's config: the replication factor when
    /// `Some`, the policy's lists when not empty and its values when `Some`, and clears
    /// the keys named in `reset` (`retention-ms`, `allowed-regions`, ...).
    pub async fn alter_topic_config(
        &self,
        name: &str,
        replication_factor: Option<u32>,
        policy: &TopicPolicy,
        reset: &[String],
    ) -> Result<()> {
        let wire = v1::SetTopicConfigRequest {
            name: name.to_string(),
            replication_factor: replication_factor.unwrap_or(0),
            policy: Some(policy.into()),
            merge: true,
            reset: reset.to_vec(),
        };
        self.topic_config_request(wire).await
    }

    async fn topic_config_request(&self, wire: v1::SetTopicConfigRequest) -> Result<()> {
        request::TopicConfig::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(true, move |ch, addr| {
            let wire = wire.clone();
            async move {
                answered(&addr, &admin(ch).set_topic_config(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
            }
        })
        .await
    }

    /// Grows a topic to `total` partitions (never shrinks).
    pub async fn add_partitions(&self, name: &str, total: u32) -> Result<()> {
        let wire = v1::AddPartitionsRequest { name: name.to_string(), total };
        request::AddPartitions::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(false, move |ch, addr| {
            let wire = wire.clone();
            async move {
                answered(&addr, &admin(ch).add_partitions(wire).await.map_err(rpc_err(&addr))?.into_inner().error)
            }
        })
        .await?;
        let _ = self.inner.refresh(&[name.to_string()]).await;
        Ok(())
    }

    /// The metadata group's voters, learners and leader, as the metadata leader (or,
    /// while it is unknown, any node) sees them.
    pub async fn controllers(&self) -> Result<ControllersInfo> {
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| async move {
                let r = admin(ch)
                    .describe_controllers(v1::DescribeControllersRequest {})
                    .await
                    .map_err(rpc_err(&addr))?
                    .into_inner();
                answered(&addr, &r.error)?;
                controllers_from_wire(r.controllers).map_err(|e| ClientError::protocol(&addr, e))
            })
            .await
    }

    /// Makes `voters` the metadata group's voters (grow, shrink, replace a dead one), at
    /// the metadata leader. Every new voter must be registered, alive and caught up; an
    /// `UNAVAILABLE` answer while one catches up is retried until the retry deadline.
    pub async fn set_controllers(&self, voters: &[NodeId]) -> Result<ControllersInfo> {
        let wire = v1::SetControllersRequest { voters: voters.to_vec() };
        request::SetControllers::try_from(wire.clone()).map_err(refused)?;
        self.admin_write(true, |ch, addr| {
            let wire = wire.clone();
            async move {
                let r = admin(ch).set_controllers(wire).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                controllers_from_wire(r.controllers).map_err(|e| ClientError::protocol(&addr, e))
            }
        })
        .await
    }

    /// One metadata write, at the metadata leader when known, retried by the usual
    /// rules; after an unknown outcome only when `idempotent`.
    pub(crate) async fn admin_write<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T>
    where
        F: FnMut(crate::wire::Conn, String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let kind = Kind::Write { retry_indeterminate: idempotent };
        self.inner.call(Target::MetadataLeader, kind, Duration::ZERO, None, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(topic: &str, move_id: u64, leader: Option<NodeId>, progress: &[(NodeId, u64, u64)]) -> MoveInfo {
        MoveInfo {
            topic: topic.into(),
            partition: 0,
            group_id: 7,
            move_id,
            from: vec![1, 2, 3],
            to: vec![1, 2, 4],
            reason: "drain node 3".into(),
            leader,
            progress: progress
                .iter()
                .map(|&(node, matched, leader_last)| CatchUpInfo { node, matched: Some(matched), leader_last })
                .collect(),
        }
    }

    #[test]
    fn moves_from_several_nodes_merge_with_the_leaders_progress() {
        let answers = || {
            vec![
                (1, vec![mv("a", 10, None, &[]), mv("b", 11, Some(2), &[])]),
                (2, vec![mv("a", 10, Some(1), &[(4, 1234, 2000)]), mv("b", 11, None, &[])]),
                (3, vec![mv("a", 10, Some(9), &[]), mv("c", 12, None, &[])]),
            ]
        };
        // Node 1 leads the metadata group: node 3's move of c is stale.
        let merged = merge_moves(answers(), Some(1));
        assert_eq!(merged.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(merged[0].leader, Some(1));
        assert_eq!(merged[0].progress, vec![CatchUpInfo { node: 4, matched: Some(1234), leader_last: 2000 }]);
        assert_eq!(merged[0].progress[0].percent(), 61);
        assert_eq!(merged[1].leader, Some(2));
        assert!(merged[1].progress.is_empty());
        // Without the metadata leader's answer every move listed is kept.
        assert_eq!(merge_moves(answers(), Some(5)).len(), 3);
        assert_eq!(merge_moves(answers(), None).len(), 3);
        assert_eq!(CatchUpInfo { node: 4, matched: None, leader_last: 2000 }.percent(), 0);
        assert_eq!(CatchUpInfo { node: 1, matched: Some(0), leader_last: 0 }.percent(), 100);
    }

    #[test]
    fn plans_are_checked_off_the_wire() {
        let wire = v1::Plan {
            actions: vec![
                v1::PlanAction {
                    kind: v1::plan_action::Kind::Move.into(),
                    topic: "t".into(),
                    partition: 1,
                    group_id: 5,
                    from: vec![1, 2, 3],
                    to: vec![1, 2, 4],
                    reason: "drain node 3".into(),
                    text: "t/1 (group 5): [1,2,3] -> [1,2,4]: drain node 3".into(),
                },
                v1::PlanAction { kind: 99, topic: "t".into(), ..Default::default() },
            ],
            notes: vec!["balance waits".into()],
        };
        let p = plan_from_wire(Some(wire.clone())).unwrap();
        assert_eq!(p.actions[0].kind, ActionKind::Move);
        assert_eq!(p.actions[0].to, vec![1, 2, 4]);
        assert_eq!(p.actions[1].kind, ActionKind::Other);
        assert_eq!(p.notes, vec!["balance waits".to_string()]);
        let mut bad = wire.clone();
        bad.actions[0].to = vec![0];
        assert!(plan_from_wire(Some(bad)).is_err());
        let mut bad = wire;
        bad.actions[0].topic = "no way".into();
        assert!(plan_from_wire(Some(bad)).is_err());
        assert!(plan_from_wire(None).is_err());
    }

    #[test]
    fn scenarios_go_on_the_wire_checkable() {
        let scenarios = [
            PlanScenario::Now,
            PlanScenario::Drain(3),
            PlanScenario::Dead(2),
            PlanScenario::AddNode { id: 9, labels: Labels { zone: "c".into(), ..Default::default() } },
            PlanScenario::TopicConfig { name: "t".into(), replication_factor: 5, policy: TopicPolicy::default() },
        ];
        for s in &scenarios {
            assert!(request::PlanScenario::try_from(v1::PlanRequest::from(s)).is_ok(), "{s:?}");
        }
        assert!(request::PlanScenario::try_from(v1::PlanRequest::from(&PlanScenario::Drain(0))).is_err());
    }

    #[test]
    fn controllers_are_checked_off_the_wire() {
        let c = controllers_from_wire(Some(v1::Controllers {
            leader_id: 2,
            voters: vec![1, 2, 3],
            learners: vec![4],
            changing: false,
        }))
        .unwrap();
        assert_eq!((c.leader, c.voters.len(), c.learners.clone()), (Some(2), 3, vec![4]));
        let too_many = v1::Controllers { voters: (1..=8).collect(), ..Default::default() };
        assert!(controllers_from_wire(Some(too_many)).is_err());
        assert_eq!(controllers_from_wire(Some(v1::Controllers::default())).unwrap().leader, None);
    }
}
