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

// ---- WAL recovery: a torn tail is a crash, a bad record before it is corruption ----

/// Records written by [`write_synced_records`]: enough for the WAL to span several of
/// RocksDB's 32 KiB log blocks.
const RECORDS: usize = 400;

fn record_key(i: usize) -> Vec<u8> {
    format!("k/{i:05}").into_bytes()
}

/// A value that names its record, so the record can be found in the WAL file.
fn record_value(i: usize) -> Vec<u8> {
    format!("value-{i:05}-").repeat(24).into_bytes()
}

/// Writes [`RECORDS`] batches, each synced (as a Raft vote or an acknowledged entry is),
/// then drops the engine without a clean close: a crash after the last sync.
fn write_synced_records(dir: &Path) {
    let engine = RocksEngine::open(dir).expect("open");
    for i in 0..RECORDS {
        let mut batch = WriteBatch::new();
        batch.put(record_key(i), record_value(i));
        engine.write_durable(batch).expect("synced write");
    }
    drop(engine);
}

/// The WAL file holding record `i`, and the offset of its value in that file.
fn find_in_wal(dir: &Path, i: usize) -> (PathBuf, usize) {
    let marker = format!("value-{i:05}-").into_bytes();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the database directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let bytes = std::fs::read(&log).expect("read the WAL");
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker.as_slice()) {
            return (log, at);
        }
    }
    panic!("record {i} is in no WAL file of {}", dir.display());
}

/// Flips one byte of record `RECORDS / 2`'s value in the WAL: a bad sector or a bit flip
/// in data that was synced, with synced records after it.
fn corrupt_the_middle_of_the_wal(dir: &Path) {
    let (log, at) = find_in_wal(dir, RECORDS / 2);
    let mut bytes = std::fs::read(&log).expect("read the WAL");
    let flip = at + 40;
    bytes[flip] ^= 0x55;
    std::fs::write(&log, &bytes).expect("write the WAL");
}

/// Cuts the WAL in the middle of the last record's value: a write torn by a crash.
fn tear_the_last_record(dir: &Path) {
    let (log, at) = find_in_wal(dir, RECORDS - 1);
    let file = std::fs::OpenOptions::new().write(true).open(&log).expect("open the WAL");
    file.set_len(u64::try_from(at + 100).expect("small")).expect("truncate the WAL");
    file.sync_all().expect("sync the WAL");
}

/// Replaces the second half of the last record with zeros, the file keeping its length:
/// what a file system that extended the file before writing its data leaves after a
/// power loss.
fn zero_the_end_of_the_last_record(dir: &Path) {
    let (log, at) = find_in_wal(dir, RECORDS - 1);
    let mut bytes = std::fs::read(&log).expect("read the WAL");
    let from = at + 100;
    bytes[from..].fill(0);
    std::fs::write(&log, &bytes).expect("write the WAL");
}

/// Appends zeros after the last record: preallocated space that was never written.
fn append_zeros_to_the_wal(dir: &Path) {
    let (log, _) = find_in_wal(dir, RECORDS - 1);
    let mut bytes = std::fs::read(&log).expect("read the WAL");
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&log, &bytes).expect("write the WAL");
}

/// The records `0..n` are all there, and none after them.
fn assert_prefix(engine: &RocksEngine, n: usize) {
    let found = engine.scan(b"k/", b"k0", usize::MAX).expect("scan");
    let keys: Vec<Vec<u8>> = found.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, (0..n).map(record_key).collect::<Vec<_>>(), "the first {n} records, in order");
    for (i, (_, v)) in found.iter().enumerate() {
        assert_eq!(v, &record_value(i), "record {i}");
    }
}

/// A corrupt record in the middle of the WAL, with synced records after it, is refused:
/// recovering up to it would silently drop writes (Raft votes among them) that the node
/// had reported durable.
#[test]
fn a_corrupt_record_in_the_middle_of_the_wal_refuses_to_open() {
    let dir = temp_dir();
    write_synced_records(dir.path());
    corrupt_the_middle_of_the_wal(dir.path());
    for attempt in 0..2 {
        match RocksEngine::open(dir.path()) {
            Err(StorageError::Corruption(message)) => {
                assert!(message.contains("Corruption"), "RocksDB's message is kept: {message}");
            }
            Err(other) => panic!("attempt {attempt}: not reported as corruption: {other}"),
            Ok(engine) => {
                let kept = engine.scan(b"k/", b"k0", usize::MAX).expect("scan").len();
                panic!("attempt {attempt}: opened with {kept} of {RECORDS} synced records");
            }
        }
    }
}

