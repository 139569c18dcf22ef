//! The conformance suite every [`Engine`] must pass, in the style of openraft's
//! `testing::log::Suite::test_all`.
//!
//! An engine crate implements [`Harness`] (how to open fresh state, crash, reopen) and
//! calls [`run_all`] from a test. Each case opens its own fresh state through the harness
//! and panics with the case's name on failure.
//!
//! Every case checks the contract in the [`Engine`] doc comment, and nothing more: no case
//! depends on how many batches a crash keeps, only on the prefix property.
//!
//! The suite waits for callbacks with a generous timeout ([`CALLBACK_TIMEOUT`]) so that a
//! lost callback fails the case instead of hanging the test run.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use crate::Engine;
use crate::KeyValue;
use crate::Op;
use crate::StorageError;
use crate::WriteBatch;

/// How long the suite waits for a durability callback before it calls it lost.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How the suite opens, crashes and reopens an engine.
pub trait Harness {
    type E: Engine;

    /// Opens an engine on fresh, empty state (a new directory, a new in-memory engine).
    fn open(&mut self) -> Self::E;

    /// Crashes `engine` without a clean shutdown and without syncing, then reopens the
    /// same state. The reopened engine may have lost any batch that was not durable.
    /// The suite never calls this with durability callbacks outstanding.
    fn crash_and_reopen(&mut self, engine: Self::E) -> Self::E;

    /// Shuts `engine` down cleanly and reopens the same state; nothing written is lost.
    fn clean_reopen(&mut self, engine: Self::E) -> Self::E;
}

/// One conformance case.
pub type Case<H> = fn(&mut H);

/// Every case, by name, in the order [`run_all`] runs them.
pub fn cases<H: Harness>() -> Vec<(&'static str, Case<H>)> {
    vec![
        ("put_get_delete", put_get_delete::<H>),
        ("scan_order_bounds_and_limit", scan_order_bounds_and_limit::<H>),
        ("scan_bytes_stops_at_the_byte_budget", scan_bytes_stops_at_the_byte_budget::<H>),
        ("last_in_range", last_in_range::<H>),
        ("delete_range_exact_bounds", delete_range_exact_bounds::<H>),
        ("batch_applies_ops_in_order", batch_applies_ops_in_order::<H>),
        ("batch_is_atomic_to_readers", batch_is_atomic_to_readers::<H>),
        ("write_is_visible_before_durable", write_is_visible_before_durable::<H>),
        ("on_durable_calls_back_ok", on_durable_calls_back_ok::<H>),
        ("durable_data_survives_crash", durable_data_survives_crash::<H>),
        ("crash_keeps_a_prefix_with_every_durable_batch", crash_keeps_a_prefix_with_every_durable_batch::<H>),
        ("clean_reopen_keeps_everything", clean_reopen_keeps_everything::<H>),
        ("concurrent_on_durable_fire_exactly_once", concurrent_on_durable_fire_exactly_once::<H>),
        ("large_values_round_trip", large_values_round_trip::<H>),
    ]
}

/// Runs every case; panics with the failing case's name.
pub fn run_all<H: Harness>(h: &mut H) {
    for (name, case) in cases::<H>() {
        run_case(h, name, case);
    }
}

/// Runs the case called `name`; panics if it fails or if there is no such case.
pub fn run_one<H: Harness>(h: &mut H, name: &str) {
    let Some((name, case)) = cases::<H>().into_iter().find(|(n, _)| *n == name) else {
        panic!("no storage conformance case named `{name}`");
    };
    run_case(h, name, case);
}

