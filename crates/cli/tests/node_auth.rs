//! The cluster's own traffic (docs/security.md), over real node processes with the
//! mutual TLS `flotilla certs` sets up: a process without the cluster's certificate
//! cannot speak to the node-to-node listener at all; one holding node 2's certificate
//! cannot speak as node 3, vote as node 3 or change node 3's address; a certificate of
//! another cluster is refused; a data directory of one cluster does not start with the
//! certificate of another; and the cluster keeps serving throughout, losing nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use flotilla_client::ProducerConfig;
use flotilla_proto::raft::v1 as raftpb;
use flotilla_proto::raft::v1::raft_client::RaftClient;
use flotilla_rpc::NodeTls;

/// What node `id`'s certificate in `dir` lets a process do, as node `id`.
fn tls_of(dir: &Path, id: u64) -> NodeTls {
    NodeTls::load(id, &dir.join("ca.pem"), &dir.join(format!("node-{id}.pem")), &dir.join(format!("node-{id}.key")))
        .expect("node certificate")
}

/// One node-to-node call to `addr` (TLS with `tls` toward node `to`, else plaintext):
/// the reply's bytes, or the error's code and message.
async fn call(
    addr: &str,
    tls: Option<(&NodeTls, u64)>,
    req: raftpb::RaftRequest,
) -> Result<Vec<u8>, (tonic::Code, String)> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some((tls, to)) = tls {
        endpoint = endpoint.tls_config(tls.client(to)).expect("tls config");
    }
    let channel = endpoint.connect().await.map_err(|e| (tonic::Code::Unavailable, format!("{e:?}")))?;
    RaftClient::new(channel)
        .call(req)
        .await
        .map(|r| r.into_inner().payload.to_vec())
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// x20: strangers, impostors and other clusters are kept out of the node-to-node
/// listener; the cluster serves on and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x20_only_the_cluster_nodes_speak_node_to_node_each_as_itself() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "guarded", 3).await;
    let producer = client.producer("guarded", ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.push(producer.enqueue(keyed(&format!("k{}", i % 5), &format!("before-{i}"))).await.expect("enqueue"));
    }
    for ack in acked.drain(..) {
        ack.await.expect("acknowledged");
    }
    let certs = cluster.certs_dir();
    let groups: Vec<u64> =
        client.describe_topic("guarded").await.expect("describe").partitions.iter().map(|p| p.group_id).collect();
    let target = 1;
    let rpc = cluster.rpc_addr(target);
    let ping = |from: u64, group_id: u64, payload: Vec<u8>| raftpb::RaftRequest {
        group_id,
        from_node: from,
        payload: payload.into(),
        to_node: target,
    };
    let vote_as_3 = flotilla_raft::wire::vote_request(3, 1_000_000);

    // No certificate: plaintext gets no answer, and neither does TLS without a client
    // certificate.
    let plain = call(&rpc, None, ping(3, 0, vote_as_3.clone())).await;
    assert!(plain.is_err(), "a plaintext call reached the node-to-node service: {plain:?}");
    let cluster_id = flotilla_rpc::tls::ca_cluster(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(certs.join("ca.pem")).unwrap()))
        .domain_name(flotilla_rpc::tls::node_name(&cluster_id, target));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{rpc}"))
        .unwrap()
        .tls_config(anonymous)
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await;
    if let Ok(channel) = channel {
        let r = RaftClient::new(channel).call(ping(3, 0, vote_as_3.clone())).await;
        assert!(r.is_err(), "a call without a client certificate was served: {r:?}");
    }

    // Another cluster's node 3 (its own authority): the handshake refuses it.
    let other = tempfile::tempdir().unwrap();
    flotilla_ok(&["certs", "ca", "--cluster-id", "other", "--dir"], other.path());
    flotilla_ok(&["certs", "node", "--id", "3", "--ca-dir"], other.path());
    let foreign = tls_of(other.path(), 3);
    let r = call(&rpc, Some((&foreign, target)), ping(3, 0, vote_as_3.clone())).await;
    assert!(r.is_err(), "another cluster's certificate was accepted: {r:?}");

    // Node 2's certificate, speaking as node 3: refused before any group sees it.
    let node2 = tls_of(&certs, 2);
    for group in [0, groups[0]] {
        let r = call(&rpc, Some((&node2, target)), ping(3, group, vote_as_3.clone())).await;
        let (code, why) = r.expect_err("node 2 spoke as node 3");
        assert_eq!(code, tonic::Code::PermissionDenied, "{why}");
        assert!(why.contains("node-3."), "{why}");
    }
    // As node 2, but asking for votes for node 3, in a term far ahead: refused by the
    // group, which would otherwise have moved to that term.
    for group in [0, groups[0]] {
        let reply = call(&rpc, Some((&node2, target)), ping(2, group, vote_as_3.clone())).await.expect("delivered");
        let why = flotilla_raft::wire::refusal(&reply).unwrap_or_else(|| panic!("group {group} took node 3's vote"));
        assert!(why.contains("in the name of node 3"), "{why}");
    }
    // As node 2, moving node 3's address to one node 2 controls: refused.
    let moved = flotilla_metadata::Broker::new(3, "127.0.0.1:1", flotilla_metadata::Labels::default())
        .with_rpc_addr("127.0.0.1:2");
    let write = flotilla_raft::wire::forwarded_metadata_write(flotilla_metadata::Command::RegisterBroker(moved));
    let leader = client.describe_cluster().await.expect("describe").metadata_leader.expect("a metadata leader");
    let r = call(
        &cluster.rpc_addr(leader),
        Some((&node2, leader)),
        raftpb::RaftRequest { group_id: 0, from_node: 2, payload: write.into(), to_node: leader },
    )
    .await
    .expect("delivered");
    let why = flotilla_raft::wire::refusal(&r).expect("node 2 moved node 3's address");
    assert!(why.contains("in the name of node 3"), "{why}");
    // A message meant for another node (a stale address book) is refused too.
    let r = call(&rpc, Some((&node2, target)), raftpb::RaftRequest { to_node: 3, ..ping(2, 0, vec![]) }).await;
    assert_eq!(r.expect_err("a message for node 3 served by node 1").0, tonic::Code::FailedPrecondition);

    // Nothing changed: node 3 is where it was, the cluster serves and has everything.
    let info = client.describe_cluster().await.expect("describe");
    let n3 = info.brokers.iter().find(|b| b.id == 3).expect("node 3");
    assert_eq!(n3.addr, cluster.addr(3));
    assert_eq!(n3.rpc_addr, cluster.rpc_addr(3));
    for i in 0..200 {
        acked.push(producer.enqueue(keyed(&format!("k{}", i % 5), &format!("after-{i}"))).await.expect("enqueue"));
    }
    for ack in acked {
        ack.await.expect("acknowledged after the attempts");
    }
    let values: std::collections::BTreeSet<String> =
        drain(&client, "guarded", 3).await.values().flatten().map(|(_, v)| v.clone()).collect();
    for i in 0..200 {
        assert!(values.contains(&format!("before-{i}")) && values.contains(&format!("after-{i}")), "record {i} lost");
    }
    for id in cluster.ids() {
        assert!(cluster.pid(id).is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()), "node {id}");
    }

    // Node 3's data directory is this cluster's: with the other cluster's certificate
    // for node 3, it does not start.
    cluster.stop(3);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", "--id", "3", "--listen", &cluster.addr(3), "--rpc-listen", &cluster.rpc_addr(3)])
        .arg("--data-dir")
        .arg(cluster.dir().join("node-3"))
        .arg("--rpc-tls-ca")
        .arg(other.path().join("ca.pem"))
        .arg("--rpc-tls-cert")
        .arg(other.path().join("node-3.pem"))
        .arg("--rpc-tls-key")
        .arg(other.path().join("node-3.key"))
        .output()
        .expect("run flotilla node");
    assert!(!out.status.success(), "node 3 started on its data with another cluster's certificate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("belongs to cluster {cluster_id}")) && stderr.contains("other"), "{stderr}");
    // With its own certificate it comes back.
    cluster.restart(3);
    node_alive(&client, 3).await;
}

