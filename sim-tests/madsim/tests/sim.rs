//! The madsim tier's tests. Each is one seed of a simulation; madsim's environment picks
//! the seeds: `MADSIM_TEST_SEED` (the first), `MADSIM_TEST_NUM` (how many),
//! `MADSIM_TEST_CHECK_DETERMINISM` (run the seed twice and fail at the first divergence of
//! any random draw). `sim-tests/madsim/run` sets them; see its header.

#![cfg(madsim)]

use std::time::Duration;

use flotilla_sim_madsim::spec::{ELECTION_TIMEOUT_MAX, NODES, Spec};
use flotilla_sim_madsim::workload::{self, Outcome};
use flotilla_sim_madsim::{Sim, init, seed};
use madsim::rand::Rng;

/// The partition group t20 and t30 work on.
const GROUP: u64 = 1;

/// A quiet cluster whose partition group has committed a write, led by a random node.
/// The first leader is most often the highest node id (it wins the initial vote ties),
/// so the leadership is moved to a node drawn from the seed.
async fn leader_on_a_random_node() -> (Sim, u64) {
    let sim = Sim::start(Spec::quiet(1)).await;
    sim.register_brokers().await;
    let client = sim.client.clone();
    let first = sim
        .on_client(
            async move { client.write_until_acked(GROUP, Duration::from_secs(30), || workload::produce(0, 0)).await },
        )
        .await;
    assert!(first.is_some(), "seed {}: no first write", seed());
    let leader = NODES[madsim::rand::thread_rng().gen_range(0..NODES.len())];
    assert!(
        sim.transfer_leader(GROUP, leader, Duration::from_secs(10)).await,
        "seed {}: no transfer to {leader}",
        seed()
    );
    (sim, leader)
}

/// t10: writers write while the nemesis kills (with power loss), pauses, clogs and drops;
/// then every fault ends, the cluster must converge, and every acknowledged write must be
/// in every replica's committed log at the place it was acknowledged.
#[madsim::test]
async fn t10_random_faults_then_convergence() {
    flotilla_sim_madsim::random_run().await;
}

/// t20: a partition leader is frozen with writes in flight, past its election timeout.
/// The others elect a new leader and commit other writes at the same log positions. When
/// the old leader wakes, whatever it acknowledges must really be committed, at the
/// offset it names.
#[madsim::test]
async fn t20_paused_leader_acknowledges_only_committed_writes() {
    init();
    let (sim, old) = leader_on_a_random_node().await;

    // Writes in flight to it; it freezes at a random moment among them.
    let mut in_flight = Vec::new();
    for i in 1..=6u64 {
        let client = sim.client.clone();
        in_flight.push(sim.spawn_on_client(async move { client.write_to(old, GROUP, workload::produce(1, i)).await }));
    }
    let delay = madsim::rand::thread_rng().gen_range(0..15);
    madsim::time::sleep(Duration::from_millis(delay)).await;
    sim.cluster.lock().unwrap().pause(old, true);

    // The others elect a leader and commit writes of their own.
    let client = sim.client.clone();
    let others: Vec<u64> = NODES.into_iter().filter(|n| *n != old).collect();
    let newer = sim
        .on_client(async move {
            let mut seq = 0;
            let mut acked = 0;
            let deadline = std::time::Instant::now() + ELECTION_TIMEOUT_MAX * 4;
            while acked < 4 && std::time::Instant::now() < deadline {
                seq += 1;
                let target = others[seq as usize % others.len()];
                if let Outcome::Acked(_) = client.write_to(target, GROUP, workload::produce(2, seq)).await {
                    acked += 1;
                }
            }
            acked
        })
        .await;
    assert!(newer > 0, "seed {}: no new leader took a write while node {old} was paused", seed());
    let new = sim.leader_of(GROUP);
    assert!(new.is_some_and(|n| n != old), "seed {}: no other node leads while node {old} is paused", seed());

    sim.cluster.lock().unwrap().resume(old);
    let mut answered_after_wake = 0;
    for w in in_flight {
        if let Outcome::Acked(_) = w.await.expect("client task ran") {
            answered_after_wake += 1;
        }
    }
    sim.converge().await;
    let verdict = sim.verify();
    println!(
        "seed {} ok: leader {old} paused with 6 writes in flight, {answered_after_wake} acknowledged; {newer} written \
         meanwhile; {} produce acks checked",
        seed(),
        verdict.produce_acks
    );
}

/// t30 (regression, found by t10): a partition leader whose own disk is slow acknowledges
/// writes that its followers made durable but it did not; a power loss takes them from its
/// disk, and it restarts at once. With openraft's default (`enable_leader_restore`) it
/// resumed its old term as leader and proposed other entries under the log ids of the
/// ones it lost, which the followers, seeing matching ids, kept: replicas diverged and
/// acknowledged writes were lost. `GroupTimings::openraft_config` now turns that off.
#[madsim::test]
async fn t30_a_leader_that_lost_its_unsynced_tail_cannot_reuse_its_log_ids() {
    init();
    let (sim, leader) = leader_on_a_random_node().await;

    // The leader's disk stalls; its followers' do not.
    sim.cluster.lock().unwrap().set_flush_window(leader, Duration::from_secs(10));
    let client = sim.client.clone();
    let acked = sim
        .on_client(async move {
            let mut acked = 0;
            for i in 1..=5 {
                if let Outcome::Acked(_) = client.write_to(leader, GROUP, workload::produce(1, i)).await {
                    acked += 1;
                }
            }
            acked
        })
        .await;
    assert!(acked > 0, "seed {}: the leader acknowledged nothing before its disk synced", seed());
    {
        let mut c = sim.cluster.lock().unwrap();
        assert!(c.nodes[&leader].engine.unsynced_batches() > 0, "seed {}: nothing left unsynced", seed());
        c.kill_keeping(leader, 0);
        let normal = c.spec.flush_window;
        c.set_flush_window(leader, normal);
        c.restart(leader);
    }

    // Straight back, before the others time out: it must not take writes in its old term.
    let client = sim.client.clone();
    sim.on_client(async move {
        for i in 6..=10 {
            client.write_to(leader, GROUP, workload::produce(2, i)).await;
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    sim.converge().await;
    let verdict = sim.verify();
    println!(
        "seed {} ok: leader {leader} lost {acked} acknowledged writes from its disk; {} acks checked",
        seed(),
        verdict.produce_acks
    );
}
