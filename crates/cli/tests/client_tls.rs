//! Client TLS over real node processes (docs/security.md): clients reach the client
//! listener over TLS, checking the node's certificate against the cluster's authority;
//! with `tls-client-ca`, only clients presenting a certificate from it are served.
//! Plaintext clients get nothing either way, and nothing acknowledged is lost.

mod common;

use std::time::Duration;

use common::*;
use flotilla_client::{Client, ClientConfig, ClientTls, ProducerConfig, Record};
use flotilla_testkit::{ClusterOptions, ProcessCluster};

fn tls_cluster(client_certs: bool) -> ProcessCluster {
    let options = ClusterOptions { client_tls: true, client_certs, ..ClusterOptions::default() };
    ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options)
}

/// A client of `cluster` over TLS, with client certificate `client` (made with
/// `flotilla certs client`) when given.
async fn tls_client(cluster: &ProcessCluster, client: Option<&str>) -> flotilla_client::Result<Client> {
    let certs = cluster.certs_dir();
    let identity = client.map(|n| (certs.join(format!("client-{n}.pem")), certs.join(format!("client-{n}.key"))));
    let tls = ClientTls::from_files(&certs.join("ca.pem"), identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
        .expect("certificates");
    let config = ClientConfig { tls: Some(tls), retry_deadline: Duration::from_secs(20), ..ClientConfig::default() };
    Client::connect_with(&cluster.bootstrap(), config).await
}

async fn round_trip(client: &Client, topic: &str) {
    eventually("a metadata leader and three live nodes", Duration::from_secs(30), async || {
        let c = client.describe_cluster().await.map_err(|e| e.to_string())?;
        match c.metadata_leader {
            Some(_) if c.brokers.iter().filter(|b| b.state == "alive").count() == 3 => Ok(()),
            _ => Err(format!("not ready: {c:?}")),
        }
    })
    .await;
    create_topic(client, topic, 3).await;
    let producer = client.producer(topic, ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.push(producer.enqueue(keyed(&format!("k{}", i % 7), &format!("v{i}"))).await.expect("enqueue"));
    }
    for a in acked {
        a.await.expect("acknowledged over TLS");
    }
    let values: std::collections::BTreeSet<String> =
        drain(client, topic, 3).await.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 300, "every record read back over TLS");
}

/// A plaintext client cannot use a TLS listener: its first request fails.
async fn plaintext_refused(cluster: &ProcessCluster) {
    let plain = ClientConfig { retry_deadline: Duration::from_secs(2), ..ClientConfig::default() };
    let r = match Client::connect_with(&cluster.bootstrap(), plain).await {
        Ok(c) => c.describe_cluster().await.map(drop),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "a plaintext client was served by a TLS listener");
}