/// A WAL whose last record was torn by a crash opens, with every record before it.
#[test]
fn a_torn_last_record_of_the_wal_is_dropped_and_the_rest_opens() {
    let dir = temp_dir();
    write_synced_records(dir.path());
    tear_the_last_record(dir.path());
    let engine = RocksEngine::open(dir.path()).expect("a torn tail is what a crash leaves; it opens");
    assert_prefix(&engine, RECORDS - 1);
    // And the database goes on: a write after recovery survives another reopen.
    put(&engine, &record_key(RECORDS - 1), &record_value(RECORDS - 1));
    engine.close().expect("close");
    let engine = RocksEngine::open(dir.path()).expect("reopen");
    assert_prefix(&engine, RECORDS);
}

/// Preallocated, never-written space after the last record opens with every record.
#[test]
fn zeros_after_the_last_record_of_the_wal_are_ignored() {
    let dir = temp_dir();
    write_synced_records(dir.path());
    append_zeros_to_the_wal(dir.path());
    let engine = RocksEngine::open(dir.path()).expect("open");
    assert_prefix(&engine, RECORDS);
}

/// What each of RocksDB's WAL recovery modes does with each kind of damage, measured on a
/// real database: the reason `RocksEngine` uses `TolerateCorruptedTailRecords`
/// (see `options`). `Ok(n)`: opens with the first `n` records; `Err`: refuses.
#[test]
fn wal_recovery_modes_on_a_torn_tail_and_on_a_corrupt_middle() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("torn last record", tear_the_last_record),
        ("zeros after the last record", append_zeros_to_the_wal),
        ("last record half zeros", zero_the_end_of_the_last_record),
        ("corrupt record in the middle", corrupt_the_middle_of_the_wal),
    ];
    let modes = [
        ("TolerateCorruptedTailRecords", DBRecoveryMode::TolerateCorruptedTailRecords),
        ("AbsoluteConsistency", DBRecoveryMode::AbsoluteConsistency),
        ("PointInTime", DBRecoveryMode::PointInTime),
    ];
    let mut table = Vec::new();
    for (damage_name, damage) in damages {
        for (mode_name, mode) in &modes {
            let dir = temp_dir();
            write_synced_records(dir.path());
            damage(dir.path());
            let mut opts = options();
            opts.set_wal_recovery_mode(*mode);
            let outcome = match DB::open(&opts, dir.path()) {
                Ok(db) => {
                    let records = db.iterator(rocksdb::IteratorMode::Start).count();
                    Ok(records)
                }
                Err(e) => Err(storage_error(e)),
            };
            eprintln!("{damage_name:32} {mode_name:30} {outcome:?}");
            table.push((damage_name, *mode_name, outcome.map_err(|e| matches!(e, StorageError::Corruption(_)))));
        }
    }
    let half = RECORDS / 2;
    let expected = [
        ("torn last record", "TolerateCorruptedTailRecords", Ok(RECORDS - 1)),
        ("torn last record", "AbsoluteConsistency", Err(true)),
        ("torn last record", "PointInTime", Ok(RECORDS - 1)),
        ("zeros after the last record", "TolerateCorruptedTailRecords", Ok(RECORDS)),
        ("zeros after the last record", "AbsoluteConsistency", Ok(RECORDS)),
        ("zeros after the last record", "PointInTime", Ok(RECORDS)),
        ("last record half zeros", "TolerateCorruptedTailRecords", Err(true)),
        ("last record half zeros", "AbsoluteConsistency", Err(true)),
        ("last record half zeros", "PointInTime", Ok(RECORDS - 1)),
        ("corrupt record in the middle", "TolerateCorruptedTailRecords", Err(true)),
        ("corrupt record in the middle", "AbsoluteConsistency", Err(true)),
        // The silent loss: the records after the corrupt one are gone, synced or not.
        ("corrupt record in the middle", "PointInTime", Ok(half)),
    ];
    assert_eq!(table, expected);
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).expect("read dir").flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

/// `compact` gives the space of a range delete back to the filesystem: 40 MiB of
/// incompressible values in SST files, deleted by one range delete, then compacted on
/// the compactor thread, leave the database directory far smaller (measured on disk,
/// not by a counter).
#[test]
fn compacting_a_deleted_range_gives_the_space_back() {
    let dir = temp_dir();
    let engine = RocksEngine::open(dir.path()).expect("open");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in 0..40u64 {
        let mut b = WriteBatch::new();
        for i in 0..16u64 {
            // 64 KiB of xorshift bytes: lz4 cannot shrink them.
            let value: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            b.put([b"k".as_slice(), &(chunk * 16 + i).to_be_bytes()].concat(), value);
        }
        engine.write(b).expect("write");
    }
    engine.db.flush().expect("flush the memtable to SST files");
    let full = dir_bytes(dir.path());
    assert!(full > 40 << 20, "40 MiB written, {full} bytes on disk");
    let mut b = WriteBatch::new();
    b.delete_range(b"k".to_vec(), b"l".to_vec());
    engine.write(b).expect("range delete");
    engine.compact(b"k", b"l");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = dir_bytes(dir.path());
        if now < full / 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now} bytes still on disk of {full}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(engine.scan(b"k", b"l", 1).expect("scan").is_empty());
}