fn run_case<H: Harness>(h: &mut H, name: &str, case: Case<H>) {
    // The harness is not used again after a failure: the panic is re-raised at once.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| case(h)));
    if let Err(payload) = outcome {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic payload)");
        panic!("storage conformance case `{name}` failed: {message}");
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An end bound above every key the suite writes.
const END_OF_KEYS: &[u8] = &[0xff, 0xff, 0xff, 0xff];

/// Asks for durability and waits for the callback.
fn sync<E: Engine>(engine: &E) -> Result<(), StorageError> {
    let (tx, rx) = mpsc::channel();
    engine.on_durable(Box::new(move |result| {
        // The receiver is gone only if the case already failed.
        let _ = tx.send(result);
    }));
    match rx.recv_timeout(CALLBACK_TIMEOUT) {
        Ok(result) => result,
        Err(e) => panic!("on_durable did not call back within {CALLBACK_TIMEOUT:?}: {e}"),
    }
}

fn put<E: Engine>(engine: &E, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(key, value);
    engine.write(batch).expect("write");
}

fn delete<E: Engine>(engine: &E, key: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.delete(key);
    engine.write(batch).expect("write");
}

fn delete_range<E: Engine>(engine: &E, start: &[u8], end: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.delete_range(start, end);
    engine.write(batch).expect("write");
}

fn get<E: Engine>(engine: &E, key: &[u8]) -> Option<Vec<u8>> {
    engine.get(key).expect("get")
}

fn scan<E: Engine>(engine: &E, start: &[u8], end: &[u8], limit: usize) -> Vec<KeyValue> {
    engine.scan(start, end, limit).expect("scan")
}

fn last<E: Engine>(engine: &E, start: &[u8], end: &[u8]) -> Option<KeyValue> {
    engine.last(start, end).expect("last")
}

fn keys_of(pairs: &[KeyValue]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.clone()).collect()
}

fn key_of(pair: Option<KeyValue>) -> Option<Vec<u8>> {
    pair.map(|(k, _)| k)
}

fn keys(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|k| k.to_vec()).collect()
}

/// Every pair the engine holds.
fn dump<E: Engine>(engine: &E) -> Map {
    scan(engine, b"", END_OF_KEYS, usize::MAX).into_iter().collect()
}

/// The reference semantics of a batch, written independently of any engine.
fn model_apply(map: &mut Map, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            Op::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            Op::Delete { key } => {
                map.remove(key);
            }
            Op::DeleteRange { start, end } => map.retain(|k, _| !(start <= k && k < end)),
        }
    }
}

/// Batch `i` of a numbered history: it puts, overwrites, deletes and range-deletes, so
/// that every prefix of the history leaves a different state.
fn numbered_batch(i: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    let len = usize::try_from(i * 37 % 100).expect("small");
    batch.put(format!("log/{i:06}"), vec![u8::try_from(i % 251).expect("small"); len]);
    batch.put(b"meta/last".to_vec(), i.to_be_bytes().to_vec());
    if i >= 4 {
        batch.delete(format!("log/{:06}", i - 4));
    }
    if i % 6 == 5 {
        batch.delete_range(b"aux/".to_vec(), b"aux0".to_vec());
    }
    batch.put(format!("aux/{i:06}"), i.to_le_bytes().to_vec());
    batch
}

/// The state after batches `0..p` of the numbered history.
fn model_after(p: u64) -> Map {
    let mut map = Map::new();
    for i in 0..p {
        model_apply(&mut map, &numbered_batch(i));
    }
    map
}

/// The `p` in `from..=to` such that the engine holds exactly the numbered history's
/// batches `0..p`; panics if there is none.
fn surviving_prefix<E: Engine>(engine: &E, from: u64, to: u64) -> u64 {
    let state = dump(engine);
    match (from..=to).find(|&p| model_after(p) == state) {
        Some(p) => p,
        None => panic!(
            "after a crash the engine holds no prefix of batches 0..p with {from} <= p <= {to}; it holds {} keys, \
             meta/last = {:?}",
            state.len(),
            state.get(b"meta/last".as_slice())
        ),
    }
}

fn assert_value<E: Engine>(engine: &E, key: &[u8], expected: &[u8]) {
    match get(engine, key) {
        Some(v) => assert!(
            v == expected,
            "value of {:?} differs: {} bytes read, {} bytes expected",
            String::from_utf8_lossy(key),
            v.len(),
            expected.len()
        ),
        None => panic!("{:?} is missing", String::from_utf8_lossy(key)),
    }
}

// ---------------------------------------------------------------------------------------
// Cases.