/// Stops and restarts each node in turn, waiting after each until it is alive and every
/// partition of `topic` has a leader, and producing to `topic` throughout; the values
/// acknowledged.
async fn rolling_restart(
    cluster: &mut flotilla_testkit::ProcessCluster,
    client: &flotilla_client::Client,
    topic: &str,
    step: &str,
) -> Vec<String> {
    let producer = client.producer(topic, ProducerConfig::default());
    let mut acked = Vec::new();
    for id in cluster.ids() {
        cluster.stop(id);
        cluster.restart(id);
        eventually(&format!("{step}: node {id} back, every partition led"), Duration::from_secs(60), async || {
            let info = client.describe_cluster().await.map_err(|e| e.to_string())?;
            let alive = info.brokers.iter().filter(|b| b.state == "alive").count();
            let t = client.describe_topic(topic).await.map_err(|e| e.to_string())?;
            if alive == 3 && t.partitions.iter().all(|p| p.leader.is_some()) {
                Ok(())
            } else {
                Err(format!("{alive} alive, {t:?}"))
            }
        })
        .await;
        for i in 0..20 {
            let value = format!("{step}-{id}-{i}");
            producer.send(keyed(&value, &value)).await.unwrap_or_else(|e| panic!("{step}, node {id}: {e}"));
            acked.push(value);
        }
    }
    acked
}

