//! End-to-end tests of the `flotilla` command line over real node processes: what a
//! person typing the README's commands sees. Clusters run on free loopback ports in
//! temporary directories; every process a test starts is stopped when it ends.

mod common;

use std::time::Duration;

use common::*;

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