fn put_get_delete<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(get(&e, b"a"), None, "a fresh engine is empty");
    put(&e, b"a", b"1");
    assert_eq!(get(&e, b"a"), Some(b"1".to_vec()));
    put(&e, b"a", b"2");
    assert_eq!(get(&e, b"a"), Some(b"2".to_vec()), "a put overwrites");
    delete(&e, b"a");
    assert_eq!(get(&e, b"a"), None, "a delete removes");
    delete(&e, b"never-written");
    assert_eq!(get(&e, b"never-written"), None, "deleting a missing key is fine");

    put(&e, b"empty-value", b"");
    assert_eq!(get(&e, b"empty-value"), Some(Vec::new()), "an empty value is not an absent one");
    put(&e, b"", b"empty key");
    assert_eq!(get(&e, b""), Some(b"empty key".to_vec()), "the empty key is a key");
    put(&e, b"a\0", b"nul");
    assert_eq!(get(&e, b"a"), None, "a key is not its extension");
    assert_eq!(get(&e, b"a\0"), Some(b"nul".to_vec()));
    put(&e, &[0xff, 0x00, 0xfe], b"binary");
    assert_eq!(get(&e, &[0xff, 0x00, 0xfe]), Some(b"binary".to_vec()), "keys are opaque bytes");
}

/// Keys chosen so that neighbours differ in their last byte, in a trailing NUL, or in a
/// prefix relation.
const ORDER_KEYS: [&[u8]; 8] = [b"", b"a", b"a\0", b"ab", b"b", b"b\xff", b"c", b"\xff"];

/// Writes `ORDER_KEYS`, out of order, partly in one batch; each value is `v` + the key.
fn write_order_keys<E: Engine>(e: &E) {
    let value = |k: &[u8]| [b"v".as_slice(), k].concat();
    for k in [ORDER_KEYS[6], ORDER_KEYS[1], ORDER_KEYS[7], ORDER_KEYS[3]] {
        put(e, k, &value(k));
    }
    let mut batch = WriteBatch::new();
    for k in [ORDER_KEYS[5], ORDER_KEYS[0], ORDER_KEYS[4], ORDER_KEYS[2]] {
        batch.put(k, value(k));
    }
    e.write(batch).expect("write");
}

fn scan_order_bounds_and_limit<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(scan(&e, b"", END_OF_KEYS, usize::MAX), Vec::new(), "a fresh engine is empty");
    write_order_keys(&e);

    let all = scan(&e, b"", END_OF_KEYS, usize::MAX);
    assert_eq!(keys_of(&all), keys(&ORDER_KEYS), "a scan returns keys in ascending byte order");
    for (k, v) in &all {
        assert_eq!(v, &[b"v".as_slice(), k].concat(), "a scan pairs each key with its value");
    }

    assert_eq!(keys_of(&scan(&e, b"a", b"b", 100)), keys(&[b"a", b"a\0", b"ab"]), "start included, end excluded");
    assert_eq!(keys_of(&scan(&e, b"a\0", b"b\0", 100)), keys(&[b"a\0", b"ab", b"b"]));
    assert_eq!(keys_of(&scan_all(&e, b"a\x01", b"b")), keys(&[b"ab"]), "bounds between keys");
    assert_eq!(keys_of(&scan(&e, b"c", b"c\0", 100)), keys(&[b"c"]), "a range of one key");
    assert_eq!(keys_of(&scan(&e, b"b\xff", END_OF_KEYS, 100)), keys(&[b"b\xff", b"c", b"\xff"]));
    assert_eq!(scan(&e, b"c\0", b"\xff", 100), Vec::new(), "a range between two keys is empty");
    assert_eq!(scan(&e, b"b", b"b", 100), Vec::new(), "an empty range is empty");
    assert_eq!(scan(&e, b"c", b"a", 100), Vec::new(), "an inverted range is empty");

    assert_eq!(scan(&e, b"", END_OF_KEYS, 0), Vec::new(), "limit 0 returns nothing");
    assert_eq!(keys_of(&scan(&e, b"", END_OF_KEYS, 2)), keys(&[b"", b"a"]), "limit keeps the smallest keys");
    assert_eq!(keys_of(&scan(&e, b"ab", END_OF_KEYS, 3)), keys(&[b"ab", b"b", b"b\xff"]));
    assert_eq!(keys_of(&scan(&e, b"b", b"c", 1000)), keys(&[b"b", b"b\xff"]), "a large limit is no limit");

    delete(&e, b"ab");
    assert_eq!(keys_of(&scan(&e, b"a", b"b", 100)), keys(&[b"a", b"a\0"]), "a scan skips deleted keys");
}

