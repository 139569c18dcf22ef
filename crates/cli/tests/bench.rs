//! End-to-end test of `flotilla bench` over real node processes: an open-loop produce
//! with end-to-end latency, then a consume of everything it wrote, both read from their
//! JSON reports, node CPU included (the nodes run on this machine).

mod common;

use common::*;
use serde_json::Value;

fn f64_at(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_u64().unwrap_or_else(|| panic!("{path:?} is not a count in {v:#}"))
}

/// Positive and ordered: 0 < p50 ≤ p99 ≤ p999 ≤ max.
fn check_latency(report: &Value, key: &str) {
    let l = |q| f64_at(report, &[key, q]);
    assert!(l("p50") > 0.0, "{key}: {:#}", report[key]);
    assert!(l("p50") <= l("p99") && l("p99") <= l("p999") && l("p999") <= l("max"), "{key}: {:#}", report[key]);
}

/// t_bench: `bench produce --rate` sends about rate × duration records after its
/// warm-up and reports ordered ack and end-to-end latencies and the CPU time of the
/// three node processes; `bench consume` then reads every record acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_produce_and_consume_report_what_they_did() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let _client = ready_client(&cluster, 3).await;
    let b = cluster.bootstrap();

    let out = cli_ok(
        &b,
        &[
            "bench",
            "produce",
            "--create",
            "--topic",
            "b",
            "--partitions",
            "2",
            "--rate",
            "300",
            "--duration-secs",
            "3",
            "--warmup-secs",
            "1",
            "--e2e",
            "--output",
            "json",
        ],
    )
    .await;
    let p: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench produce printed {out:?}: {e}"));
    assert_eq!((&p["mode"], &p["partitions"]), (&"open-loop".into(), &2.into()), "{p:#}");
    let records = u64_at(&p, &["records"]);
    assert!((450..=1350).contains(&records), "about 300/s × 3 s measured, got {records}: {p:#}");
    assert_eq!(u64_at(&p, &["errors"]), 0, "{p:#}");
    assert_eq!(u64_at(&p, &["bytes"]), records * 1024);
    assert!(f64_at(&p, &["records_per_sec"]) > 150.0, "{p:#}");
    check_latency(&p, "latency_ms");
    check_latency(&p, "e2e_latency_ms");
    assert!(u64_at(&p, &["e2e_records"]) > 0, "{p:#}");
    assert_eq!(u64_at(&p, &["node_cpu", "processes"]), 3, "the cluster's three nodes run here: {p:#}");
    assert!(f64_at(&p, &["node_cpu", "cpu_secs"]) > 0.0, "{p:#}");
    assert!(f64_at(&p, &["node_cpu", "cpu_secs_per_million_records"]) > 0.0, "{p:#}");
    assert!(f64_at(&p, &["bench_cpu_secs"]) >= 0.0, "{p:#}");
    let seconds = p["per_second"].as_array().expect("per_second");
    assert!(seconds.len() >= 3, "a line per second: {p:#}");
    assert_eq!(seconds[0]["warmup"], true, "the first second is the warm-up");
    let total = u64_at(&p, &["acknowledged_total"]);
    assert_eq!(total, records + u64_at(&p, &["warmup", "records"]));

    let out =
        cli_ok(&b, &["bench", "consume", "--topic", "b", "--records", &total.to_string(), "--output", "json"]).await;
    let c: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench consume printed {out:?}: {e}"));
    assert_eq!(u64_at(&c, &["records"]), total, "every record produced is read: {c:#}");
    assert_eq!(u64_at(&c, &["bytes"]), total * 1024);
    assert_eq!(c["stopped_by"], "records", "{c:#}");
    assert!(f64_at(&c, &["records_per_sec"]) > 0.0, "{c:#}");
    // A read this short may take less than a clock tick of node CPU: only the count.
    assert_eq!(u64_at(&c, &["node_cpu", "processes"]), 3, "{c:#}");
}
