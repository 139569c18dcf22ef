//! End-to-end tests of the `flotilla` command line over real node processes: what a
//! person typing the README's commands sees. Clusters run on free loopback ports in
//! temporary directories; every process a test starts is stopped when it ends.

#![allow(clippy::disallowed_methods, reason = "tests run real processes and wait in real time")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use flotilla_client::{ClientError, ProducerConfig, Record, RecordExt};
use flotilla_testkit::{ClusterOptions, ProcessCluster};
use tokio::io::AsyncBufReadExt;

/// t91: `flotilla consume TOPIC` with no flags prints every record the topic holds and
/// stops; `-o`, `-n`, `--format`, `-o @timestamp` and `-f` do what kcat users expect, and
/// the older flags still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t91_consume_starts_at_the_beginning_by_default() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "demo", 3).await;
    let producer = client.producer("demo", ProducerConfig::default());
    // partition → [(offset, i)]
    let mut by_partition: BTreeMap<u32, Vec<(u64, usize)>> = BTreeMap::new();
    for i in 0..12 {
        let rec = keyed(&format!("k{i}"), &format!("v{i}")).with_header("h", format!("x{i}"));
        let (p, o) = producer.send(rec).await.expect("produce");
        by_partition.entry(p).or_default().push((o, i));
    }

    // No flags: everything stored, then exit.
    let out = cli_ok(&b, &["consume", "demo"]).await;
    let got: BTreeSet<String> = out.lines().map(String::from).collect();
    let all: BTreeSet<String> = (0..12).map(|i| format!("v{i}")).collect();
    assert_eq!(got, all, "`consume demo` printed {out:?}");

    // The older spelling still works; -n and --max bound the count.
    assert_eq!(cli_ok(&b, &["consume", "demo", "--from-beginning", "--max", "5"]).await.lines().count(), 5);
    assert_eq!(cli_ok(&b, &["consume", "demo", "-n", "4"]).await.lines().count(), 4);
    assert_eq!(cli_ok(&b, &["consume", "demo", "-o", "beginning", "-n", "3"]).await.lines().count(), 3);
    // -o end without --follow: nothing newer, so nothing.
    assert_eq!(cli_ok(&b, &["consume", "demo", "-o", "end"]).await, "");

    // One partition: the last two records (-o -2) in a kcat format string.
    let (p, records) = by_partition.iter().max_by_key(|(_, r)| r.len()).expect("records");
    assert!(records.len() >= 2, "{by_partition:?}");
    let ps = p.to_string();
    let out =
        cli_ok(&b, &["consume", "demo", "--partition", &ps, "-o", "-2", "--format", "%t %p %o %k=%s [%h]\\n"]).await;
    let want: String =
        records[records.len() - 2..].iter().map(|(o, i)| format!("demo {p} {o} k{i}=v{i} [h=x{i}]\n")).collect();
    assert_eq!(out, want);
    // -o N: from offset N on.
    let out = cli_ok(&b, &["consume", "demo", "--partition", &ps, "-o", "1", "--format", "%o:%s\n"]).await;
    let want: String = records.iter().filter(|(o, _)| *o >= 1).map(|(o, i)| format!("{o}:v{i}\n")).collect();
    assert_eq!(out, want);

    // -o @TIMESTAMP: from the first record stamped at or after it (a minute ago and
    // on, within the default retention).
    create_topic(&client, "times", 1).await;
    let timed = client.producer("times", ProducerConfig::default());
    let base = now_ms() - 60_000;
    for (i, ts) in [1000u64, 2000, 3000, 4000].into_iter().enumerate() {
        let rec = Record { value: format!("t{i}").into(), timestamp_ms: base + ts, ..Record::default() };
        timed.send_to(0, rec).await.expect("produce");
    }
    let at = |ts: u64| format!("@{}", base + ts);
    assert_eq!(cli_ok(&b, &["consume", "times", "-o", &at(2500)]).await, "t2\nt3\n");
    let want = format!("{} t2\n{} t3\n", base + 3000, base + 4000);
    assert_eq!(cli_ok(&b, &["consume", "times", "-o", &at(3000), "--format", "%T %s\n"]).await, want);
    assert_eq!(cli_ok(&b, &["consume", "times", "-o", &at(5000)]).await, "");
    assert_eq!(cli_ok(&b, &["consume", "times", "-o", "@-1h"]).await, "t0\nt1\nt2\nt3\n");

    // -f keeps waiting and prints what arrives.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["consume", "times", "-f"])
        .env("FLOTILLA_BOOTSTRAP", &b)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start consume -f");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let mut seen = vec![];
    for _ in 0..4 {
        seen.push(next_line(&mut lines).await);
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(follow.try_wait().expect("try_wait").is_none(), "consume -f stopped at the end");
    timed.send_to(0, Record::value("t4")).await.expect("produce");
    assert_eq!(next_line(&mut lines).await, "t4");
    follow.kill().await.expect("kill consume -f");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// t97 (RFC 0003): over real processes on RocksDB, `topic delete-records` moves the log
/// start on every replica and consumers start from it; a topic created with
/// `--retention-ms` loses records stamped before it and keeps the rest, and `topic
/// config` changes retention at runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t97_delete_records_and_retention_from_the_command_line() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();
    create_topic(&client, "log", 1).await;
    let producer = client.producer("log", ProducerConfig::default());
    for i in 0..10 {
        producer.send_to(0, Record::value(format!("v{i}"))).await.expect("produce");
    }
    let out = cli_ok(&b, &["topic", "delete-records", "log", "--partition", "0", "--before", "4"]).await;
    assert!(out.contains("log start 4"), "{out}");
    let out = cli_ok(&b, &["consume", "log", "--format", "%o:%s\n"]).await;
    assert_eq!(out, (4..10).map(|i| format!("{i}:v{i}\n")).collect::<String>());
    // Past the end: refused, with the code.
    let err = cli(&b, &["topic", "delete-records", "log", "--partition", "0", "--before", "99"]).await;
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("OFFSET_OUT_OF_RANGE"), "{err:?}");
    // A consumer positioned below the log start goes on from it.
    let mut consumer = client.consumer("log", 0, flotilla_client::StartAt::Offset(1)).await.unwrap();
    let mut got = vec![];
    while got.len() < 6 {
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap().into_iter().map(|r| r.offset));
    }
    assert_eq!(got, (4..10).collect::<Vec<u64>>());
    assert_eq!(consumer.resets(), 1);

    // Retention by time: records stamped two hours ago go, records of now stay.
    cli_ok(&b, &["topic", "create", "aged", "--partitions", "1", "--retention-ms", "3600000"]).await;
    let aged = client.producer("aged", ProducerConfig::default());
    for i in 0..3 {
        let old = Record { value: format!("old{i}").into(), timestamp_ms: now_ms() - 7_200_000, ..Record::default() };
        aged.send_to(0, old).await.expect("produce");
    }
    aged.send_to(0, Record::value("new")).await.expect("produce");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (start, _) = client.list_offsets("aged", 0).await.unwrap();
        if start == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention did not delete the old records (log start {start})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cli_ok(&b, &["consume", "aged"]).await, "new\n");
    // Changed at runtime: kept forever from now on.
    let out = cli_ok(&b, &["topic", "config", "aged", "--retention-ms", "0"]).await;
    assert!(out.contains("kept forever"), "{out}");
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    let next = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    next.expect("a line within 20 s").expect("read").expect("not at the end")
}