fn scan_bytes_stops_at_the_byte_budget<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(e.scan_bytes(b"", END_OF_KEYS, 100).expect("scan_bytes"), Vec::new(), "a fresh engine is empty");
    let mut batch = WriteBatch::new();
    for (i, k) in [b"k1", b"k2", b"k3", b"k4"].iter().enumerate() {
        batch.put(k.as_slice(), vec![i as u8; 10]);
    }
    e.write(batch).expect("write");
    let got = |start: &[u8], end: &[u8], budget| keys_of(&e.scan_bytes(start, end, budget).expect("scan_bytes"));
    assert_eq!(got(b"", END_OF_KEYS, 30), keys(&[b"k1", b"k2", b"k3"]), "values up to the budget");
    assert_eq!(got(b"", END_OF_KEYS, 29), keys(&[b"k1", b"k2"]), "never over the budget");
    assert_eq!(got(b"", END_OF_KEYS, 0), keys(&[b"k1"]), "always the first pair");
    assert_eq!(got(b"k2", b"k4", 1000), keys(&[b"k2", b"k3"]), "start included, end excluded");
    assert_eq!(got(b"k4\0", END_OF_KEYS, 1000), keys(&[]), "nothing in range");
    let all = e.scan_bytes(b"", END_OF_KEYS, usize::MAX).expect("scan_bytes");
    assert_eq!(all, scan_all(&e, b"", END_OF_KEYS), "with no budget, what scan gives");
}

// Scan with the limit elided, to keep the assertions above on one line each.
fn scan_all<E: Engine>(e: &E, start: &[u8], end: &[u8]) -> Vec<KeyValue> {
    scan(e, start, end, usize::MAX)
}

fn last_in_range<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(last(&e, b"", END_OF_KEYS), None, "a fresh engine is empty");
    write_order_keys(&e);

    let found = last(&e, b"a", b"b").expect("a key in [a, b)");
    assert_eq!(found, (b"ab".to_vec(), b"vab".to_vec()), "last returns the greatest key and its value");
    assert_eq!(key_of(last(&e, b"", END_OF_KEYS)), Some(b"\xff".to_vec()));
    assert_eq!(key_of(last(&e, b"a", b"ab")), Some(b"a\0".to_vec()), "a key equal to end is excluded");
    assert_eq!(key_of(last(&e, b"a", b"ab\0")), Some(b"ab".to_vec()), "a key just below end is included");
    assert_eq!(key_of(last(&e, b"b", b"b\0")), Some(b"b".to_vec()), "a key equal to start is included");
    assert_eq!(last(&e, b"a\x01", b"ab"), None, "keys just outside on both sides");
    assert_eq!(last(&e, b"b\0", b"b\xff"), None, "a range between two keys is empty");
    assert_eq!(last(&e, b"c\0", b"\xff"), None, "a range between two keys is empty");
    assert_eq!(last(&e, b"d", b"e"), None, "keys below start do not count");
    assert_eq!(last(&e, b"c", b"c"), None, "an empty range is empty");
    assert_eq!(last(&e, b"c", b"a"), None, "an inverted range is empty");
    assert_eq!(key_of(last(&e, b"", b"a")), Some(Vec::new()), "the empty key is the smallest key");

    delete_range(&e, b"a", b"b");
    assert_eq!(key_of(last(&e, b"", b"b")), Some(Vec::new()), "last skips range-deleted keys");
    delete(&e, b"\xff");
    assert_eq!(key_of(last(&e, b"", END_OF_KEYS)), Some(b"c".to_vec()), "last skips deleted keys");
}

