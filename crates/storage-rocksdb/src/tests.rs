//! Tests of what is particular to `RocksEngine`: the flusher thread and error mapping.
//! The engine contract itself is checked by `tests/conformance.rs`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use flotilla_storage::Engine;
use flotilla_storage::StorageError;
use flotilla_storage::WriteBatch;
use flotilla_storage::conformance::CALLBACK_TIMEOUT;

use super::*;

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("flotilla-rocks-").tempdir().expect("temporary directory")
}

fn put(engine: &RocksEngine, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(key, value);
    engine.write(batch).expect("write");
}

/// 10,000 durability requests from 8 threads, each after a write, all complete with Ok,
/// exactly once, and group commit syncs fewer times than it is asked to.
#[test]
fn ten_thousand_callbacks_from_eight_threads_all_complete() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1_250;
    const TOTAL: usize = THREADS * PER_THREAD;
    let dir = temp_dir();
    let engine = RocksEngine::open(dir.path()).expect("open");
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..TOTAL).map(|_| AtomicUsize::new(0)).collect());
    let (tx, rx) = mpsc::channel::<(usize, Result<(), StorageError>)>();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (engine, counts, tx) = (&engine, Arc::clone(&counts), tx.clone());
            s.spawn(move || {
                for j in 0..PER_THREAD {
                    let id = t * PER_THREAD + j;
                    put(engine, format!("g/{t}/{j:05}").as_bytes(), &id.to_be_bytes());
                    let (counts, tx) = (Arc::clone(&counts), tx.clone());
                    engine.on_durable(Box::new(move |result| {
                        counts[id].fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send((id, result));
                    }));
                }
            });
        }
    });
    drop(tx);
    for _ in 0..TOTAL {
        let (id, result) = rx.recv_timeout(CALLBACK_TIMEOUT).expect("every callback completes");
        assert_eq!(result, Ok(()), "request {id}");
    }
    assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 1), "each callback completes exactly once");
    let syncs = engine.wal_syncs();
    assert!(syncs >= 1 && syncs <= u64::try_from(TOTAL).expect("small"));
    eprintln!("{TOTAL} on_durable requests took {syncs} WAL syncs");
    assert_eq!(engine.scan(b"g/", b"g0", usize::MAX).expect("scan").len(), TOTAL);
}

/// Dropping the engine joins the flusher, which first completes every queued callback.
#[test]
fn drop_completes_queued_callbacks() {
    const REQUESTS: usize = 500;
    let dir = temp_dir();
    let engine = RocksEngine::open(dir.path()).expect("open");
    let oks = Arc::new(AtomicUsize::new(0));
    for i in 0..REQUESTS {
        put(&engine, format!("k/{i:04}").as_bytes(), b"v");
        let oks = Arc::clone(&oks);
        engine.on_durable(Box::new(move |result| {
            assert_eq!(result, Ok(()));
            oks.fetch_add(1, Ordering::SeqCst);
        }));
    }
    drop(engine);
    // No waiting: drop returned only after the flusher had completed them all.
    assert_eq!(oks.load(Ordering::SeqCst), REQUESTS);
    let engine = RocksEngine::open(dir.path()).expect("reopen");
    assert_eq!(engine.scan(b"k/", b"k0", usize::MAX).expect("scan").len(), REQUESTS);
}

/// The flusher thread carries its name, for stack dumps and `top -H`.
#[test]
fn callbacks_run_on_the_named_flusher_thread() {
    let dir = temp_dir();
    let engine = RocksEngine::open(dir.path()).expect("open");
    let (tx, rx) = mpsc::channel();
    engine.on_durable(Box::new(move |_| {
        let _ = tx.send(std::thread::current().name().map(str::to_string));
    }));
    let name = rx.recv_timeout(CALLBACK_TIMEOUT).expect("callback");
    assert_eq!(name.as_deref(), Some(FLUSHER_THREAD_NAME));
}

/// A callback may queue another durability request without deadlocking the flusher.
#[test]
fn a_callback_may_call_on_durable() {
    let dir = temp_dir();
    let engine = Arc::new(RocksEngine::open(dir.path()).expect("open"));
    let (tx, rx) = mpsc::channel();
    let inner_engine = Arc::clone(&engine);
    engine.on_durable(Box::new(move |first| {
        assert_eq!(first, Ok(()));
        inner_engine.on_durable(Box::new(move |second| {
            let _ = tx.send(second);
        }));
    }));
    assert_eq!(rx.recv_timeout(CALLBACK_TIMEOUT).expect("the nested callback completes"), Ok(()));
    // The nested callback has run and dropped its `Arc`, or is about to.
    let mut engine = engine;
    for _ in 0..1000 {
        match Arc::try_unwrap(engine) {
            Ok(_) => return,
            Err(shared) => engine = shared,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the flusher kept a reference to the engine");
}

#[test]
fn open_fails_cleanly_on_a_path_that_is_a_file() {
    let dir = temp_dir();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write file");
    match RocksEngine::open(&file) {
        Err(StorageError::Io(_)) => {}
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(_) => panic!("opened a database on a plain file"),
    }
}

#[test]
fn a_second_open_of_one_directory_is_refused() {
    let dir = temp_dir();
    let _engine = RocksEngine::open(dir.path()).expect("open");
    assert!(RocksEngine::open(dir.path()).is_err(), "RocksDB's LOCK file keeps a second opener out");
}

#[test]
fn errors_map_by_message() {
    let map = |m: &str| error_from_message(m.to_string());
    assert!(matches!(map("IO error: No space left on device: /d/000012.log"), StorageError::NoSpace(_)));
    assert!(matches!(map("Corruption: block checksum mismatch"), StorageError::Corruption(_)));
    assert!(matches!(map("IO error: While lock file: /d/LOCK: Resource temporarily unavailable"), StorageError::Io(_)));
    assert_eq!(map("IO error: x"), StorageError::Io("IO error: x".to_string()), "the message is kept whole");
}

/// Dropping the last reference inside a callback, on the flusher thread, neither
/// deadlocks nor loses the callbacks queued behind it.
#[test]
fn the_last_reference_may_drop_inside_a_callback() {
    let dir = temp_dir();
    let engine = Arc::new(RocksEngine::open(dir.path()).expect("open"));
    let (tx, rx) = mpsc::channel();
    let held = Arc::clone(&engine);
    engine.on_durable(Box::new(move |result| {
        // Wait until the test has dropped its reference, so this one is the last.
        while Arc::strong_count(&held) > 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        let _ = tx.send(result);
    }));
    drop(engine);
    assert_eq!(rx.recv_timeout(CALLBACK_TIMEOUT).expect("callback"), Ok(()));
    // The flusher closes the database as it exits; then the directory opens again.
    for _ in 0..1000 {
        if RocksEngine::open(dir.path()).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the database was never closed");
}
