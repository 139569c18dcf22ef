//! Conversions between protobuf messages and the node's domain types.

use flotilla_node::{ApiError, BrokerView, PartitionView, TopicView};
use flotilla_proto::v1;

pub(crate) fn error(e: &ApiError) -> v1::Error {
    let (leader_id, leader_addr) = e.leader.clone().unwrap_or((0, String::new()));
    v1::Error { code: e.code.as_u32(), message: e.message.clone(), leader_id, leader_addr }
}

pub(crate) fn partition(p: &PartitionView) -> v1::PartitionMetadata {
    v1::PartitionMetadata {
        partition: p.partition,
        group_id: p.group,
        leader_id: p.leader.unwrap_or(0),
        replicas: p.replicas.clone(),
        high_watermark: p.high_watermark,
    }
}

pub(crate) fn topic(t: &TopicView) -> v1::TopicMetadata {
    v1::TopicMetadata {
        name: t.name.clone(),
        error: None,
        replication_factor: t.replication_factor,
        partitions: t.partitions.iter().map(partition).collect(),
    }
}

pub(crate) fn broker(b: &BrokerView) -> v1::Broker {
    v1::Broker {
        id: b.id,
        addr: b.addr.clone(),
        region: b.region.clone(),
        zone: b.zone.clone(),
        rack: b.rack.clone(),
        state: b.state.clone(),
    }
}
