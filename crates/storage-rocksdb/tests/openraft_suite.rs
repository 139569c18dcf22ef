//! openraft's own storage test suite (`openraft::testing::log::Suite`, written by
//! openraft's authors) run against Flotilla's log store and state machine on a real
//! RocksDB: once with a partition group's state machine and once with the metadata
//! group's, since they persist their state differently (`flotilla_raft::state_machine`).

use std::sync::Arc;

use flotilla_metadata::MetadataState;
use flotilla_partition::PartitionState;
use flotilla_raft::TypeConfig;
use flotilla_raft::log_store::LogStore;
use flotilla_raft::state_machine::{GroupState, StateMachineStore};
use flotilla_storage::Engine;
use flotilla_storage_rocksdb::RocksEngine;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb};

struct OnRocks {
    partition: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for OnRocks {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let io = |e: std::io::Error| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let dir = tempfile::tempdir().map_err(io)?;
        let engine: Arc<dyn Engine> =
            Arc::new(RocksEngine::open(dir.path().join("db")).map_err(|e| io(std::io::Error::other(e.to_string())))?);
        let initial = if self.partition {
            GroupState::Partition(PartitionState::new())
        } else {
            GroupState::Metadata(MetadataState::new())
        };
        let group = if self.partition { 7 } else { 0 };
        let sm = StateMachineStore::open(group, engine.clone(), initial).map_err(io)?;
        Ok((dir, LogStore::new(group, engine), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_for_a_partition_group_on_rocksdb() {
    Suite::test_all(OnRocks { partition: true }).await.expect("openraft's storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_for_the_metadata_group_on_rocksdb() {
    Suite::test_all(OnRocks { partition: false }).await.expect("openraft's storage suite");
}