/// x21: the cluster's authority is replaced with no pause in service, in three rolling
/// restarts: every node trusts both authorities (both in its rpc-tls-ca file), then
/// takes a certificate from the new one, then trusts the new one alone, after which a
/// certificate from the old authority gets nothing. Every acknowledged record is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x21_the_authority_is_replaced_in_rolling_restarts() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "rotated", 3).await;
    let certs = cluster.certs_dir();
    let old_ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let cluster_id = flotilla_rpc::tls::ca_cluster(old_ca.as_bytes()).unwrap();
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(certs.join("ca.pem"), old.path().join("ca.pem")).unwrap();
    std::fs::copy(certs.join("ca.key"), old.path().join("ca.key")).unwrap();
    let new = tempfile::tempdir().unwrap();
    flotilla_ok(&["certs", "ca", "--cluster-id", &cluster_id, "--dir"], new.path());
    let new_ca = std::fs::read_to_string(new.path().join("ca.pem")).unwrap();

    // 1. Trust both.
    std::fs::write(certs.join("ca.pem"), format!("{old_ca}{new_ca}")).unwrap();
    let mut acked = rolling_restart(&mut cluster, &client, "rotated", "both").await;
    // 2. Certificates from the new authority.
    for id in cluster.ids() {
        let (id, dir) = (id.to_string(), certs.display().to_string());
        flotilla_ok(&["certs", "node", "--id", &id, "--name", "127.0.0.1", "--dir", &dir, "--ca-dir"], new.path());
    }
    acked.extend(rolling_restart(&mut cluster, &client, "rotated", "new-certs").await);
    // 3. Trust the new one alone.
    std::fs::write(certs.join("ca.pem"), &new_ca).unwrap();
    acked.extend(rolling_restart(&mut cluster, &client, "rotated", "new-only").await);

    // A certificate from the old authority is refused now, one from the new accepted.
    flotilla_ok(&["certs", "node", "--id", "2", "--ca-dir"], old.path());
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let stale = NodeTls::from_pem(
        2,
        new_ca.as_bytes(),
        &read(old.path().join("node-2.pem")),
        &read(old.path().join("node-2.key")),
    )
    .unwrap();
    let probe = raftpb::RaftRequest { group_id: 0, from_node: 2, to_node: 1, payload: vec![0xff].into() };
    let refused = call(&cluster.rpc_addr(1), Some((&stale, 1)), probe.clone()).await;
    assert!(refused.is_err(), "a certificate of the old authority was served: {refused:?}");
    let current = tls_of(&certs, 2);
    // Served: whatever the group makes of the junk payload, the connection was made.
    if let Err((tonic::Code::Unavailable, message)) = call(&cluster.rpc_addr(1), Some((&current, 1)), probe).await {
        panic!("the new authority's certificate: {message}")
    }

    let values: std::collections::BTreeSet<String> =
        drain(&client, "rotated", 3).await.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(acked.len(), 180);
    for v in &acked {
        assert!(values.contains(v), "{v} was acknowledged and is lost");
    }
}

/// x22: a node whose data directory was wiped does not start again under its id while
/// its peers know it (it would vote again with the votes it forgot); with its data
/// back, it does, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x22_a_wiped_node_does_not_come_back_under_its_old_id() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let _producer = hundred_records(&client, "kept").await;
    cluster.stop(3);
    let data = cluster.data_dir(3);
    let aside = data.with_extension("aside");
    std::fs::rename(&data, &aside).unwrap();
    let out = run_node(&cluster, 3, &["--peers", cluster.peers()]);
    assert!(!out.status.success(), "node 3 started on an empty data directory under its old id");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("knows node 3 as a registered broker") && stderr.contains("new id"), "{stderr}");
    assert!(!data.join("db").exists(), "the refused start left storage behind, which a second start would trust");

    // Its data back, it rejoins and the records are all there.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&aside, &data).unwrap();
    cluster.restart(3);
    node_alive(&client, 3).await;
    let read = drain(&client, "kept", 3).await;
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 100);
}