fn delete_range_exact_bounds<H: Harness>(h: &mut H) {
    let e = h.open();
    let k = |i: u8| format!("k/{i}").into_bytes();
    put(&e, b"j", b"outside");
    put(&e, b"l", b"outside");
    for i in 0..10 {
        put(&e, &k(i), &[i]);
    }
    let k_keys = |e: &H::E| keys_of(&scan_all(e, b"k/", b"k0"));

    delete_range(&e, &k(3), &k(7));
    assert_eq!(k_keys(&e), [0, 1, 2, 7, 8, 9].map(k).to_vec(), "start is deleted, end is kept");
    delete_range(&e, b"k/8\0", &k(9));
    assert_eq!(k_keys(&e), [0, 1, 2, 7, 8, 9].map(k).to_vec(), "a range between two keys deletes nothing");
    delete_range(&e, &k(9), &k(9));
    assert_eq!(k_keys(&e), [0, 1, 2, 7, 8, 9].map(k).to_vec(), "an empty range deletes nothing");
    delete_range(&e, &k(9), &k(0));
    assert_eq!(k_keys(&e), [0, 1, 2, 7, 8, 9].map(k).to_vec(), "an inverted range deletes nothing");
    delete_range(&e, b"k/1\0", b"k/8");
    assert_eq!(k_keys(&e), [0, 1, 8, 9].map(k).to_vec(), "bounds that are not keys");

    put(&e, &k(5), b"again");
    assert_eq!(get(&e, &k(5)), Some(b"again".to_vec()), "a later put is not shadowed by a range delete");
    assert_eq!(get(&e, &k(4)), None);

    delete_range(&e, b"k/", b"k0");
    assert_eq!(k_keys(&e), Vec::<Vec<u8>>::new(), "a prefix range deletes every key with the prefix");
    assert_eq!(keys_of(&scan_all(&e, b"", END_OF_KEYS)), keys(&[b"j", b"l"]), "keys outside the range remain");
}

fn batch_applies_ops_in_order<H: Harness>(h: &mut H) {
    let e = h.open();
    put(&e, b"pre", b"0");

    let mut batch = WriteBatch::new();
    batch.put(b"x".as_slice(), b"1".as_slice()).delete(b"x".as_slice());
    batch.delete(b"y".as_slice()).put(b"y".as_slice(), b"2".as_slice());
    batch.put(b"z".as_slice(), b"1".as_slice()).put(b"z".as_slice(), b"2".as_slice());
    batch.put(b"r/1".as_slice(), b"1".as_slice()).put(b"r/2".as_slice(), b"2".as_slice());
    batch.delete_range(b"r/".as_slice(), b"r0".as_slice());
    batch.put(b"r/3".as_slice(), b"3".as_slice());
    batch.delete(b"pre".as_slice()).put(b"pre".as_slice(), b"after".as_slice());
    e.write(batch).expect("write");

    assert_eq!(get(&e, b"x"), None, "put then delete in one batch: deleted");
    assert_eq!(get(&e, b"y"), Some(b"2".to_vec()), "delete then put in one batch: present");
    assert_eq!(get(&e, b"z"), Some(b"2".to_vec()), "two puts in one batch: the later wins");
    assert_eq!(keys_of(&scan_all(&e, b"r/", b"r0")), keys(&[b"r/3"]), "a range delete covers earlier puts only");
    assert_eq!(get(&e, b"pre"), Some(b"after".to_vec()));

    let before = dump(&e);
    e.write(WriteBatch::new()).expect("an empty batch is a valid write");
    assert_eq!(dump(&e), before, "an empty batch changes nothing");
}

fn batch_is_atomic_to_readers<H: Harness>(h: &mut H) {
    const GENERATIONS: u64 = 300;
    const KEYS: u64 = 10;
    let e = h.open();
    let writer_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for g in 1..=GENERATIONS {
                let mut batch = WriteBatch::new();
                if g % 2 == 1 {
                    batch.delete_range(b"a/".as_slice(), b"a0".as_slice());
                }
                for i in 0..KEYS {
                    batch.put(format!("a/{i}"), g.to_be_bytes().to_vec());
                }
                e.write(batch).expect("write");
            }
            writer_done.store(true, Ordering::Release);
        });
        let mut seen = 0;
        let mut reads = 0u64;
        loop {
            let done = writer_done.load(Ordering::Acquire);
            let pairs = scan_all(&e, b"a/", b"a0");
            reads += 1;
            if !pairs.is_empty() {
                assert_eq!(pairs.len(), usize::try_from(KEYS).expect("small"), "a scan saw part of a batch");
                let g = u64::from_be_bytes(pairs[0].1.as_slice().try_into().expect("8 bytes"));
                assert!(pairs.iter().all(|(_, v)| v == &g.to_be_bytes()), "a scan saw parts of two batches");
                assert!(g >= seen, "generation went back from {seen} to {g}");
                seen = g;
            }
            if done {
                break;
            }
        }
        assert_eq!(seen, GENERATIONS, "the read after the writer finished sees the last batch ({reads} reads)");
    });
}

