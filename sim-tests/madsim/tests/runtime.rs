//! openraft's runtime on madsim (`crates/raft/src/rt_madsim.rs`) against openraft's own
//! runtime conformance suite, plus what the simulation relies on: simulated time and
//! seeded draws.

#![cfg(madsim)]

use std::time::{Duration, Instant};

use flotilla_raft::rt::Runtime;
use openraft_rt::AsyncRuntime;
use rand010::RngExt;

#[test]
fn t00_passes_openraft_runtime_suite() {
    openraft_rt::testing::Suite::<Runtime>::test_all();
}

#[test]
fn t01_a_seed_fixes_draws_and_timeouts_fire_in_simulated_time() {
    let run = |seed| {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async {
            let start = Instant::now();
            let slow = Runtime::timeout(Duration::from_secs(5), Runtime::sleep(Duration::from_secs(60))).await;
            assert!(slow.is_err());
            assert_eq!(start.elapsed().as_secs(), 5);
            let fast = Runtime::timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(fast.ok(), Some(7));
            let task = Runtime::spawn(async { Runtime::thread_rng().random::<u64>() });
            task.await.expect("task ran")
        })
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}
