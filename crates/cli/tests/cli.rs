//! End-to-end tests of the `flotilla` command line over real node processes: what a
//! person typing the README's commands sees. Clusters run on free loopback ports in
//! temporary directories; every process a test starts is stopped when it ends.

mod common;

use std::time::Duration;

use common::*;
use flotilla_testkit::{ClusterOptions, ProcessCluster};

/// t93: a topic created while the cluster is still forming (a node of `--peers` has not
/// registered yet) waits for it instead of failing with POLICY_VIOLATION; and `flotilla
/// dev` says Ready only once every node can take replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t93_topic_create_waits_for_brokers_to_register() {
    let _serial = serial().await;
    let options = ClusterOptions { deferred: vec![3], ..Default::default() };
    let mut cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    // Nodes 1 and 2 are a quorum of the metadata group; node 3 is not running yet.
    let client = ready_client(&cluster, 2).await;
    let b = cluster.bootstrap();
    let create = tokio::spawn(async move {
        cli(&b, &["topic", "create", "early", "--partitions", "3", "--replication-factor", "3"]).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(3);
    let out = create.await.expect("create task");
    assert!(
        out.status.success(),
        "create while forming: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = client.describe_topic("early").await.expect("describe");
    assert!(t.partitions.iter().all(|p| p.replicas.len() == 3), "{t:?}");
    drop(cluster);

    let port = free_dev_base_port(3);
    let mut dev = Dev::start(&["--nodes", "3", "--base-port", &port.to_string()]);
    let ready = dev.wait_line("Ready", Duration::from_secs(90)).await;
    assert!(ready.is_some(), "dev never said Ready:\n{}", dev.transcript());
    let b = format!("127.0.0.1:{port}");
    let info = client_for(&b).await.describe_cluster().await.expect("describe");
    assert!(info.brokers.len() == 3 && info.brokers.iter().all(|b| b.state == "alive"), "Ready, but {info:?}");
    cli_ok(&b, &["topic", "create", "first", "--partitions", "3", "--replication-factor", "3"]).await;
}

async fn client_for(bootstrap: &str) -> flotilla_client::Client {
    flotilla_client::Client::connect(bootstrap).await.expect("connect")
}

/// t96: with node 1 of a `flotilla dev` cluster killed, the CLI still reaches the cluster
/// through the bootstrap addresses dev prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t96_cli_reaches_dev_cluster_without_node_one() {
    let _serial = serial().await;
    let port = free_dev_base_port(3);
    let mut dev = Dev::start(&["--nodes", "3", "--base-port", &port.to_string()]);
    let ready = dev.wait_line("Ready", Duration::from_secs(90)).await;
    assert!(ready.is_some(), "dev never said Ready:\n{}", dev.transcript());
    let line = dev.wait_line("Bootstrap address", Duration::from_secs(5)).await.expect("a bootstrap line");
    let bootstrap = line.split_once(": ").expect("address after ': '").1.split_whitespace().next().expect("address");
    let node1 = dev.wait_line("node 1 ", Duration::from_secs(1)).await.expect("node 1's line");
    let pid: i32 = node1.split_whitespace().skip_while(|w| *w != "pid").nth(1).expect("pid").parse().expect("a pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = cli_ok(bootstrap, &["cluster", "describe"]).await;
    assert!(text.starts_with("3 nodes"), "{text}");
    cli_ok(bootstrap, &["topic", "list"]).await;
}
