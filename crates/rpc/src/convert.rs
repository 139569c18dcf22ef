//! Conversions between protobuf messages and the node's domain types.

use flotilla_metadata::placement::{Action, Plan};
use flotilla_node::admin::{ControllersInfo, MoveInfo};
use flotilla_node::{ApiError, BrokerInfo, PartitionInfo, TopicInfo};
use flotilla_proto::v1;

pub(crate) fn error(e: &ApiError) -> v1::Error {
    let (leader_id, leader_addr) = e.leader.clone().unwrap_or((0, String::new()));
    v1::Error { code: e.code.as_u32(), message: e.message.clone(), leader_id, leader_addr }
}

pub(crate) fn partition(p: &PartitionInfo) -> v1::PartitionMetadata {
    v1::PartitionMetadata {
        partition: p.partition,
        group_id: p.group_id,
        leader_id: p.leader.unwrap_or(0),
        replicas: p.replicas.clone(),
        high_watermark: p.high_watermark,
    }
}

pub(crate) fn topic(t: &TopicInfo) -> v1::TopicMetadata {
    v1::TopicMetadata {
        name: t.name.clone(),
        error: None,
        replication_factor: t.replication_factor,
        partitions: t.partitions.iter().map(partition).collect(),
    }
}

pub(crate) fn broker(b: &BrokerInfo) -> v1::Broker {
    v1::Broker {
        id: b.id,
        addr: b.addr.clone(),
        region: b.region.clone(),
        zone: b.zone.clone(),
        rack: b.rack.clone(),
        state: b.state.clone(),
        role: b.role.clone(),
        replicas: b.replicas,
        preferred_leaders: b.preferred_leaders,
        rpc_addr: b.rpc_addr.clone(),
    }
}

fn action(a: &Action) -> v1::PlanAction {
    use v1::plan_action::Kind;
    let text = a.to_string();
    match a {
        Action::Move { topic, partition, group, from, to, reason } => v1::PlanAction {
            kind: Kind::Move.into(),
            topic: topic.clone(),
            partition: *partition,
            group_id: *group,
            from: from.clone(),
            to: to.clone(),
            reason: reason.clone(),
            text,
        },
        Action::PreferLeader { topic, partition, group, from, to, reason } => v1::PlanAction {
            kind: Kind::PreferLeader.into(),
            topic: topic.clone(),
            partition: *partition,
            group_id: *group,
            from: vec![*from],
            to: vec![*to],
            reason: reason.clone(),
            text,
        },
    }
}

pub(crate) fn plan(p: &Plan) -> v1::Plan {
    v1::Plan { actions: p.actions.iter().map(action).collect(), notes: p.notes.clone() }
}

pub(crate) fn move_info(m: &MoveInfo) -> v1::Move {
    v1::Move {
        topic: m.topic.clone(),
        partition: m.partition,
        group_id: m.group_id,
        move_id: m.move_id,
        from: m.from.clone(),
        to: m.to.clone(),
        reason: m.reason.clone(),
        leader_id: m.leader.unwrap_or(0),
        progress: m
            .progress
            .iter()
            .map(|c| v1::CatchUp { node: c.node, matched: c.matched, leader_last: c.leader_last })
            .collect(),
    }
}

pub(crate) fn controllers(c: &ControllersInfo) -> v1::Controllers {
    v1::Controllers {
        leader_id: c.leader.unwrap_or(0),
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        changing: c.changing,
    }
}