fn write_is_visible_before_durable<H: Harness>(h: &mut H) {
    let e = h.open();
    put(&e, b"w", b"1");
    // No on_durable yet: the write must be readable at once, from any thread.
    assert_eq!(get(&e, b"w"), Some(b"1".to_vec()));
    assert_eq!(keys_of(&scan_all(&e, b"", END_OF_KEYS)), keys(&[b"w"]));
    assert_eq!(key_of(last(&e, b"", END_OF_KEYS)), Some(b"w".to_vec()));
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(get(&e, b"w"), Some(b"1".to_vec()), "another thread sees the write"));
    });
    delete(&e, b"w");
    assert_eq!(get(&e, b"w"), None, "a delete is visible at once");
    sync(&e).expect("sync");
}

fn on_durable_calls_back_ok<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(sync(&e), Ok(()), "on_durable with nothing written");
    put(&e, b"a", b"1");
    assert_eq!(sync(&e), Ok(()), "on_durable after a write");

    // Several requests in a row, then wait for all of them.
    let (tx, rx) = mpsc::channel();
    for i in 0..20u32 {
        put(&e, format!("b/{i:02}").as_bytes(), b"1");
        let tx = tx.clone();
        e.on_durable(Box::new(move |result| {
            let _ = tx.send((i, result));
        }));
    }
    drop(tx);
    let mut fired = Vec::new();
    for _ in 0..20 {
        let (i, result) = rx.recv_timeout(CALLBACK_TIMEOUT).expect("every on_durable calls back");
        assert_eq!(result, Ok(()), "request {i}");
        fired.push(i);
    }
    fired.sort_unstable();
    assert_eq!(fired, (0..20).collect::<Vec<_>>(), "each request calls back once");
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "no callback fires twice");
}

fn durable_data_survives_crash<H: Harness>(h: &mut H) {
    let mut e = h.open();
    put(&e, b"a", b"1");
    let mut vote = WriteBatch::new();
    vote.put(b"vote".as_slice(), b"term 3".as_slice());
    e.write_durable(vote).expect("write_durable");
    e = h.crash_and_reopen(e);
    assert_eq!(get(&e, b"vote"), Some(b"term 3".to_vec()), "write_durable survives a crash");
    assert_eq!(get(&e, b"a"), Some(b"1".to_vec()), "write_durable makes earlier batches durable too");

    put(&e, b"c", b"3");
    sync(&e).expect("sync");
    e = h.crash_and_reopen(e);
    assert_eq!(get(&e, b"c"), Some(b"3".to_vec()), "a write before on_durable Ok survives a crash");

    for i in 0..5u8 {
        put(&e, &[b'r', b'/', i], &[i]);
    }
    delete(&e, b"a");
    delete_range(&e, b"r/\x01", b"r/\x04");
    sync(&e).expect("sync");
    e = h.crash_and_reopen(e);
    assert_eq!(get(&e, b"a"), None, "a durable delete survives a crash");
    assert_eq!(keys_of(&scan_all(&e, b"r/", b"r0")), keys(&[b"r/\x00", b"r/\x04"]), "so does a range delete");
    assert_eq!(get(&e, b"vote"), Some(b"term 3".to_vec()), "and earlier data stays");

    // The reopened engine keeps working, and a second crash keeps what it made durable.
    put(&e, b"d", b"4");
    sync(&e).expect("sync");
    e = h.crash_and_reopen(e);
    assert_eq!(get(&e, b"d"), Some(b"4".to_vec()));
}

fn crash_keeps_a_prefix_with_every_durable_batch<H: Harness>(h: &mut H) {
    const N: u64 = 24;
    // (batches before the sync, whether that sync is a write_durable of the last of them)
    for (synced, by_write_durable) in [(0, false), (9, false), (9, true), (N, false), (1, true)] {
        let mut e = h.open();
        for i in 0..N {
            let batch = numbered_batch(i);
            if by_write_durable && i + 1 == synced {
                e.write_durable(batch).expect("write_durable");
            } else {
                e.write(batch).expect("write");
            }
            if !by_write_durable && i + 1 == synced {
                sync(&e).expect("sync");
            }
        }
        assert_eq!(dump(&e), model_after(N), "before the crash every batch is visible");
        e = h.crash_and_reopen(e);
        let p = surviving_prefix(&e, synced, N);

        // The history continues from what survived; a durable batch ends it this time.
        for i in p..p + 3 {
            if i == p + 2 {
                e.write_durable(numbered_batch(i)).expect("write_durable");
            } else {
                e.write(numbered_batch(i)).expect("write");
            }
        }
        e = h.crash_and_reopen(e);
        assert_eq!(surviving_prefix(&e, p + 3, p + 3), p + 3, "everything up to a write_durable survives");
    }
}