/// The cell under `column` in `row` of a table printed by the CLI (columns start where
/// their header starts).
fn cell<'a>(header: &str, row: &'a str, column: &str) -> &'a str {
    let names = header.split_whitespace().collect::<Vec<_>>();
    let starts: Vec<usize> = {
        let mut at = 0;
        names
            .iter()
            .map(|n| {
                let i = header[at..].find(n).expect("header") + at;
                at = i + n.len();
                i
            })
            .collect()
    };
    let k = names.iter().position(|n| *n == column).unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    let end = starts.get(k + 1).copied().unwrap_or(row.len()).min(row.len());
    row.get(starts[k]..end).unwrap_or("").trim()
}

/// t92: `cluster describe` shows the partitions each node leads now (LEADERS) apart from
/// those that prefer it (PREFERRED): a killed node leads none, though partitions still
/// prefer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t92_cluster_describe_shows_actual_leaders() {
    let _serial = serial().await;
    // The killed node stays suspected, so its preferred leaderships stay with it.
    let options = ClusterOptions { node_args: vec!["--dead-after-ms".into(), "600000".into()], ..Default::default() };
    let mut cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "lead", 6).await;
    let info = client.describe_cluster().await.expect("describe");
    let meta = info.metadata_leader.expect("metadata leader");
    let victim = info.brokers.iter().find(|b| b.id != meta && b.preferred_leaders > 0).expect("a preferred leader");
    let (victim, preferred) = (victim.id, victim.preferred_leaders);
    // It leads a partition when it is killed, so its leaderships have to move.
    eventually("the victim leads a partition", Duration::from_secs(30), async || {
        let c = client.describe_cluster().await?;
        let leads = c.topics.iter().flat_map(|t| &t.partitions).any(|p| p.leader == Some(victim));
        if leads { Ok(()) } else { Err(ClientError::Closed) }
    })
    .await;
    cluster.kill(victim);
    let bootstrap =
        cluster.ids().into_iter().filter(|id| *id != victim).map(|id| cluster.addr(id)).collect::<Vec<_>>().join(",");
    eventually("leaders off the killed node", Duration::from_secs(60), async || {
        let c = client.describe_cluster().await?;
        let leaders: Vec<Option<u64>> = c.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.leader)).collect();
        if leaders.len() == 6 && leaders.iter().all(|l| l.is_some() && *l != Some(victim)) {
            Ok(())
        } else {
            Err(ClientError::Closed)
        }
    })
    .await;

    let text = cli_ok(&bootstrap, &["cluster", "describe"]).await;
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[1];
    let rows: Vec<&str> = lines[2..].iter().take_while(|l| !l.is_empty()).copied().collect();
    assert_eq!(rows.len(), 3, "{text}");
    let row = |id: u64| *rows.iter().find(|r| cell(header, r, "NODE") == id.to_string()).expect("node row");
    assert_eq!(cell(header, row(victim), "LEADERS"), "0", "the killed node {victim} leads nothing:\n{text}");
    assert_eq!(cell(header, row(victim), "PREFERRED"), preferred.to_string(), "{text}");
    let led: u64 = rows.iter().map(|r| cell(header, r, "LEADERS").parse::<u64>().expect("a count")).sum();
    assert_eq!(led, 6, "every partition has one leader:\n{text}");
    // The partition table names live leaders only.
    let parts = &lines[2 + rows.len() + 1..];
    for r in &parts[1..] {
        assert_ne!(cell(parts[0], r, "LEADER"), victim.to_string(), "{text}");
    }
}

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

