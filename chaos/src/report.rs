//! What a scenario's run measured, from its history and the checker's verdict: the one
//! line the runner prints, the JSON it writes, and a timeline (acknowledged records per
//! second and acknowledgement latency, the faults marked) as SVG in an HTML page.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use flotilla_testkit::checker::Stats;
use flotilla_testkit::{Anomaly, AnomalyKind, History, Kind, Op, Verdict};
use serde::Serialize;

/// A partition with no acknowledged write for longer than this was unavailable for the
/// whole gap.
const UNAVAILABLE_GAP_MS: u64 = 1_000;
/// Anomalies written in full into the JSON report; the rest are counted.
const ANOMALIES_IN_REPORT_MAX: usize = 200;

/// A fault the runner injected, as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub note: String,
    pub nodes: Vec<u64>,
    /// Partitions the faulted nodes led when the fault landed.
    pub affected: Vec<u32>,
    pub at_ms: u64,
    pub healed_ms: u64,
    /// The iptables rules in force while it held, per node (network faults).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rules: String,
    /// From the fault to an acknowledged write, invoked after the fault, on every
    /// affected partition (on any partition when none was affected).
    pub failover_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub about: String,
    pub seed: u64,
    pub nodes: u64,
    pub partitions: u32,
    pub passed: bool,
    /// Why it failed, when not (anomalies aside): a node crashed, the drain got stuck.
    pub errors: Vec<String>,
    pub duration_s: f64,
    pub stats: Stats,
    /// Anomaly counts by kind.
    pub anomaly_counts: BTreeMap<String, usize>,
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged values the checker found lost or unseen at the end.
    pub lost: usize,
    /// Values read at more than one offset (allowed for a retried send).
    pub duplicated: usize,
    pub failover_p50_ms: Option<u64>,
    pub failover_p99_ms: Option<u64>,
    pub faults: Vec<FaultRecord>,
    /// Seconds without an acknowledged write (gaps over 1 s), per partition.
    pub unavailable_s: BTreeMap<u32, f64>,
    pub liveness: String,
    /// Node log lines at ERROR or with a panic (reported, not judged).
    pub log_alarms: Vec<String>,
    /// Replicas read on their own nodes and compared at the end (two that disagree are a
    /// REPLICA DIVERGENCE among the anomalies above): `n<node>/<partition>: N records
    /// below H`.
    pub replicas_compared: Vec<String>,
    /// What else the run saw: snapshots installed, connections through the proxy.
    pub notes: Vec<String>,
    /// Records per second and ack latency per second: (second, records acked, p50 ms, max ms).
    pub timeline: Vec<(u64, u64, u64, u64)>,
}

