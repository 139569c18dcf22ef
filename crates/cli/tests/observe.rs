//! What operators watch, checked with the real tools: a real Prometheus (Debian's
//! `prometheus`) scraping a cluster of real node processes, its `promtool` judging the
//! alert rules, every metric the dashboard and the rules use answering; and the built-in
//! console loaded in headless Chromium, showing what `cluster describe` shows.
//!
//! Both tools come from Debian's packages (`.ci/install-deps` installs them); without
//! them these tests fail and say so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use flotilla_client::{ProducerConfig, Record};

/// The repository's root (scripts and deploy files live there).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run ./.ci/install-deps (Debian's chromium and prometheus packages)");
}

/// A cluster with metrics, a topic with records, and a consumer group with a committed
/// offset (so that lag is exported).
async fn busy_cluster() -> (flotilla_testkit::ProcessCluster, flotilla_client::Client) {
    let options = flotilla_testkit::ClusterOptions { metrics: true, ..Default::default() };
    let cluster = flotilla_testkit::ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "orders", 3).await;
    let producer = client.producer("orders", ProducerConfig::default());
    for i in 0..300 {
        producer.send(Record::value(format!("order {i}"))).await.expect("send");
    }
    producer.flush().await.expect("flush");
    let b = cluster.bootstrap();
    cli_ok(&b, &["consume", "orders", "--group", "billing", "-n", "100"]).await;
    (cluster, client)
}

/// o10: Prometheus scrapes three nodes; `promtool` accepts the alert rules; every metric
/// named by `deploy/grafana/flotilla.json` and `deploy/prometheus/alerts.yml` has a series;
/// every rule evaluates. A renamed metric fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o10_prometheus_scrapes_every_metric_the_dashboard_and_rules_use() {
    let _serial = serial().await;
    let prometheus = need("prometheus");
    let promtool = need("promtool");
    let (cluster, _client) = busy_cluster().await;
    let targets: Vec<String> = cluster.ids().iter().map(|id| cluster.metrics_addr(*id).unwrap()).collect();
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("scripts/prometheus_check.py"))
        .args(["--targets", &targets.join(",")])
        .arg("--prometheus")
        .arg(&prometheus)
        .arg("--promtool")
        .arg(&promtool)
        .args(["--timeout", "90"])
        .output()
        .await
        .expect("run scripts/prometheus_check.py");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success(), "prometheus_check failed:\n{report}");
}

/// Loads the console with headless Chromium: the DOM after its scripts ran.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new(need("chromium"));
    cmd.args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]);
    match screenshot {
        Some(p) => cmd.arg("--window-size=1280,1400").arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attributes of every `<tr>` carrying `attr`, as `name=value` maps.
fn rows(dom: &str, attr: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut out = Vec::new();
    for piece in dom.split("<tr").skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        let mut m = std::collections::BTreeMap::new();
        let mut rest = tag;
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq].rsplit(' ').next().unwrap_or_default().to_string();
            let after = &rest[eq + 2..];
            let end = after.find('"').unwrap_or(after.len());
            m.insert(name, after[..end].replace("&amp;", "&").replace("&quot;", "\"").replace("&lt;", "<"));
            rest = &after[(end + 1).min(after.len())..];
        }
        if m.contains_key(attr) {
            out.push(m);
        }
    }
    out
}

/// The text of the element with `id`.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let after = &dom[at..];
    let start = after.find('>').unwrap() + 1;
    let end = after[start..].find('<').unwrap();
    after[start..start + end].trim().to_string()
}

/// o20: the console, loaded in Chromium from node 1 with node 3 killed, shows the nodes
/// and their states, every partition with its leader and replicas, and the consumer
/// group, as `cluster describe` does; a screenshot is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o20_console_shows_what_describe_shows() {
    let _serial = serial().await;
    let (mut cluster, client) = busy_cluster().await;
    cluster.kill(3);
    let info = eventually("node 3 suspected and every partition led", Duration::from_secs(60), async || {
        let info = client.describe_cluster().await.map_err(|e| e.to_string())?;
        let suspected = info.brokers.iter().any(|b| b.id == 3 && b.state != "alive");
        let led = info.topics.iter().flat_map(|t| &t.partitions).all(|p| p.leader.is_some_and(|l| l != 3));
        if suspected && led { Ok(info) } else { Err(format!("{info:?}")) }
    })
    .await;
    let url = format!("http://{}/", cluster.metrics_addr(1).unwrap());
    let dom = chromium(&url, None);
    assert!(dom.contains("data-loaded=\"true\""), "the page never loaded its data:\n{}", &dom[..dom.len().min(3000)]);
    assert_eq!(text_of(&dom, "nodes-count"), info.brokers.len().to_string());
    let nodes = rows(&dom, "data-node");
    assert_eq!(nodes.len(), info.brokers.len(), "{nodes:?}");
    for b in &info.brokers {
        let row = nodes.iter().find(|r| r["data-node"] == b.id.to_string()).expect("a row per node");
        assert_eq!(row["data-state"], b.state, "node {}", b.id);
    }
    let partitions = rows(&dom, "data-partition");
    let shown: Vec<_> = partitions.iter().filter(|r| !r.contains_key("data-attention")).collect();
    let total: usize = info.topics.iter().map(|t| t.partitions.len()).sum();
    assert_eq!(shown.len(), total, "{shown:?}");
    for t in &info.topics {
        for p in &t.partitions {
            let row = shown
                .iter()
                .find(|r| r["data-topic"] == t.name && r["data-partition"] == p.partition.to_string())
                .expect("a row per partition");
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            assert_eq!(row["data-replicas"], replicas.join(","), "{}/{}", t.name, p.partition);
            assert_eq!(row["data-leader"], p.leader.map(|l| l.to_string()).unwrap_or_default());
        }
    }
    // Node 3 is down: each partition (three replicas, one on node 3) is under-replicated.
    assert_eq!(text_of(&dom, "under-replicated-count"), total.to_string());
    assert_eq!(text_of(&dom, "leaderless-count"), "0");
    let groups = rows(&dom, "data-group");
    assert!(groups.iter().any(|g| g["data-group"] == "billing" && g["data-kind"] == "consumer"), "{groups:?}");
    let shot = cluster.dir().join("console.png");
    chromium(&url, Some(&shot));
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot at {}", shot.display());
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::copy(&shot, &kept).expect("keep the screenshot");
    eprintln!("screenshot: {}", kept.display());
}
