//! openraft's state machine over Flotilla's pure state machines.
//!
//! The state lives in memory and is rebuilt on start by re-applying the log up to the
//! saved committed id (the log is the partition's data, so this is also what a follower
//! does when it catches up). Readers on the node share it through `SharedState`, and a
//! watch channel tells long-polling fetches when something new was applied.

use std::io::{self, Cursor};
use std::sync::{Arc, RwLock};

use flotilla_metadata::MetadataState;
use flotilla_partition::PartitionState;
use flotilla_types::planted::{self, Bug};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log_store::{decode, encode};
use crate::{Command, Response, TypeConfig};

/// The application state of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    Metadata(MetadataState),
    Partition(PartitionState),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: GroupState,
}

/// The part of a group's state machine that the rest of the node reads.
pub struct SharedState {
    inner: RwLock<Applied>,
    applied_tx: watch::Sender<u64>,
}

impl SharedState {
    /// Runs `f` on the current state. Never call it across an `.await`.
    pub fn read<R>(&self, f: impl FnOnce(&GroupState) -> R) -> R {
        f(&self.inner.read().expect("state lock poisoned").state)
    }

    /// A receiver that changes whenever entries are applied (its value: the last applied
    /// log index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    pub fn last_applied_index(&self) -> u64 {
        self.inner.read().expect("state lock poisoned").last_applied.as_ref().map_or(0, |l| l.index)
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    current_snapshot: Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>,
    /// The leader of the last produce applied; only the planted bug `DoubleApply` reads it.
    last_produce_leader: Option<String>,
}

impl StateMachineStore {
    pub fn new(initial: GroupState) -> StateMachineStore {
        let (applied_tx, _) = watch::channel(0);
        let inner = Applied { last_applied: None, membership: Default::default(), state: initial };
        StateMachineStore {
            shared: Arc::new(SharedState { inner: RwLock::new(inner), applied_tx }),
            current_snapshot: None,
            last_produce_leader: None,
        }
    }

    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }
}

fn apply_one(state: &mut GroupState, index: u64, payload: &crate::Payload) -> Response {
    match (state, payload) {
        (GroupState::Metadata(s), EntryPayload::Normal(Command::Metadata(c))) => Response::Metadata(s.apply(index, c)),
        (GroupState::Partition(s), EntryPayload::Normal(Command::Partition(c))) => {
            Response::Partition(s.apply(index, c))
        }
        (GroupState::Metadata(s), EntryPayload::Normal(_)) => {
            s.skip(index);
            Response::WrongGroup
        }
        (GroupState::Partition(s), EntryPayload::Normal(_)) => {
            s.skip(index);
            Response::WrongGroup
        }
        (GroupState::Metadata(s), _) => {
            s.skip(index);
            Response::None
        }
        (GroupState::Partition(s), _) => {
            s.skip(index);
            Response::None
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let applied = self.shared.inner.read().expect("state lock poisoned").clone();
        let data = encode(&applied);
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
        };
        self.current_snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, _> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.shared.inner.read().expect("state lock poisoned");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut inner = self.shared.inner.write().expect("state lock poisoned");
                let index = entry.log_id.index;
                if let Some(prev) = &inner.last_applied {
                    assert!(index > prev.index, "entry {index} applied after {}", prev.index);
                }
                if let EntryPayload::Membership(m) = &entry.payload {
                    inner.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                }
                let mut response = apply_one(&mut inner.state, index, &entry.payload);
                if planted::armed(Bug::DoubleApply)
                    && let (GroupState::Partition(p), EntryPayload::Normal(Command::Partition(c))) =
                        (&mut inner.state, &entry.payload)
                {
                    let leader = format!("{:?}", entry.log_id.leader_id);
                    if self.last_produce_leader.as_ref().is_some_and(|l| *l != leader) {
                        response = Response::Partition(p.planted_reapply(c));
                    }
                    self.last_produce_leader = Some(leader);
                }
                inner.last_applied = Some(entry.log_id);
                response
            };
            last = Some(entry.log_id.index);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        if let Some(index) = last {
            self.shared.applied_tx.send_replace(index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let applied: Applied = decode(&data, "snapshot")?;
        if applied.last_applied != meta.last_log_id {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot contents disagree with its metadata"));
        }
        let index = applied.last_applied.as_ref().map_or(0, |l| l.index);
        *self.shared.inner.write().expect("state lock poisoned") = applied;
        self.current_snapshot = Some((meta.clone(), data));
        self.shared.applied_tx.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        Ok(self.current_snapshot.as_ref().map(|(meta, data)| SnapshotOf::<TypeConfig, _> {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        }))
    }
}
