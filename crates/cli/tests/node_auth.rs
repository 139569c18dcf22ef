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
    eventually("node 3 back", Duration::from_secs(30), async || {
        let info = client.describe_cluster().await.map_err(|e| e.to_string())?;
        match info.brokers.iter().find(|b| b.id == 3) {
            Some(b) if b.state == "alive" => Ok(()),
            other => Err(format!("node 3: {other:?}")),
        }
    })
    .await;
}

fn flotilla_ok(args: &[&str], dir: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla")).args(args).arg(dir).output().unwrap();
    assert!(out.status.success(), "flotilla {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