/// x23: a node whose data directory was wiped comes back under its old id through
/// `flotilla cluster replace-node` (RFC 0008): refused while the node is alive; once it
/// is stopped, its old replica leaves every group (the metadata group's voters too) while
/// the others keep taking writes; the node then starts on an empty data directory, is
/// caught up as a new replica everywhere and votes again: with another node stopped, it
/// and the third commit writes in every partition and in the metadata group, and every
/// record acknowledged is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x23_a_wiped_node_is_replaced_under_its_old_id() {
    let _serial = serial().await;
    let options = flotilla_testkit::ClusterOptions { metrics: true, ..Default::default() };
    let mut cluster = flotilla_testkit::ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    let producer = hundred_records(&client, "kept").await;
    let bootstrap = cluster.bootstrap();
    let out = cli(&bootstrap, &["cluster", "replace-node", "3"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("node 3 is alive"), "{stderr}");

    cluster.stop(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    let stdout = eventually("replace-node 3", Duration::from_secs(60), async || {
        let out = cli(&bootstrap, &["cluster", "replace-node", "3", "--wait", "--timeout", "50"]).await;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
        }
    })
    .await;
    assert!(stdout.contains("start node 3 now"), "{stdout}");
    let during = client.controllers().await.expect("controllers");
    assert_eq!(during.voters, vec![1, 2], "node 3 left the metadata group's voters");
    for i in 100..150 {
        producer.send(keyed(&format!("k{i}"), &format!("v{i}"))).await.expect("acknowledged without node 3");
    }

    cluster.restart(3);
    node_alive(&client, 3).await;
    assert!(cluster.data_dir(3).join("replaced").exists(), "the node records that it replaced itself");
    eventually("replacement finished, node 3 a metadata voter again", Duration::from_secs(60), async || {
        let r = client.replace_node(3, true).await.map_err(|e| e.to_string())?;
        let c = client.controllers().await.map_err(|e| e.to_string())?;
        match r.state == "none" && c.voters == [1, 2, 3] && !c.changing {
            true => Ok(()),
            false => Err(format!("{r:?} {c:?}")),
        }
    })
    .await;
    eventually("every partition has three in-sync voters", Duration::from_secs(60), async || {
        let mut under = 0;
        for id in cluster.ids() {
            let text = http_get(&cluster.metrics_addr(id).unwrap(), "/metrics");
            let line = text.lines().find(|l| l.starts_with("flotilla_under_replicated_partitions "));
            under += line.and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).ok_or("no figure")?;
        }
        if under == 0 { Ok(()) } else { Err(format!("{under} under-replicated")) }
    })
    .await;

    // Node 3 votes again: without node 1, nodes 2 and 3 commit everywhere.
    cluster.stop(1);
    let c2 = eventually("client", Duration::from_secs(30), async || {
        flotilla_client::Client::connect(&cluster.addr(2)).await
    })
    .await;
    let producer = c2.producer("kept", ProducerConfig::default());
    for i in 150..200 {
        producer.send(keyed(&format!("k{i}"), &format!("v{i}"))).await.expect("acknowledged by nodes 2 and 3");
    }
    eventually("a metadata write by nodes 2 and 3", Duration::from_secs(30), async || {
        c2.create_topic("after", 1, 2).await
    })
    .await;
    let read = drain(&c2, "kept", 3).await;
    let values: std::collections::BTreeSet<String> = read.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 200, "every acknowledged record is read back");
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 200, "and only once");
    cluster.restart(1);
}