/// Send completions: (partition, invoked at, acknowledged at, records).
fn acks(history: &History) -> Vec<(u32, u64, u64, u64)> {
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut out = vec![];
    for e in history.events() {
        if e.op != Op::Send {
            continue;
        }
        match e.kind {
            Kind::Invoke => {
                invoked.insert(e.process, e.time_ms);
            }
            Kind::Ok => {
                if let Some(t) = invoked.remove(&e.process) {
                    out.push((e.partition, t, e.time_ms, e.records.len() as u64));
                }
            }
            _ => {
                invoked.remove(&e.process);
            }
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Fills each fault's failover figure.
pub fn failover(history: &History, faults: &mut [FaultRecord]) {
    let acks = acks(history);
    for f in faults.iter_mut() {
        let first_after = |p: Option<u32>| {
            acks.iter()
                .filter(|(q, invoked, _, _)| *invoked >= f.at_ms && p.is_none_or(|p| p == *q))
                .map(|(_, _, ok, _)| ok - f.at_ms)
                .min()
        };
        f.failover_ms = if f.affected.is_empty() {
            first_after(None)
        } else {
            f.affected
                .iter()
                .map(|p| first_after(Some(*p)))
                .collect::<Option<Vec<u64>>>()
                .and_then(|v| v.into_iter().max())
        };
    }
}

/// Seconds without an acknowledged write, per partition, over gaps longer than
/// [`UNAVAILABLE_GAP_MS`] between the first and the last acknowledgement of the run.
fn unavailable(history: &History, partitions: u32) -> BTreeMap<u32, f64> {
    let mut times: BTreeMap<u32, Vec<u64>> = (0..partitions).map(|p| (p, vec![])).collect();
    for (p, _, ok, _) in acks(history) {
        times.entry(p).or_default().push(ok);
    }
    times
        .into_iter()
        .map(|(p, mut t)| {
            t.sort_unstable();
            let ms: u64 = t.windows(2).map(|w| w[1] - w[0]).filter(|gap| *gap > UNAVAILABLE_GAP_MS).sum();
            (p, (ms as f64 / 100.0).round() / 10.0)
        })
        .collect()
}

/// Values read at more than one (partition, offset).
fn duplicated(history: &History) -> usize {
    let mut at: HashMap<&str, BTreeSet<(u32, u64)>> = HashMap::new();
    for e in history.events() {
        if e.op == Op::Poll && e.kind == Kind::Ok {
            for r in &e.records {
                if let Some(o) = r.offset {
                    at.entry(r.value.as_str()).or_default().insert((e.partition, o));
                }
            }
        }
    }
    at.values().filter(|s| s.len() > 1).count()
}

fn timeline(history: &History) -> Vec<(u64, u64, u64, u64)> {
    let mut per_second: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    for (_, invoked, ok, n) in acks(history) {
        let s = per_second.entry(ok / 1000).or_default();
        s.0 += n;
        s.1.push(ok - invoked);
    }
    let last = per_second.keys().next_back().copied().unwrap_or(0);
    (0..=last)
        .map(|sec| match per_second.get_mut(&sec) {
            Some((n, lat)) => {
                lat.sort_unstable();
                (sec, *n, percentile(lat, 50.0).unwrap_or(0), *lat.last().unwrap_or(&0))
            }
            None => (sec, 0, 0, 0),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    scenario: &crate::scenario::Scenario,
    seed: u64,
    history: &History,
    verdict: &Verdict,
    mut faults: Vec<FaultRecord>,
    errors: Vec<String>,
    log_alarms: Vec<String>,
    duration_s: f64,
) -> ScenarioReport {
    failover(history, &mut faults);
    let mut figures: Vec<u64> = faults.iter().filter_map(|f| f.failover_ms).collect();
    figures.sort_unstable();
    let lost = verdict.of_kind(AnomalyKind::LostWrite).count() + verdict.of_kind(AnomalyKind::UnseenAtEnd).count();
    ScenarioReport {
        scenario: scenario.name.to_string(),
        about: scenario.about.to_string(),
        seed,
        nodes: scenario.nodes,
        partitions: scenario.partitions,
        passed: verdict.is_valid() && errors.is_empty(),
        errors,
        duration_s: (duration_s * 10.0).round() / 10.0,
        stats: verdict.stats.clone(),
        anomaly_counts: verdict.counts().into_iter().map(|(k, n)| (k.name().to_string(), n)).collect(),
        anomalies: verdict.anomalies.iter().take(ANOMALIES_IN_REPORT_MAX).cloned().collect(),
        lost,
        duplicated: duplicated(history),
        failover_p50_ms: percentile(&figures, 50.0),
        failover_p99_ms: percentile(&figures, 99.0),
        faults,
        unavailable_s: unavailable(history, scenario.partitions),
        liveness: verdict.liveness.to_string(),
        log_alarms,
        replicas_compared: vec![],
        notes: vec![],
        timeline: timeline(history),
    }
}

fn ms(x: Option<u64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v} ms"))
}

impl ScenarioReport {
    /// The one line per scenario.
    pub fn line(&self) -> String {
        let unavailable: Vec<String> = self.unavailable_s.iter().map(|(p, s)| format!("p{p} {s}s")).collect();
        format!(
            "{:<22} {} seed={} {:.0}s ops={} acked={} lost={} duplicated={} anomalies={} replicas={} failover p50={} p99={} unavailable [{}]{}",
            self.scenario,
            if self.passed { "PASS" } else { "FAIL" },
            self.seed,
            self.duration_s,
            self.stats.sends_invoked + self.stats.polls,
            self.stats.records_acknowledged,
            self.lost,
            self.duplicated,
            self.anomalies.len().max(self.anomaly_counts.values().sum()),
            self.replicas_compared.len(),
            ms(self.failover_p50_ms),
            ms(self.failover_p99_ms),
            unavailable.join(", "),
            if self.errors.is_empty() { String::new() } else { format!(" errors: {}", self.errors.join("; ")) }
        )
    }

    /// The human summary of one scenario.
    pub fn summary(&self, verdict: &Verdict) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ({}), seed {}, {} nodes, {} partitions",
            self.scenario, self.about, self.seed, self.nodes, self.partitions
        );
        let _ = writeln!(s, "{}", self.line());
        let _ = writeln!(s, "checker: {verdict}");
        let _ = writeln!(s, "faults:");
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  {:>7} ms  {} (healed at {} ms; affected partitions {:?}; failover {})",
                f.at_ms,
                f.note,
                f.healed_ms,
                f.affected,
                ms(f.failover_ms)
            );
            for r in f.rules.lines() {
                let _ = writeln!(s, "             rules {r}");
            }
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        if !self.replicas_compared.is_empty() {
            let _ = writeln!(s, "replicas compared: {}", self.replicas_compared.join(", "));
        }
        for n in &self.notes {
            let _ = writeln!(s, "{n}");
        }
        if !self.log_alarms.is_empty() {
            let _ = writeln!(s, "node log lines at ERROR or panicking ({}):", self.log_alarms.len());
            for l in self.log_alarms.iter().take(10) {
                let _ = writeln!(s, "  {l}");
            }
        }
        s
    }

    /// The timeline as an SVG: bars of acknowledged records per second, a line of the
    /// highest acknowledgement latency per second (where stalls show), red bands while a
    /// fault held.
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const H: f64 = 200.0;
        const LEFT: f64 = 50.0;
        const RIGHT: f64 = 90.0;
        const TOP: f64 = 10.0;
        const BOTTOM: f64 = 25.0;
        let seconds = self.timeline.len().max(1) as f64;
        let x = |sec: f64| LEFT + sec / seconds * (W - LEFT - RIGHT);
        let max_n = self.timeline.iter().map(|t| t.1).max().unwrap_or(1).max(1) as f64;
        let max_lat = self.timeline.iter().map(|t| t.3).max().unwrap_or(1).max(1) as f64;
        let plot_h = H - TOP - BOTTOM;
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="10">"#
        );
        for f in &self.faults {
            let (a, b) = (x(f.at_ms as f64 / 1000.0), x(f.healed_ms as f64 / 1000.0));
            let _ = write!(
                s,
                r#"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="red" fill-opacity="0.15"><title>{}</title></rect>"#,
                (b - a).max(1.0),
                html(&f.note)
            );
        }
        let bar_w = ((W - LEFT - RIGHT) / seconds).max(1.0);
        for (sec, n, _, _) in &self.timeline {
            let h = *n as f64 / max_n * plot_h;
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4a7ab0"/>"##,
                x(*sec as f64),
                TOP + plot_h - h,
                bar_w * 0.9
            );
        }
        let points: Vec<String> = self
            .timeline
            .iter()
            .filter(|t| t.1 > 0)
            .map(|(sec, _, _, max)| {
                format!("{:.1},{:.1}", x(*sec as f64 + 0.5), TOP + plot_h - *max as f64 / max_lat * plot_h)
            })
            .collect();
        let _ =
            write!(s, r##"<polyline points="{}" fill="none" stroke="#e08020" stroke-width="1.5"/>"##, points.join(" "));
        let _ = write!(
            s,
            r##"<text x="2" y="{}">{max_n:.0} rec/s</text><text x="{}" y="{}" fill="#e08020">max {max_lat:.0} ms</text>"##,
            TOP + 8.0,
            W - RIGHT + 2.0,
            TOP + 8.0
        );
        let step = if seconds > 120.0 { 30 } else { 10 };
        for sec in (0..seconds as u64).step_by(step) {
            let _ = write!(s, r#"<text x="{:.1}" y="{}">{sec}s</text>"#, x(sec as f64), H - 8.0);
        }
        s.push_str("</svg>");
        s
    }
}

