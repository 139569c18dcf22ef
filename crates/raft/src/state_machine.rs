//! openraft's state machine over Flotilla's pure state machines, persisted in the node's
//! storage engine (design decision 13, docs/decisions.md), so that a restart replays only
//! the tail of the log and a replica's memory does not grow with its data.
//!
//! - A partition group's state is a few numbers (`PartitionState`); where each batch
//!   lives goes to the offset and time index (`index`). Every apply writes the index
//!   entries and the applied state (`keys::APPLIED`) in one engine batch, before the
//!   new state is visible to readers or acknowledged. Durability comes with the log's:
//!   writes become durable in order, so a restart finds the applied state of some
//!   applied prefix, and openraft re-applies the committed entries after it (re-applying
//!   rewrites the same index entries).
//! - A partition's snapshot is taken at its *retention point*: just before the first
//!   batch still readable (the state there is a few numbers, computed from the index),
//!   never later, because the log after it is the partition's data. openraft then
//!   purges the log up to it, and installs it on a follower that is behind the leader's
//!   first entry, which then receives every retained entry. The node asks for one when a
//!   committed `DeleteRecords` moved the log start (`Group::compact_log`).
//! - The metadata group's state is its whole snapshot, taken every
//!   `config::METADATA_SNAPSHOT_EVERY` entries; a restart loads it and replays the rest.
//!
//! Readers on the node share the applied state through `SharedState`, and a watch
//! channel tells long-polling fetches when something new was applied.

use std::io::{self, Cursor};
use std::sync::{Arc, Mutex, RwLock};

use flotilla_metadata::MetadataState;
use flotilla_partition::{BatchLocation, Effect, PartitionState, ProducerTable};
use flotilla_storage::{Engine, WriteBatch};
use flotilla_types::GroupId;
use flotilla_types::planted::{self, Bug};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::keys::{self, MEMBERSHIPS, OFFSETS, TIMES};
use crate::log_store::{decode, encode, to_io, write_durable};
use crate::tail::Tail;
use crate::{Command, Response, TypeConfig};

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

/// The application state of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    Metadata(MetadataState),
    Partition(PartitionState),
}

/// What a group has applied: saved with every apply (partitions) or in its snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: GroupState,
}

/// `Applied` as written by an older version, whose metadata state is `M`
/// (`MetadataStateV1` before share groups, `MetadataStateV2` before users and ACLs,
/// `MetadataStateV3` before node replacement).
#[derive(Deserialize)]
struct AppliedBefore<M> {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: GroupStateBefore<M>,
}

#[derive(Deserialize)]
enum GroupStateBefore<M> {
    Metadata(M),
    Partition(PartitionState),
}

/// `bytes` as an applied state of the version whose metadata state is `M`, converted.
fn decode_before<M>(bytes: &[u8], what: &str) -> io::Result<Applied>
where
    M: serde::de::DeserializeOwned + Into<MetadataState>,
{
    let v = decode::<AppliedBefore<M>>(bytes, what)?;
    Ok(Applied {
        last_applied: v.last_applied,
        membership: v.membership,
        state: match v.state {
            GroupStateBefore::Metadata(m) => GroupState::Metadata(m.into()),
            GroupStateBefore::Partition(p) => GroupState::Partition(p),
        },
    })
}

/// Decodes an applied state or snapshot, of this version, the one before node
/// replacement, the one before users and ACLs or the one before share groups (each differs from the next only in the metadata
/// state's last field). Bytes of one version never decode as another: `decode` refuses
/// trailing and missing bytes.
fn decode_applied(bytes: &[u8], what: &str) -> io::Result<Applied> {
    decode::<Applied>(bytes, what)
        .or_else(|e| decode_before::<flotilla_metadata::MetadataStateV3>(bytes, what).map_err(|_| e))
        .or_else(|e| decode_before::<flotilla_metadata::MetadataStateV2>(bytes, what).map_err(|_| e))
        .or_else(|e| decode_before::<flotilla_metadata::MetadataStateV1>(bytes, what).map_err(|_| e))
}

