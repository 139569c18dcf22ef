//! Operator requests behind the admin API and `flotilla cluster …`: adding, draining and
//! removing nodes, moving partitions and leaders, planning without doing, topic
//! configuration, and the metadata group's voters.
//!
//! Each request becomes a metadata command (forwarded to the metadata leader by the
//! node that receives it) and is checked where it is applied, so every way in gets the
//! same answer; the controller and the partition leaders carry it out.

use std::collections::BTreeSet;

use flotilla_metadata::placement::{self, Plan};
use flotilla_metadata::{
    AdminState, Broker, Command as MetaCommand, Labels, Liveness, MetadataState, Response as MetaResponse, TopicPolicy,
};
use flotilla_raft::RaftTransport;
use flotilla_types::{ErrorCode, GroupId, METADATA_GROUP, NodeId, PartitionId, limits};

use crate::{ApiError, Node};

pub use flotilla_types::cluster::{CatchUpInfo, ControllersInfo, MoveInfo, PlanScenario, ReplacementInfo};

/// Moves a plan may list at most (a dry run is not limited by the concurrency setting).
const PLAN_MOVES_MAX: usize = 100_000;

impl<T: RaftTransport> Node<T> {
    fn group_of(&self, topic: &str, partition: PartitionId) -> Result<GroupId, ApiError> {
        self.with_metadata(|m| {
            let t = m
                .topic(topic)
                .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist")))?;
            t.partitions.get(partition as usize).map(|p| p.group).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPartition,
                    format!("topic '{topic}' has {} partitions; {partition} does not exist", t.partitions.len()),
                )
            })
        })
    }

    fn known_node(&self, id: NodeId) -> Result<Broker, ApiError> {
        self.with_metadata(|m| m.brokers().get(&id).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownNode, format!("node {id} is not registered")))
    }

    /// Registers a node that is joining (`flotilla node --join`), reached by clients at
    /// `addr` and by other nodes at `rpc_addr` (empty: `addr`); the controller then adds
    /// it to the metadata group and gives it replicas.
    pub async fn add_node(&self, id: NodeId, addr: &str, rpc_addr: &str, labels: Labels) -> Result<(), ApiError> {
        let broker = Broker::new(id, addr, labels).with_rpc_addr(if rpc_addr.is_empty() { addr } else { rpc_addr });
        self.metadata_write(MetaCommand::RegisterBroker(broker)).await.map(|_| ())
    }

    /// Moves every replica off the node (and stops giving it new ones).
    pub async fn drain_node(&self, id: NodeId) -> Result<(), ApiError> {
        self.known_node(id)?;
        self.metadata_write(MetaCommand::SetAdmin { node: id, admin: AdminState::Draining }).await?;
        self.inner.controller_kick.notify_one();
        Ok(())
    }

    /// Makes a draining node active again.
    pub async fn undrain_node(&self, id: NodeId) -> Result<(), ApiError> {
        self.known_node(id)?;
        self.metadata_write(MetaCommand::SetAdmin { node: id, admin: AdminState::Active }).await.map(|_| ())
    }

    /// Removes an empty node from the cluster for good. A metadata voter must first be
    /// replaced (`set_controllers`).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ApiError> {
        self.known_node(id)?;
        if self.metadata_group().membership().voters().contains(&id) {
            return Err(ApiError::new(
                ErrorCode::PolicyViolation,
                format!("node {id} votes in the metadata group; change the controllers first"),
            ));
        }
        self.metadata_write(MetaCommand::SetAdmin { node: id, admin: AdminState::Removed }).await.map(|_| ())
    }

    /// Starts replacing node `id`, which lost its data, under its old id (unless
    /// `status_only`), and reports how far the replacement got (RFC 0008). The node must
    /// be stopped: the cluster must not hear from it. Idempotent.
    pub async fn replace_node(&self, id: NodeId, status_only: bool) -> Result<ReplacementInfo, ApiError> {
        self.known_node(id)?;
        if !status_only {
            let metadata_voter = self.metadata_group().membership().voters().contains(&id);
            let op = flotilla_metadata::replace::ReplaceOp::Start { metadata_voter };
            self.metadata_write(MetaCommand::Replace { node: id, op }).await?;
            // This node's replica applies the command shortly after the leader answered.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while self.with_metadata(|m| !m.replacements().contains_key(&id)) && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            self.inner.controller_kick.notify_one();
        }
        Ok(self.with_metadata(|m| match m.replacements().get(&id) {
            None => ReplacementInfo {
                node: id,
                state: "none".into(),
                groups_left: vec![],
                metadata_voter: false,
                first_new_group: 0,
            },
            Some(r) => ReplacementInfo {
                node: id,
                state: if r.ready() { "ready" } else { "removing" }.into(),
                groups_left: r.pending.iter().copied().collect(),
                metadata_voter: r.metadata_voter,
                first_new_group: r.first_new_group,
            },
        }))
    }

    /// Moves a partition to `replicas` (the first becomes its preferred leader).
    pub async fn reassign(&self, topic: &str, partition: PartitionId, replicas: Vec<NodeId>) -> Result<u64, ApiError> {
        let group = self.group_of(topic, partition)?;
        for r in &replicas {
            self.known_node(*r)?;
        }
        // Hard constraints are checked here, so the controller never undoes what an
        // operator asked for.
        self.with_metadata(|m| {
            let t = m.topic(topic).expect("group_of found it");
            let current = &t.partitions[partition as usize].replicas;
            placement::check_replica_set(m.brokers(), &t.policy, current, &replicas)
        })
        .map_err(|why| ApiError::new(ErrorCode::PolicyViolation, format!("{topic}/{partition}: {why}")))?;
        let cmd = MetaCommand::StartMove { group, target: replicas, reason: "reassigned by an operator".into() };
        match self.metadata_write(cmd).await? {
            MetaResponse::MoveStarted(id) => Ok(id),
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }

    /// Makes `to` the partition's preferred leader; its current leader hands over within
    /// a tick once `to` has caught up.
    pub async fn transfer_leader(&self, topic: &str, partition: PartitionId, to: NodeId) -> Result<(), ApiError> {
        let group = self.group_of(topic, partition)?;
        self.known_node(to)?;
        self.metadata_write(MetaCommand::SetPreferredLeader { group, leader: to }).await.map(|_| ())
    }

    /// Cancels a partition's move: the partition goes back to its replicas.
    pub async fn cancel_move(&self, topic: &str, partition: PartitionId) -> Result<(), ApiError> {
        let group = self.group_of(topic, partition)?;
        self.metadata_write(MetaCommand::CancelMove { group }).await.map(|_| ())
    }

    /// Runs the planner now and writes what it finds (up to the move limit); returns
    /// the plan.
    pub async fn balance_now(&self) -> Result<Plan, ApiError> {
        let in_flight = self.with_metadata(|m| m.moves().len());
        let budget = self.config().max_concurrent_moves.saturating_sub(in_flight);
        let plan = self.with_metadata(|m| placement::plan(m, budget));
        crate::controller::carry_out(self, &plan).await;
        Ok(plan)
    }

    /// What the controller would do in `scenario`, without doing it.
    pub fn plan(&self, scenario: &PlanScenario) -> Result<Plan, ApiError> {
        let mut state: MetadataState = self.with_metadata(|m| m.clone());
        let next = state.last_applied_index() + 1;
        let cmd = match scenario {
            PlanScenario::Now => None,
            PlanScenario::Drain(id) => Some(MetaCommand::SetAdmin { node: *id, admin: AdminState::Draining }),
            PlanScenario::Dead(id) => Some(MetaCommand::SetLiveness { node: *id, liveness: Liveness::Dead }),
            PlanScenario::AddNode { id, labels } => {
                Some(MetaCommand::RegisterBroker(Broker::new(*id, format!("planned-node-{id}:0"), labels.clone())))
            }
            PlanScenario::TopicConfig { name, replication_factor, policy } => Some(MetaCommand::SetTopicConfig {
                name: name.clone(),
                replication_factor: *replication_factor,
                policy: policy.clone(),
            }),
        };
        if let Some(cmd) = cmd
            && let MetaResponse::Error { code, message } = state.apply(next, &cmd)
        {
            return Err(ApiError::new(code, message));
        }
        Ok(placement::plan(&state, PLAN_MOVES_MAX))
    }

    /// Every move in progress, with catch-up progress where this node leads.
    pub fn moves(&self) -> Vec<MoveInfo> {
        let moves: Vec<(String, flotilla_metadata::PartitionAssignment)> =
            self.with_metadata(|m| m.moves().into_iter().map(|(t, p)| (t.name.clone(), p.clone())).collect());
        moves
            .into_iter()
            .filter_map(|(topic, p)| {
                let m = p.moving.clone()?;
                let local = self.groups().get(p.group);
                let progress = match &local {
                    Some(g) if g.is_leader() => {
                        let voters = g.membership().voters();
                        let new: Vec<NodeId> = m.target.iter().copied().filter(|n| !voters.contains(n)).collect();
                        self.catch_up(g, &new)
                            .into_iter()
                            .map(|c| CatchUpInfo { node: c.node, matched: c.matched, leader_last: c.leader_last })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                Some(MoveInfo {
                    topic,
                    partition: p.partition,
                    group_id: p.group,
                    move_id: m.id,
                    from: p.replicas.clone(),
                    to: m.target.clone(),
                    reason: m.reason.clone(),
                    leader: local.and_then(|g| g.leader()),
                    progress,
                })
            })
            .collect()
    }

    pub async fn set_topic_config(
        &self,
        name: &str,
        replication_factor: u32,
        policy: TopicPolicy,
    ) -> Result<(), ApiError> {
        let cmd = MetaCommand::SetTopicConfig { name: name.to_string(), replication_factor, policy };
        self.metadata_write(cmd).await?;
        self.inner.controller_kick.notify_one();
        Ok(())
    }

    /// A topic's replication factor and policy, as this node's metadata has them.
    pub fn topic_config(&self, name: &str) -> Result<(u32, TopicPolicy), ApiError> {
        self.with_metadata(|m| m.topic(name).map(|t| (t.replication_factor, t.policy.clone())))
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("topic '{name}' does not exist")))
    }

    pub async fn add_partitions(&self, name: &str, total: u32) -> Result<(), ApiError> {
        self.metadata_write(MetaCommand::AddPartitions { name: name.to_string(), total }).await.map(|_| ())
    }

    pub fn controllers(&self) -> ControllersInfo {
        let g = self.metadata_group();
        let m = g.membership();
        ControllersInfo {
            leader: g.leader(),
            voters: m.voters().into_iter().collect(),
            learners: m.learners.into_iter().collect(),
            changing: !m.committed || m.configs.len() > 1,
        }
    }

    /// Makes `voters` the metadata group's voters (grow, shrink, replace a dead one).
    /// Only the metadata leader can; others answer NOT_LEADER naming it. Every new voter
    /// must be a registered, caught-up member; a quorum of the old and of the new voters
    /// must be reachable.
    pub async fn set_controllers(&self, voters: Vec<NodeId>) -> Result<ControllersInfo, ApiError> {
        let set: BTreeSet<NodeId> = voters.iter().copied().collect();
        if set.is_empty() || set.len() != voters.len() || set.len() > limits::CONTROLLERS_MAX {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("controllers: 1 to {} distinct node ids", limits::CONTROLLERS_MAX),
            ));
        }
        for v in &set {
            let b = self.known_node(*v)?;
            if b.admin != AdminState::Active || b.liveness != Liveness::Alive {
                return Err(ApiError::new(
                    ErrorCode::PolicyViolation,
                    format!("node {v} is {}; a controller must be alive and active", b.state_name()),
                ));
            }
        }
        let g = self.metadata_group();
        if !g.is_leader() {
            return Err(self.not_metadata_leader(g.leader()));
        }
        let members = g.membership();
        if let Some(missing) = set.iter().find(|v| !members.contains(**v)) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("node {missing} is not a member of the metadata group yet; retry shortly"),
            ));
        }
        let new: Vec<NodeId> = set.iter().copied().filter(|v| !members.voters().contains(v)).collect();
        if let Some(lag) = self.catch_up(&g, &new).into_iter().find(|c| !c.in_sync) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "node {} is catching up ({} of {} entries); retry shortly",
                    lag.node,
                    lag.matched.unwrap_or(0),
                    lag.leader_last
                ),
            ));
        }
        g.change_voters(set, true).await.map_err(|e| self.controllers_error(e))?;
        Ok(self.controllers())
    }

    pub(crate) fn not_metadata_leader(&self, leader: Option<NodeId>) -> ApiError {
        let leader = leader.filter(|l| *l != self.id()).and_then(|l| self.client_addr(l).map(|a| (l, a)));
        let message = match &leader {
            Some((id, addr)) => {
                format!("node {} does not lead the metadata group; node {id} at {addr} does", self.id())
            }
            None => format!("node {} does not lead the metadata group (group {METADATA_GROUP})", self.id()),
        };
        ApiError { code: ErrorCode::NotLeader, message, leader }
    }
}