fn clean_reopen_keeps_everything<H: Harness>(h: &mut H) {
    const N: u64 = 30;
    let mut e = h.open();
    for i in 0..N {
        e.write(numbered_batch(i)).expect("write");
    }
    e = h.clean_reopen(e);
    assert_eq!(dump(&e), model_after(N), "a clean reopen keeps every batch, synced or not");
    e = h.clean_reopen(e);
    assert_eq!(dump(&e), model_after(N), "a second clean reopen too");
    for i in N..N + 5 {
        e.write(numbered_batch(i)).expect("write");
    }
    e = h.clean_reopen(e);
    assert_eq!(dump(&e), model_after(N + 5), "writes after a reopen are kept too");
}

fn concurrent_on_durable_fire_exactly_once<H: Harness>(h: &mut H) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    const TOTAL: usize = THREADS * PER_THREAD;
    let mut e = h.open();
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..TOTAL).map(|_| AtomicUsize::new(0)).collect());
    let (tx, rx) = mpsc::channel::<(usize, Result<(), StorageError>)>();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (e, counts, tx) = (&e, Arc::clone(&counts), tx.clone());
            s.spawn(move || {
                for j in 0..PER_THREAD {
                    let id = t * PER_THREAD + j;
                    put(e, format!("t/{t}/{j:04}").as_bytes(), &id.to_be_bytes());
                    let (counts, tx) = (Arc::clone(&counts), tx.clone());
                    e.on_durable(Box::new(move |result| {
                        counts[id].fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send((id, result));
                    }));
                }
            });
        }
    });
    drop(tx);
    for _ in 0..TOTAL {
        let (id, result) = rx.recv_timeout(CALLBACK_TIMEOUT).expect("every on_durable calls back");
        assert_eq!(result, Ok(()), "request {id}");
    }
    for (id, count) in counts.iter().enumerate() {
        assert_eq!(count.load(Ordering::SeqCst), 1, "request {id} called back {count:?} times");
    }
    e = h.crash_and_reopen(e);
    assert_eq!(scan_all(&e, b"t/", b"t0").len(), TOTAL, "every write covered by an Ok callback survives a crash");
}

fn large_values_round_trip<H: Harness>(h: &mut H) {
    const MIB: usize = 1 << 20;
    let v1: Vec<u8> = (0..MIB).map(|i| (i.wrapping_mul(31).wrapping_add(7) % 256) as u8).collect();
    let v2: Vec<u8> = (0..MIB).map(|i| (i / 4096 % 256) as u8).collect();
    let v3: Vec<u8> = vec![0xab; MIB + 1];
    let mut e = h.open();

    let mut batch = WriteBatch::new();
    batch.put(b"big/1".as_slice(), v1.clone()).put(b"big/2".as_slice(), v2.clone());
    e.write(batch).expect("write");
    assert_value(&e, b"big/1", &v1);
    assert_value(&e, b"big/2", &v2);
    let pairs = scan_all(&e, b"big/", b"big0");
    assert_eq!(keys_of(&pairs), keys(&[b"big/1", b"big/2"]));
    assert!(pairs[0].1 == v1 && pairs[1].1 == v2, "a scan returns large values whole");

    let mut batch = WriteBatch::new();
    batch.put(b"big/3".as_slice(), v3.clone());
    e.write_durable(batch).expect("write_durable");
    e = h.crash_and_reopen(e);
    assert_value(&e, b"big/1", &v1);
    assert_value(&e, b"big/2", &v2);
    assert_value(&e, b"big/3", &v3);

    put(&e, b"big/1", b"small now");
    e = h.clean_reopen(e);
    assert_value(&e, b"big/1", b"small now");
    assert_value(&e, b"big/3", &v3);
}
