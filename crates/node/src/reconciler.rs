//! Background control loops of a node: registering with the metadata group, and
//! reconciling the local partition replicas toward the assignment. Both are idempotent
//! and safe to restart at any point.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_metadata::{Broker, Command as MetaCommand, Response as MetaResponse};
use flotilla_raft::{Command, GroupKind, RaftTransport, Response};
use flotilla_types::{METADATA_GROUP, NodeId};

use crate::Node;

const REGISTER_RETRY: Duration = Duration::from_millis(300);
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Registers this node (address and labels) until the metadata group has it.
pub(crate) async fn register_loop<T: RaftTransport>(node: Node<T>) {
    let me = Broker { id: node.id(), addr: node.config().advertised().to_string(), labels: node.config().labels() };
    loop {
        if node.with_metadata(|m| m.brokers().get(&me.id) == Some(&me)) {
            tracing::info!(node = me.id, "registered with the metadata group");
            return;
        }
        let group = node.metadata_group();
        let cmd = Command::Metadata(MetaCommand::RegisterBroker(me.clone()));
        match group.write_or_forward(node.groups().router(), cmd, Duration::from_secs(5)).await {
            Ok(Response::Metadata(MetaResponse::Ok)) => {}
            Ok(other) => tracing::warn!(?other, "registration refused"),
            Err(e) => tracing::debug!(error = %e, "registration not done yet"),
        }
        tokio::time::sleep(REGISTER_RETRY).await;
    }
}

/// Makes the local replicas match the assignment, whenever metadata changes and once a
/// second.
pub(crate) async fn reconcile_loop<T: RaftTransport>(node: Node<T>) {
    let mut applied = node.metadata_group().state().subscribe();
    let mut shutdown = node.shutdown_signal();
    loop {
        reconcile_once(&node).await;
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn reconcile_once<T: RaftTransport>(node: &Node<T>) {
    let me = node.id();
    let (desired, brokers) = node.with_metadata(|m| (m.groups_on(me), m.brokers().clone()));
    for (id, b) in brokers {
        if id != me && node.addresses().get(id).as_deref() != Some(b.addr.as_str()) {
            node.addresses().set(id, b.addr);
        }
    }
    for (group, replicas) in &desired {
        if node.groups().get(*group).is_some() {
            continue;
        }
        let voters: BTreeSet<NodeId> = replicas.iter().copied().collect();
        match node.groups().ensure(*group, GroupKind::Partition, &voters).await {
            Ok(_) => tracing::info!(group, ?voters, "started partition replica"),
            Err(e) => tracing::warn!(group, error = %e, "cannot start partition replica"),
        }
    }
    for group in node.groups().ids() {
        if group != METADATA_GROUP && !desired.contains_key(&group) {
            match node.groups().remove(group).await {
                Ok(()) => tracing::info!(group, "removed partition replica"),
                Err(e) => tracing::warn!(group, error = %e, "cannot remove partition replica"),
            }
        }
    }
}