/// A snapshot as kept in memory and under `keys::SNAPSHOT`.
type Stored = (SnapshotMetaOf<TypeConfig>, Vec<u8>);

/// The part of a group's state machine that the rest of the node reads.
pub struct SharedState {
    inner: RwLock<Applied>,
    applied_tx: watch::Sender<u64>,
    /// The current snapshot, shared by the store and its snapshot builders.
    snapshot: Mutex<Option<Stored>>,
    /// For a partition: the first offset after the current snapshot's retention point
    /// (0 without a snapshot).
    snapshot_start: std::sync::atomic::AtomicU64,
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

    /// The last applied log index (0: none yet).
    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// The last applied index and a copy of the state there.
    pub(crate) fn applied_copy(&self) -> (u64, GroupState) {
        let inner = self.inner.read().expect("state lock poisoned");
        (inner.last_applied.as_ref().map_or(0, |l| l.index), inner.state.clone())
    }

    pub fn last_applied_index(&self) -> u64 {
        self.inner.read().expect("state lock poisoned").last_applied.as_ref().map_or(0, |l| l.index)
    }

    /// For a partition: the first offset after its snapshot's retention point.
    pub fn snapshot_start(&self) -> flotilla_types::Offset {
        self.snapshot_start.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes `stored` the current snapshot; `start` is a partition's first offset after
    /// it (0 for the metadata group).
    fn set_snapshot(&self, stored: Option<Stored>, start: flotilla_types::Offset) {
        self.snapshot_start.store(start, std::sync::atomic::Ordering::Release);
        *self.snapshot.lock().expect("snapshot lock poisoned") = stored;
    }

    /// The last log index the current snapshot covers (the log is purged up to it).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.lock().expect("snapshot lock poisoned").as_ref().and_then(|(m, _)| m.last_log_id).map(|l| l.index)
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    group: GroupId,
    engine: Arc<dyn Engine>,
    shared: Arc<SharedState>,
    /// The leader of the last produce applied; only the planted bug `DoubleApply` reads it.
    last_produce_leader: Option<String>,
    /// The group's unapplied tail (`LogStore::tail`), emptied as entries are applied.
    tail: Option<Tail>,
}

impl StateMachineStore {
    /// Empties `tail` (the group's log's unapplied tail) as entries are applied.
    pub fn with_tail(self, tail: Tail) -> StateMachineStore {
        StateMachineStore { tail: Some(tail), ..self }
    }

    fn applied_through(&self, index: u64) {
        if let Some(t) = &self.tail {
            t.applied(index);
        }
    }

    /// Opens group `group`'s state machine from what the engine holds: a partition from
    /// its applied state, the metadata group from its snapshot; `initial` when there is
    /// nothing.
    pub fn open(group: GroupId, engine: Arc<dyn Engine>, initial: GroupState) -> io::Result<StateMachineStore> {
        let snapshot: Option<Stored> = read(engine.as_ref(), &keys::meta(group, keys::SNAPSHOT), "snapshot")?;
        let applied = match &initial {
            GroupState::Partition(_) => read(engine.as_ref(), &keys::meta(group, keys::APPLIED), "applied state")?,
            GroupState::Metadata(_) => {
                snapshot.as_ref().map(|(_, data)| decode_applied(data, "snapshot")).transpose()?
            }
        };
        let applied = applied.unwrap_or(Applied { last_applied: None, membership: Default::default(), state: initial });
        let (applied_tx, _) = watch::channel(applied.last_applied.as_ref().map_or(0, |l| l.index));
        let shared = SharedState {
            inner: RwLock::new(applied),
            applied_tx,
            snapshot: Mutex::new(None),
            snapshot_start: Default::default(),
        };
        // A partition's snapshot is a few numbers: decoding it is cheap.
        let start = match (&snapshot, &shared.inner.read().expect("state lock poisoned").state) {
            (Some((_, data)), GroupState::Partition(_)) => match decode_applied(data, "snapshot")?.state {
                GroupState::Partition(p) => p.high_watermark(),
                GroupState::Metadata(_) => 0,
            },
            _ => 0,
        };
        shared.set_snapshot(snapshot, start);
        Ok(StateMachineStore { group, engine, shared: Arc::new(shared), last_produce_leader: None, tail: None })
    }

    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn is_partition(&self) -> bool {
        self.shared.read(|s| matches!(s, GroupState::Partition(_)))
    }

