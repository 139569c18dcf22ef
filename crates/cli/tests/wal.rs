//! End-to-end: a node whose write-ahead log is corrupt refuses to start, and says where
//! and what to do, instead of running without writes it had made durable.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use flotilla_storage::Engine;
use flotilla_storage::WriteBatch;
use flotilla_storage_rocksdb::RocksEngine;

/// Synced writes in the node's database, then one byte of a record in the middle of the
/// WAL flipped: a bad sector under data that was synced, with synced data after it.
fn corrupt_wal_in(db: &Path) {
    const RECORDS: usize = 200;
    let engine = RocksEngine::open(db).expect("open");
    for i in 0..RECORDS {
        let mut batch = WriteBatch::new();
        batch.put(format!("k/{i:05}").into_bytes(), format!("value-{i:05}-").repeat(16).into_bytes());
        engine.write_durable(batch).expect("synced write");
    }
    drop(engine);
    let marker = format!("value-{:05}-", RECORDS / 2).into_bytes();
    let logs = std::fs::read_dir(db)
        .expect("read the database directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"));
    for log in logs {
        let mut bytes = std::fs::read(&log).expect("read the WAL");
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker.as_slice()) {
            bytes[at + 20] ^= 0x55;
            std::fs::write(&log, &bytes).expect("write the WAL");
            return;
        }
    }
    panic!("the middle record is in no WAL file of {}", db.display());
}

/// t97: `flotilla node` on a data directory whose WAL is corrupt in the middle exits
/// non-zero at once, naming the data directory and the documented way to rebuild it.
#[test]
fn t97_a_corrupt_wal_stops_the_node_from_starting() {
    let dir = tempfile::Builder::new().prefix("flotilla-wal-").tempdir().expect("temporary directory");
    let data_dir = dir.path().join("node-1");
    corrupt_wal_in(&data_dir.join("db"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let stderr_path = dir.path().join("stderr");
    let mut node = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", "--id", "1", "--listen", &addr])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start flotilla node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for the node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("the node started on a corrupt WAL and was still running after 30 s:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("read stderr");
    assert!(!status.success(), "exited with {status}:\n{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(stderr.contains(&data_dir.display().to_string()), "the data directory is named:\n{stderr}");
    assert!(stderr.contains("docs/operating.md"), "the fix is pointed to:\n{stderr}");
}