pub fn html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The run's HTML page: the verdict lines, then per scenario its timeline, faults and
/// the checker's verdict.
pub fn page(command: &str, reports: &[(ScenarioReport, String)]) -> String {
    let mut s = String::from(
        "<!doctype html><meta charset=utf-8><title>Flotilla chaos run</title>\
         <style>body{font-family:sans-serif;max-width:960px;margin:1em auto}pre{background:#f4f4f4;padding:.5em;overflow-x:auto;font-size:12px}\
         .pass{color:#070}.fail{color:#b00}</style><h1>Flotilla chaos run</h1>",
    );
    let _ = write!(s, "<p>Command: <code>{}</code></p><pre>", html(command));
    for (r, _) in reports {
        let class = if r.passed { "pass" } else { "fail" };
        let _ = writeln!(s, "<span class={class}>{}</span>", html(&r.line()));
    }
    s.push_str("</pre><p>Timelines: bars are acknowledged records per second, the orange line the highest acknowledgement latency per second, red bands the faults (hover for what).</p>");
    for (r, summary) in reports {
        let _ = write!(
            s,
            "<h2 id={0}>{0}</h2><p>{1}</p>{2}<pre>{3}</pre>",
            r.scenario,
            html(&r.about),
            r.svg(),
            html(summary)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use flotilla_testkit::Event;

    use super::*;

    fn send(h: &mut History, process: u64, partition: u32, invoke_ms: u64, ok_ms: u64) {
        h.push(Event::new(process, 1, Op::Send, Kind::Invoke, invoke_ms).on("t", partition).values(["v"]));
        h.push(Event::new(process, 1, Op::Send, Kind::Ok, ok_ms).on("t", partition).records_from(0, ["v"]));
    }

    fn fault(at_ms: u64, affected: Vec<u32>) -> FaultRecord {
        let note = String::new();
        FaultRecord { note, nodes: vec![], affected, at_ms, healed_ms: at_ms, rules: String::new(), failover_ms: None }
    }

    #[test]
    fn failover_waits_for_every_affected_partition() {
        let mut h = History::new();
        send(&mut h, 1, 0, 900, 1_100); // invoked before the fault: does not count
        send(&mut h, 1, 1, 1_200, 1_300);
        send(&mut h, 2, 0, 1_500, 4_000);
        send(&mut h, 3, 2, 5_000, 5_100);
        let mut faults =
            vec![fault(1_000, vec![0, 1]), fault(1_000, vec![]), fault(1_000, vec![2]), fault(6_000, vec![0])];
        failover(&h, &mut faults);
        let got: Vec<Option<u64>> = faults.iter().map(|f| f.failover_ms).collect();
        assert_eq!(got, vec![Some(3_000), Some(300), Some(4_100), None]);
    }

    #[test]
    fn unavailability_counts_gaps_over_a_second() {
        let mut h = History::new();
        for (i, t) in [0u64, 500, 900, 3_400, 3_900, 5_000].into_iter().enumerate() {
            send(&mut h, i as u64, 0, t, t);
        }
        let u = unavailable(&h, 2);
        assert_eq!(u[&0], 2.5 + 1.1);
        assert_eq!(u[&1], 0.0);
    }

    #[test]
    fn percentiles_are_ranks() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50));
        assert_eq!(percentile(&xs, 99.0), Some(99));
    }
}