    /// A partition's snapshot at its retention point: the state just before the first
    /// batch still readable (or the current state when nothing is), and the membership
    /// in force there. `None` when the current snapshot is already there.
    fn partition_snapshot(&self) -> io::Result<Option<(Stored, BatchLocation)>> {
        let applied = self.shared.inner.read().expect("state lock poisoned").clone();
        let GroupState::Partition(p) = &applied.state else { unreachable!("a partition group") };
        let engine = self.engine.as_ref();
        let first_kept = if p.log_start_offset() < p.high_watermark() {
            crate::index::batch_at(engine, self.group, p.log_start_offset())?
        } else {
            None
        };
        let (point, state, next) = match first_kept {
            // Every batch is deleted: the current state is the snapshot.
            None => {
                let next = BatchLocation {
                    base_offset: p.high_watermark(),
                    records: 0,
                    log_index: p.last_applied_index() + 1,
                    bytes: 0,
                    position: p.end_position(),
                    timestamp_ms: 0,
                    max_timestamp_before: p.max_timestamp_ms(),
                    producer: None,
                    producer_settings: Default::default(),
                };
                (applied.last_applied, applied.state.clone(), next)
            }
            Some(next) => {
                let index = next.log_index - 1;
                if self.shared.snapshot_index().is_some_and(|i| i >= index) {
                    return Ok(None);
                }
                let point = log_id_at(engine, self.group, index)?;
                let producers = self.producers_at(next.base_offset)?;
                (Some(point), GroupState::Partition(PartitionState::at_retention_point(index, &next, producers)), next)
            }
        };
        let Some(point) = point else { return Ok(None) };
        if self.shared.snapshot_index().is_some_and(|i| i >= point.index) {
            return Ok(None);
        }
        let membership: StoredMembershipOf<TypeConfig> = match engine
            .last(&keys::indexed(self.group, MEMBERSHIPS, 0), &keys::indexed(self.group, MEMBERSHIPS, point.index + 1))
            .map_err(to_io)?
        {
            Some((_, v)) => decode(&v, "stored membership")?,
            None => applied.membership.clone(),
        };
        let snapshot = Applied { last_applied: Some(point), membership: membership.clone(), state };
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: Some(point), last_membership: membership };
        Ok(Some(((meta, encode(&snapshot)), next)))
    }

    /// The producer table just before the batch at offset `to`: the current snapshot's
    /// table brought past the batches indexed after the snapshot's retention point.
    fn producers_at(&self, to: flotilla_types::Offset) -> io::Result<ProducerTable> {
        let current = self.shared.snapshot.lock().expect("snapshot lock poisoned").as_ref().map(|(_, d)| d.clone());
        let mut table = match current {
            Some(data) => match decode_applied(&data, "snapshot")?.state {
                GroupState::Partition(p) => p.producers().clone(),
                GroupState::Metadata(_) => unreachable!("a partition group"),
            },
            None => ProducerTable::default(),
        };
        crate::index::replay_producers(self.engine.as_ref(), self.group, self.shared.snapshot_start(), to, &mut table)?;
        Ok(table)
    }

    /// Saves `stored` as the current snapshot; `start` as in `SharedState::set_snapshot`.
    fn keep(&self, b: &mut WriteBatch, stored: &Stored, start: flotilla_types::Offset) {
        b.put(keys::meta(self.group, keys::SNAPSHOT), encode(stored));
        self.shared.set_snapshot(Some(stored.clone()), start);
    }