/// x24: the same for a node that joined with `--join` (which knows no peer's node-to-node
/// address and asks the node it joins through): wiped, it is refused under its id; after
/// `replace-node` it starts empty under it and is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x24_a_wiped_joined_node_is_refused_then_replaced() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let four = cluster.join("z");
    node_alive(&client, four).await;
    eventually("topic on four nodes", Duration::from_secs(30), async || client.create_topic("joined", 8, 3).await)
        .await;
    let producer = client.producer("joined", ProducerConfig::default());
    for i in 0..100 {
        producer.send(keyed(&format!("k{i}"), &format!("v{i}"))).await.expect("acknowledged");
    }
    cluster.stop(four);
    std::fs::remove_dir_all(cluster.data_dir(four)).unwrap();
    let out = run_node(&cluster, four, &["--zone", "z", "--join", &cluster.bootstrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a joined node started on an empty data directory under its old id");
    assert!(stderr.contains("knows node 4 as a registered broker"), "{stderr}");
    assert!(!cluster.data_dir(four).join("db").exists(), "the refused start left storage behind");

    eventually("replace-node 4", Duration::from_secs(60), async || {
        let out = cli(&cluster.bootstrap(), &["cluster", "replace-node", "4", "--wait", "--timeout", "50"]).await;
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
        }
    })
    .await;
    cluster.restart(four);
    node_alive(&client, four).await;
    eventually("replacement finished", Duration::from_secs(60), async || {
        let r = client.replace_node(four, true).await.map_err(|e| e.to_string())?;
        if r.state == "none" { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert!(cluster.data_dir(four).join("replaced").exists());
    let read = drain(&client, "joined", 8).await;
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 100);
}

/// Runs `flotilla node` as node `id` of `cluster` (its addresses, data directory and
/// certificate, then `extra`) until it exits: for starts that must be refused.
fn run_node(cluster: &flotilla_testkit::ProcessCluster, id: u64, extra: &[&str]) -> std::process::Output {
    let certs = cluster.certs_dir();
    std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", "--id", &id.to_string(), "--listen", &cluster.addr(id), "--rpc-listen", &cluster.rpc_addr(id)])
        .args(extra)
        .arg("--data-dir")
        .arg(cluster.data_dir(id))
        .arg("--rpc-tls-ca")
        .arg(certs.join("ca.pem"))
        .arg("--rpc-tls-cert")
        .arg(certs.join(format!("node-{id}.pem")))
        .arg("--rpc-tls-key")
        .arg(certs.join(format!("node-{id}.key")))
        .output()
        .expect("run flotilla node")
}

/// x25: a wiped node that starts while none of its peers is up (the whole cluster
/// restarting) takes part in nothing until one answers, and stops once one says the
/// cluster knows it; the others come back and keep every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x25_a_wiped_node_alone_waits_for_its_peers_and_stops() {
    let _serial = serial().await;
    let mut cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let producer = hundred_records(&client, "kept").await;
    drop(producer);
    drop(client);
    for id in [1, 2, 3] {
        cluster.stop(id);
    }
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    let initialised =
        |c: &flotilla_testkit::ProcessCluster| c.log_tail(3, 1_000_000).matches("initialised group").count();
    let before = initialised(&cluster);
    // Alone, it starts (it cannot tell) but waits.
    cluster.restart(3);
    std::thread::sleep(Duration::from_secs(2));
    let log = cluster.log_tail(3, 50);
    assert!(log.contains("none of its peers answered"), "{log}");
    assert!(cluster.data_dir(3).join("unconfirmed").exists());
    cluster.restart(1);
    cluster.restart(2);
    eventually("node 3 stops", Duration::from_secs(30), async || {
        let log = cluster.log_tail(3, 50);
        match log.contains("knows node 3 as a registered broker") {
            true => Ok(()),
            false => Err(log),
        }
    })
    .await;
    assert_eq!(initialised(&cluster), before, "the wiped node initialised a group");
    let client = ready_client(&cluster, 3).await;
    let read = drain(&client, "kept", 3).await;
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 100);
}

/// Creates `topic` (three partitions) and has 100 records acknowledged into it, keyed
/// k0..k99 with values v0..v99; returns the producer, for more of the same.
async fn hundred_records(client: &flotilla_client::Client, topic: &str) -> flotilla_client::Producer {
    create_topic(client, topic, 3).await;
    let producer = client.producer(topic, ProducerConfig::default());
    for i in 0..100 {
        producer.send(keyed(&format!("k{i}"), &format!("v{i}"))).await.expect("acknowledged");
    }
    producer
}

/// Waits (30 s at most) until the cluster sees node `id` alive.
async fn node_alive(client: &flotilla_client::Client, id: u64) {
    eventually(&format!("node {id} back"), Duration::from_secs(30), async || {
        let info = client.describe_cluster().await.map_err(|e| e.to_string())?;
        match info.brokers.iter().find(|b| b.id == id) {
            Some(b) if b.state == "alive" => Ok(()),
            other => Err(format!("node {id}: {other:?}")),
        }
    })
    .await;
}

fn flotilla_ok(args: &[&str], dir: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla")).args(args).arg(dir).output().unwrap();
    assert!(out.status.success(), "flotilla {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