/// x10: TLS on the client listener, server-authenticated: TLS clients produce and
/// consume; plaintext ones are not served; the CLI connects with --tls-ca.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x10_clients_over_tls_and_plaintext_refused() {
    let _serial = serial().await;
    let cluster = tls_cluster(false);
    let client = tls_client(&cluster, None).await.expect("connect over TLS");
    round_trip(&client, "secret").await;
    plaintext_refused(&cluster).await;
    let ca = cluster.certs_dir().join("ca.pem");
    let out = cli(&cluster.bootstrap(), &["--tls-ca", ca.to_str().unwrap(), "topic", "list"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret"));
    let out = cli(&cluster.bootstrap(), &["topic", "list"]).await;
    assert!(!out.status.success(), "the CLI without --tls-ca was served");
    // The producer's acknowledged records are all there for the CLI too.
    let out = cli(&cluster.bootstrap(), &["--tls-ca", ca.to_str().unwrap(), "consume", "secret", "-n", "300"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
}

/// x11: with tls-client-ca, a client presenting a certificate from the authority is
/// served, one without is not; a client certificate is refused on the node-to-node
/// listener (it names no node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_client_certificates_required() {
    let _serial = serial().await;
    let cluster = tls_cluster(true);
    let certs = cluster.certs_dir();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["certs", "client", "--name", "app", "--ca-dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let client = tls_client(&cluster, Some("app")).await.expect("connect with a client certificate");
    round_trip(&client, "mutual").await;
    let anonymous = ClientConfig {
        tls: Some(ClientTls::from_files(&certs.join("ca.pem"), None).unwrap()),
        retry_deadline: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let r = match Client::connect_with(&cluster.bootstrap(), anonymous).await {
        Ok(c) => c.producer("mutual", ProducerConfig::default()).send(Record::value("x")).await.map(drop),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "a client without a certificate was served");
    plaintext_refused(&cluster).await;

    // The client's certificate opens no node-to-node door.
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let cluster_id = flotilla_rpc::tls::ca_cluster(&ca).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(certs.join("client-app.pem")).unwrap(),
            std::fs::read(certs.join("client-app.key")).unwrap(),
        ))
        .domain_name(flotilla_rpc::tls::node_name(&cluster_id, 1));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.rpc_addr(1)))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("the handshake takes any certificate of the authority");
    let req = flotilla_proto::raft::v1::RaftRequest { group_id: 0, from_node: 2, payload: vec![].into(), to_node: 1 };
    let r = flotilla_proto::raft::v1::raft_client::RaftClient::new(channel).call(req).await;
    assert_eq!(r.expect_err("a client spoke as node 2").code(), tonic::Code::PermissionDenied);
}

/// x12: with client certificates, the quotas' principal is the certificate's common
/// name, not the client id a request claims: two client ids on one certificate share
/// one account, and another certificate has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x12_a_client_certificate_is_the_quota_principal() {
    let _serial = serial().await;
    let options = ClusterOptions {
        client_tls: true,
        client_certs: true,
        node_args: vec!["--quota-requests-per-sec".into(), "1".into()],
        ..ClusterOptions::default()
    };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let certs = cluster.certs_dir();
    for name in ["app", "other"] {
        cluster.client_cert(name);
    }
    let client = tls_client(&cluster, Some("app")).await.expect("connect");
    eventually("three live nodes", Duration::from_secs(30), async || {
        let c = client.describe_cluster().await.map_err(|e| e.to_string())?;
        let alive = c.brokers.iter().filter(|b| b.state == "alive").count();
        if c.metadata_leader.is_some() && alive == 3 { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    create_topic(&client, "q", 1).await;
    let leader = client.describe_topic("q").await.unwrap().partitions[0].leader.expect("a leader");
    let raw = |name: &'static str| {
        let addr = cluster.addr(leader);
        let certs = certs.clone();
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(certs.join("ca.pem")).unwrap()))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(certs.join(format!("client-{name}.pem"))).unwrap(),
                    std::fs::read(certs.join(format!("client-{name}.key"))).unwrap(),
                ));
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            flotilla_proto::v1::flotilla_client::FlotillaClient::new(channel)
        }
    };
    let batch = flotilla_types::RecordBatch::encode(&[Record::value("v")]).unwrap();
    let request = |id: &str| flotilla_proto::v1::ProduceRequest {
        client_id: id.into(),
        ..flotilla_proto::v1::ProduceRequest::new("q", 0, &batch, flotilla_types::Acks::All)
    };
    let mut app = raw("app").await;
    // One request a second, with a second's burst: the third in a row is held.
    let mut held = Vec::new();
    for id in ["a", "a", "a", "b"] {
        let answer = app.produce(request(id)).await.unwrap().into_inner();
        assert!(answer.error.is_none(), "{:?}", answer.error);
        held.push(answer.throttle_time_ms);
    }
    assert!(held[2] > 0, "app's third request was not held: {held:?}");
    assert!(held[3] > 0, "client id b on app's certificate has an account of its own: {held:?}");
    // Another certificate is another principal, whatever client id it claims.
    let answer = raw("other").await.produce(request("a")).await.unwrap().into_inner();
    assert_eq!(answer.throttle_time_ms, 0, "other was charged app's account");
}