    fn current(&self) -> Option<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>> {
        self.shared.snapshot.lock().expect("snapshot lock poisoned").as_ref().map(|(meta, data)| SnapshotOf::<
            TypeConfig,
            _,
        > {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        })
    }
}

fn read<T: serde::de::DeserializeOwned>(engine: &dyn Engine, key: &[u8], what: &str) -> io::Result<Option<T>> {
    engine.get(key).map_err(to_io)?.map(|v| decode(&v, what)).transpose()
}

/// The id of the entry at `index`: from the log, or the purged id if it is the last one
/// purged.
fn log_id_at(engine: &dyn Engine, group: GroupId, index: u64) -> io::Result<LogIdOf<TypeConfig>> {
    if let Some(e) = read::<Entry>(engine, &keys::log(group, index), "log entry")? {
        return Ok(e.log_id);
    }
    match read::<LogIdOf<TypeConfig>>(engine, &keys::meta(group, keys::PURGED), "purged log id")? {
        Some(p) if p.index == index => Ok(p),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("group {group}: no log entry at index {index}"))),
    }
}

pub(crate) fn apply_one(state: &mut GroupState, index: u64, payload: &crate::Payload) -> (Response, Effect) {
    match (state, payload) {
        (GroupState::Metadata(s), EntryPayload::Normal(Command::Metadata(c))) => {
            (Response::Metadata(s.apply(index, c)), Effect::None)
        }
        (GroupState::Partition(s), EntryPayload::Normal(Command::Partition(c))) => {
            let (response, effect) = s.apply(index, c);
            (Response::Partition(response), effect)
        }
        (GroupState::Metadata(s), EntryPayload::Normal(_)) => {
            s.skip(index);
            (Response::WrongGroup, Effect::None)
        }
        (GroupState::Partition(s), EntryPayload::Normal(_)) => {
            s.skip(index);
            (Response::WrongGroup, Effect::None)
        }
        (GroupState::Metadata(s), _) => {
            s.skip(index);
            (Response::None, Effect::None)
        }
        (GroupState::Partition(s), _) => {
            s.skip(index);
            (Response::None, Effect::None)
        }
    }
}