/// t94: when a node of `flotilla dev` cannot start (its port is taken), dev exits
/// non-zero with that node's error and leaves no node running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t94_dev_exits_when_a_node_cannot_start() {
    let _serial = serial().await;
    let port = free_dev_base_port(3);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port + 1)).expect("take node 2's port");
    let mut dev = Dev::start(&["--nodes", "3", "--base-port", &port.to_string()]);
    let status = dev.wait_exit(Duration::from_secs(30)).await;
    let text = dev.transcript();
    let status = status.unwrap_or_else(|| panic!("dev still running 30 s after node 2 failed:\n{text}"));
    assert!(!status.success(), "dev exited with {status}:\n{text}");
    assert!(!text.contains("Ready"), "{text}");
    assert!(text.contains("node 2"), "{text}");
    assert!(text.contains("in use"), "the node's own error is shown:\n{text}");
    assert!(!dev.group_alive_after(Duration::from_secs(20)).await, "a node outlived dev:\n{text}");
}

/// t95: a signal that reaches `flotilla dev` while its nodes start (SIGTERM, SIGHUP) or
/// once they run (SIGINT) stops every node it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95_dev_stops_its_nodes_on_any_signal() {
    let _serial = serial().await;
    for (signal, name, after) in
        [(libc::SIGTERM, "SIGTERM", "node 3 "), (libc::SIGHUP, "SIGHUP", "node 3 "), (libc::SIGINT, "SIGINT", "Ready")]
    {
        let port = free_dev_base_port(3);
        let mut dev = Dev::start(&["--nodes", "3", "--base-port", &port.to_string()]);
        let seen = dev.wait_line(after, Duration::from_secs(90)).await;
        assert!(seen.is_some(), "no {after:?} line:\n{}", dev.transcript());
        dev.signal(signal);
        let status = dev.wait_exit(Duration::from_secs(30)).await;
        assert!(status.is_some(), "dev still running 30 s after {name}:\n{}", dev.transcript());
        assert!(
            !dev.group_alive_after(Duration::from_secs(20)).await,
            "a node outlived dev after {name} (sent once {after:?} was printed):\n{}",
            dev.transcript()
        );
    }
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

