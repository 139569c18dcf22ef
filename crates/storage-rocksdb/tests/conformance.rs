//! The storage conformance suite (`flotilla_storage::conformance`) against
//! `RocksEngine`, each case in a fresh temporary directory. A crash drops the engine
//! without syncing and reopens the same directory: a process crash, after which unsynced
//! WAL data may or may not be back, which the prefix property allows.

use flotilla_storage::conformance;
use flotilla_storage_rocksdb::RocksEngine;
use tempfile::TempDir;

#[derive(Default)]
struct RocksHarness {
    /// The directory of the engine under test; replaced by each `open`.
    dir: Option<TempDir>,
}

impl RocksHarness {
    fn reopen(&self) -> RocksEngine {
        let dir = self.dir.as_ref().expect("open comes first");
        RocksEngine::open(dir.path()).expect("reopen")
    }
}

impl conformance::Harness for RocksHarness {
    type E = RocksEngine;

    fn open(&mut self) -> RocksEngine {
        let dir = tempfile::Builder::new().prefix("flotilla-rocks-").tempdir().expect("temporary directory");
        let engine = RocksEngine::open(dir.path()).expect("open");
        self.dir = Some(dir);
        engine
    }

    fn crash_and_reopen(&mut self, engine: RocksEngine) -> RocksEngine {
        drop(engine);
        self.reopen()
    }

    fn clean_reopen(&mut self, engine: RocksEngine) -> RocksEngine {
        engine.close().expect("clean close");
        self.reopen()
    }
}

#[test]
fn rocks_engine_passes_the_conformance_suite() {
    conformance::run_all(&mut RocksHarness::default());
}