/// The index entries an effect adds.
fn write_index(b: &mut WriteBatch, group: GroupId, effect: Effect) {
    if let Effect::Indexed { location, new_max_time } = effect {
        b.put(keys::indexed(group, OFFSETS, location.base_offset), encode(&location));
        if new_max_time {
            b.put(keys::indexed(group, TIMES, location.timestamp_ms), encode(&location.base_offset));
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let mut b = WriteBatch::new();
        if self.is_partition() {
            if let Some((stored, next)) = self.partition_snapshot()? {
                // Below the retention point nothing is read again: the index entries go
                // now, the log entries when openraft purges them. The time index keeps
                // its entry for the greatest time before the point: a seek to a time at
                // or before it must land at the log start, not at the next batch that
                // raised the maximum (found by l40 and l20 of node/tests/log_lifecycle.rs:
                // retention skipped batches stamped in the same millisecond as the last
                // deleted one).
                let g = self.group;
                b.delete_range(keys::indexed(g, OFFSETS, 0), keys::indexed(g, OFFSETS, next.base_offset));
                b.delete_range(keys::indexed(g, TIMES, 0), keys::indexed(g, TIMES, next.max_timestamp_before));
                let membership_index = stored.0.last_membership.log_id().as_ref().map_or(0, |l| l.index);
                b.delete_range(keys::indexed(g, MEMBERSHIPS, 0), keys::indexed(g, MEMBERSHIPS, membership_index));
                self.keep(&mut b, &stored, next.base_offset);
                self.engine.write(b).map_err(to_io)?;
                self.engine.compact(&keys::indexed(g, OFFSETS, 0), &keys::indexed(g, OFFSETS, next.base_offset));
            } else if self.current().is_none() {
                // Nothing applied yet (openraft asks anyway): the empty state.
                self.keep_whole_state()?;
            }
        } else {
            self.keep_whole_state()?;
        }
        self.current().ok_or_else(|| io::Error::other("no snapshot to build"))
    }
}

impl StateMachineStore {
    /// Saves the whole applied state as the current snapshot (the metadata group's
    /// snapshot; a partition's before anything was applied).
    fn keep_whole_state(&self) -> io::Result<()> {
        let applied = self.shared.inner.read().expect("state lock poisoned").clone();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
        };
        let mut b = WriteBatch::new();
        self.keep(&mut b, &(meta, encode(&applied)), 0);
        self.engine.write(b).map_err(to_io)
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
        if self.is_partition() {
            return self.apply_partition(entries).await;
        }
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
                let (response, _) = apply_one(&mut inner.state, index, &entry.payload);
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
            self.applied_through(index);
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
        let applied = decode_applied(&data, "snapshot")?;
        if applied.last_applied != meta.last_log_id {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot contents disagree with its metadata"));
        }
        let kinds_match = matches!(
            (&applied.state, self.is_partition()),
            (GroupState::Partition(_), true) | (GroupState::Metadata(_), false)
        );
        if !kinds_match {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a snapshot of another kind of group"));
        }
        let index = applied.last_applied.as_ref().map_or(0, |l| l.index);
        let start = match &applied.state {
            GroupState::Partition(p) => p.high_watermark(),
            GroupState::Metadata(_) => 0,
        };
        let mut b = WriteBatch::new();
        if self.is_partition() {
            // What this replica indexed is older than the snapshot: all of it goes.
            let g = self.group;
            for kind in [OFFSETS, TIMES, MEMBERSHIPS] {
                b.delete_range(keys::indexed(g, kind, 0), keys::indexed_end(g, kind));
            }
            if let Some(l) = applied.membership.log_id() {
                b.put(keys::indexed(g, MEMBERSHIPS, l.index), encode(&applied.membership));
            }
            b.put(keys::meta(g, keys::APPLIED), encode(&applied));
        }
        self.keep(&mut b, &(meta.clone(), data), start);
        write_durable(self.engine.as_ref(), b).await.map_err(to_io)?;
        *self.shared.inner.write().expect("state lock poisoned") = applied;
        self.shared.applied_tx.send_replace(index);
        self.applied_through(index);
        tracing::info!(group = %self.group, index, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        Ok(self.current())
    }
}

impl StateMachineStore {
    /// Applies entries to a copy of the partition's (small) state, writes the index
    /// entries and the new applied state in one engine batch, and only then publishes the
    /// state and answers the proposers: a reader never sees a high watermark whose
    /// batches are not indexed yet.
    async fn apply_partition<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut applied = self.shared.inner.read().expect("state lock poisoned").clone();
        let mut b = WriteBatch::new();
        let mut answers = Vec::new();
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            last = Some(index);
            if let Some(prev) = &applied.last_applied {
                assert!(index > prev.index, "entry {index} applied after {}", prev.index);
            }
            if let EntryPayload::Membership(m) = &entry.payload {
                applied.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                b.put(keys::indexed(self.group, MEMBERSHIPS, index), encode(&applied.membership));
            }
            let (mut response, effect) = apply_one(&mut applied.state, index, &entry.payload);
            write_index(&mut b, self.group, effect);
            if planted::armed(Bug::DoubleApply)
                && let (GroupState::Partition(p), EntryPayload::Normal(Command::Partition(c))) =
                    (&mut applied.state, &entry.payload)
            {
                let leader = format!("{:?}", entry.log_id.leader_id);
                if self.last_produce_leader.as_ref().is_some_and(|l| *l != leader) {
                    let (again, effect) = p.planted_reapply(c);
                    response = Response::Partition(again);
                    write_index(&mut b, self.group, effect);
                }
                self.last_produce_leader = Some(leader);
            }
            applied.last_applied = Some(entry.log_id);
            answers.push((responder, response));
        }
        let Some(last) = last else { return Ok(()) };
        b.put(keys::meta(self.group, keys::APPLIED), encode(&applied));
        self.engine.write(b).map_err(to_io)?;
        *self.shared.inner.write().expect("state lock poisoned") = applied;
        for (responder, response) in answers {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        self.shared.applied_tx.send_replace(last);
        self.applied_through(last);
        Ok(())
    }
}