/// t98: the operator's commands: `cluster health` says healthy with exit status 0, and
/// unhealthy with the reasons and exit status 1 once a node is down; `cluster drain
/// --wait` returns once the node holds no replica; `topic config` with one key and
/// `--reset`, `add-partitions --num`; `completion bash`; `-b` for `--bootstrap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t98_health_drain_wait_and_topic_config_from_the_command_line() {
    let _serial = serial().await;
    let options = ClusterOptions { node_args: vec!["--dead-after-ms".into(), "60000".into()], ..Default::default() };
    let mut cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 4, options);
    let client = ready_client(&cluster, 4).await;
    let b = cluster.bootstrap();
    create_topic(&client, "ops", 4).await;

    let healthy = eventually("healthy", Duration::from_secs(30), async || {
        let out = cli(&b, &["cluster", "health"]).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() { Ok(text) } else { Err(text) }
    })
    .await;
    assert!(healthy.starts_with("healthy: 4 nodes, 4 partitions"), "{healthy}");

    // Drain node 4 and wait: when the command returns, node 4 holds nothing.
    let out = cli_ok(&b, &["cluster", "drain", "4", "--wait", "--timeout", "120"]).await;
    assert!(out.contains("node 4 is drained"), "{out}");
    let info = client.describe_cluster().await.unwrap();
    let on_4: Vec<_> = info.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.replicas.contains(&4)).collect();
    assert!(on_4.is_empty(), "still on node 4 after drain --wait: {on_4:?}");
    cli_ok(&b, &["cluster", "drain", "4", "--undo"]).await;

    // Only the keys given change; an unknown key to reset is refused.
    let out = cli_ok(&b, &["topic", "config", "ops", "--retention-bytes", "1000000"]).await;
    assert!(out.contains("other keys unchanged"), "{out}");
    cli_ok(&b, &["topic", "config", "ops", "--reset", "retention-bytes,retention-ms"]).await;
    let bad = cli(&b, &["topic", "config", "ops", "--reset", "retention"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a policy key"), "{bad:?}");
    let nothing = cli(&b, &["topic", "config", "ops"]).await;
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to change"), "{nothing:?}");
    cli_ok(&b, &["-b", &b, "topic", "add-partitions", "ops", "--num", "2"]).await;
    assert_eq!(client.describe_topic("ops").await.unwrap().partitions.len(), 6);

    let script = cli_ok(&b, &["completion", "bash"]).await;
    assert!(script.contains("_flotilla") && script.contains("add-partitions"), "not a bash completion script");
    // A reader that stops early (`flotilla completion zsh | head -2`) is not an error:
    // the command once panicked on the closed pipe.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["completion", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A node down: unhealthy, with the reason, and exit status 1.
    cluster.kill(2);
    let text = eventually("unhealthy", Duration::from_secs(30), async || {
        let out = cli(&b, &["cluster", "health"]).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(1) if text.contains("nodes down (suspected or dead): 2") => Ok(text),
            _ => Err(text),
        }
    })
    .await;
    assert!(text.starts_with("unhealthy: 4 nodes"), "{text}");
    assert!(text.contains("under-replicated partitions"), "{text}");
    let json = cli(&b, &["cluster", "health", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["nodes_down"], serde_json::json!([2]));
}
