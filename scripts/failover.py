#!/usr/bin/env python3
"""Failover under load: kill -9 a node again and again while producers write to every
partition, and measure, for each partition the killed node led, the time from the kill to
the partition's next acknowledged write.

Usage: scripts/failover.py [--kills 20] [--partitions 6] [--period 8] [extra `flotilla node` flags...]

Starts three `flotilla node` processes (ports 7171-7173, metrics 8171-8173, data in
/tmp/flotilla-failover), creates a topic (replication factor 3) and runs
`flotilla bench produce --ack-gaps-over-ms 20` (one closed-loop producer per partition
and a second round of them, so every partition is written to all the time). Every
--period seconds it kills -9 the next node in turn (1, 2, 3, 1, ...: partition leaders,
and the metadata leader among them), restarts it 3 s later, and afterwards matches the kill times with the
acknowledgement gaps the bench reports. Prints every failover time, p50, p99 and max.
FLOTILLA names the binary (default: the release build).
"""
import argparse, json, os, re, subprocess, sys, time, urllib.request

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/flotilla/target"))
BIN = os.environ.get("FLOTILLA") or f"{TARGET}/release/flotilla"
DIR = "/tmp/flotilla-failover"
# Each node listens for other nodes on its client port + 100 (`rpc-listen`).
PEERS = ",".join(f"{i}=127.0.0.1:{7270+i}" for i in (1, 2, 3))
BOOT = ",".join(f"127.0.0.1:{7170+i}" for i in (1, 2, 3))
procs = {}


def start(i, extra):
    log = open(f"{DIR}/node-{i}.log", "a")
    procs[i] = subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{7170+i}",
                                 "--data-dir", f"{DIR}/node-{i}", "--peers", PEERS, "--zone", "abc"[i-1],
                                 "--metrics-listen", f"127.0.0.1:{8170+i}"] + extra, stdout=log, stderr=log)


def leaders(topic):
    """partition -> the node that says it leads it (from each live node's metrics)."""
    out = {}
    for i in (1, 2, 3):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{8170+i}/metrics", timeout=1).read().decode()
        except Exception:
            continue
        for m in re.finditer(rf'^flotilla_partition_leader{{topic="{topic}",partition="(\d+)"[^}}]*}} (\d+)', text, re.M):
            if int(m.group(2)) == 1:
                out[int(m.group(1))] = i
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--period", type=float, default=8.0)
    a, extra = ap.parse_known_args()
    subprocess.run(["rm", "-rf", DIR])
    os.makedirs(DIR)
    for i in (1, 2, 3):
        start(i, extra)
    time.sleep(2)
    subprocess.run([BIN, "--bootstrap", BOOT, "topic", "create", "f", "--partitions", str(a.partitions),
                    "--replication-factor", "3"], check=True, capture_output=True)
    t0 = time.time()
    while len(leaders("f")) < a.partitions:
        if time.time() - t0 > 30:
            sys.exit("the topic's partitions got no leaders")
        time.sleep(0.2)
    secs = int(a.kills * a.period + 6)
    bench = subprocess.Popen([BIN, "--bootstrap", BOOT, "--output", "json", "bench", "produce", "--topic", "f",
                              "--producers", str(2 * a.partitions), "--record-size", "1024",
                              "--duration-secs", str(secs), "--warmup-secs", "0", "--ack-gaps-over-ms", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    kills = []
    try:
        time.sleep(4)
        for k in range(a.kills):
            led = leaders("f")
            victim = k % 3 + 1
            parts = sorted(p for p, l in led.items() if l == victim)
            at = time.time()
            procs[victim].kill()
            procs[victim].wait()
            kills.append({"node": victim, "unix_ms": int(at * 1000), "partitions": parts})
            print(f"kill {k + 1}: node {victim} leading partitions {parts}", flush=True)
            time.sleep(3)
            start(victim, extra)
            time.sleep(max(0, a.period - (time.time() - at)))
        report = json.loads(bench.communicate(timeout=secs + 60)[0])
    finally:
        bench.kill()
        for p in procs.values():
            p.kill()
    gaps = report.get("ack_gaps") or []
    times = []
    for k in kills:
        k["failover_ms"] = []
        for p in k["partitions"]:
            # The gap of this partition that the kill falls in: from its last acknowledgement
            # before the kill to its first after it.
            g = [g for g in gaps if g["partition"] == p and g["from_unix_ms"] <= k["unix_ms"] < g["to_unix_ms"]]
            if not g:
                print(f"  node {k['node']} partition {p}: no gap over 20 ms around the kill")
                continue
            k["failover_ms"].append(g[0]["to_unix_ms"] - k["unix_ms"])
        times += k["failover_ms"]
        print(f"  kill of node {k['node']}: failover ms {k['failover_ms']}")
    print(f"\n{len(kills)} kills, {len(times)} partition failovers: p50 {pct(times, 0.5)} ms, "
          f"p99 {pct(times, 0.99)} ms, max {max(times) if times else 'n/a'} ms; "
          f"records acknowledged {report['acknowledged_total']}, failed {report['errors'] + report['warmup']['errors']}")
    json.dump({"kills": kills, "gaps": gaps}, open(f"{DIR}/failover.json", "w"), indent=1)


if __name__ == "__main__":
    main()