/// The decoders of what this module stores, for `wire` (the fuzz surface).
pub(crate) mod stored {
    use super::*;

    /// A stored applied state (`keys::APPLIED`).
    pub(crate) fn applied(bytes: &[u8]) -> io::Result<()> {
        decode_applied(bytes, "applied state").map(drop)
    }

    /// A stored snapshot (`keys::SNAPSHOT`), metadata and data.
    pub(crate) fn snapshot(bytes: &[u8]) -> io::Result<()> {
        let (_, data): Stored = decode(bytes, "snapshot")?;
        decode_applied(&data, "snapshot data").map(drop)
    }

    /// Valid encodings: a partition's applied state, and a snapshot of it.
    pub(crate) fn samples() -> Vec<Vec<u8>> {
        let mut p = PartitionState::new();
        let batch = flotilla_types::RecordBatch::encode(&[flotilla_types::Record::value("v")]).expect("a batch");
        p.apply(3, &flotilla_partition::produce_command(&batch, 5));
        let stamp = flotilla_types::ProducerStamp { id: 4, epoch: 1, base_sequence: 0 };
        let stamped = flotilla_types::RecordBatch::encode_as(&[flotilla_types::Record::value("s")], Some(stamp))
            .expect("a batch");
        p.apply(4, &flotilla_partition::produce_command(&stamped, 6));
        let last = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 4));
        let membership = StoredMembershipOf::<TypeConfig>::new(
            Some(openraft::testing::log_id::<TypeConfig>(1, 1, 1)),
            openraft::Membership::new_with_defaults(vec![std::collections::BTreeSet::from([1, 2, 3])], []),
        );
        let applied = Applied { last_applied: last, membership: membership.clone(), state: GroupState::Partition(p) };
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: last, last_membership: membership };
        vec![encode(&applied), encode(&(meta, encode(&applied)))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata snapshots written before node replacement (the same bytes without the
    /// state's last field, an empty map: one byte), before users, ACLs and cluster quotas
    /// (three empty collections and a `None` fewer, one byte each) and before share groups
    /// (one empty map's byte fewer again) still open, with their groups.
    #[test]
    fn a_metadata_snapshot_from_before_share_groups_users_or_replacement_decodes() {
        let mut state = MetadataState::new();
        let join = flotilla_metadata::Command::Group {
            name: "readers".into(),
            op: flotilla_metadata::groups::GroupOp::Commit {
                member: None,
                offsets: vec![(("orders".into(), 0), 7, "m".into())],
            },
        };
        state.apply(1, &join);
        let applied =
            Applied { last_applied: None, membership: Default::default(), state: GroupState::Metadata(state) };
        let now = encode(&applied);
        assert!(
            now.ends_with(&[0; 6]),
            "empty share groups, users, ACLs, quotas, no default quota, no replacements: a zero byte each"
        );
        for older in [&now[..now.len() - 1], &now[..now.len() - 5], &now[..now.len() - 6]] {
            assert!(decode::<Applied>(older, "snapshot").is_err(), "the current shape does not read it");
            let read = decode_applied(older, "snapshot").expect("read through an older shape");
            match (read.state, &applied.state) {
                (GroupState::Metadata(r), GroupState::Metadata(a)) => assert_eq!(&r, a),
                _ => panic!("a metadata state"),
            }
        }
        // And the current shape still reads itself.
        assert!(decode_applied(&now, "snapshot").is_ok());
    }
}
