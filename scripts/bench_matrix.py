#!/usr/bin/env python3
"""The produce table of docs/perf.md: records/s and ack p50/p99 for topics of some
partitions at some records in flight, each cell on a fresh three-node cluster.

Usage:
  scripts/bench_matrix.py [--partitions 1,6] [--in-flight 1,64,256] [--secs 10]
                          [--warmup 2] [--profile SECONDS] [--out DIR]
                          [--bench-args='--no-idempotence ...']

Each cell starts `flotilla dev --nodes 3` in a new data directory (ports 7270-7272),
creates the topic (replication factor 3), runs `flotilla bench produce` closed-loop
(N producers, one record of 1 KiB in flight each; acks=all, fsync before ack) for the
warm-up and then the measured seconds, reads the node processes' CPU time from /proc
over the measured interval, and stops the cluster. With --profile S, `perf record`
samples the node processes for S seconds in the middle of each cell's run
(DIR/perf-P-N.data). FLOTILLA names the binary (default: the release build). Prints a
markdown table and writes DIR/matrix.json.
"""
import argparse, contextlib, json, os, signal, subprocess, sys, time

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/flotilla/target"))
BIN = os.environ.get("FLOTILLA") or f"{TARGET}/release/flotilla"
PORT = 7270
BENCH_ARGS = []
BOOT = ",".join(f"127.0.0.1:{PORT + i}" for i in range(3))
TICK = os.sysconf("SC_CLK_TCK")


def node_pids():
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if len(args) > 1 and args[1] == b"node" and any(a.startswith(b"127.0.0.1:727") for a in args):
            out.append(int(pid))
    return out


def cpu_secs(pids):
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


@contextlib.contextmanager
def dev_cluster(data):
    """`flotilla dev --nodes 3` in a new data directory `data` (ports PORT..PORT+2), once
    it says Ready; stopped gracefully (SIGTERM) on the way out. The directory is kept."""
    subprocess.run(["rm", "-rf", data])
    dev = subprocess.Popen([BIN, "dev", "--nodes", "3", "--dir", data, "--base-port", str(PORT)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        for line in dev.stdout:
            if line.startswith("Ready"):
                break
            if time.time() > deadline:
                raise RuntimeError("the cluster did not get ready")
        yield
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)


def cell(partitions, in_flight, secs, warmup, profile, out):
    data = f"/tmp/flotilla-matrix-{partitions}-{in_flight}"
    try:
        with dev_cluster(data):
            return measure(partitions, in_flight, secs, warmup, profile, out)
    finally:
        subprocess.run(["rm", "-rf", data])


def measure(partitions, in_flight, secs, warmup, profile, out):
    cli = [BIN, "--bootstrap", BOOT]
    subprocess.run(cli + ["topic", "create", "m", "--partitions", str(partitions), "--replication-factor", "3"],
                   check=True, capture_output=True)
    base = cli + ["bench", "produce", "--topic", "m", "--producers", str(in_flight), "--record-size", "1024"]
    base += BENCH_ARGS
    subprocess.run(base + ["--duration-secs", str(warmup), "--warmup-secs", "0"], check=True, capture_output=True)
    pids = node_pids()
    before = cpu_secs(pids)
    bench = subprocess.Popen(base + ["--duration-secs", str(secs), "--warmup-secs", "0", "--output", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    perf = None
    if profile:
        time.sleep(max(0, (secs - profile) / 2))
        perf = subprocess.run(["perf", "record", "-F", "499", "-g", "--call-graph", "dwarf,32768",
                               "-o", f"{out}/perf-{partitions}-{in_flight}.data", "-p",
                               ",".join(map(str, pids)), "--", "sleep", str(profile)],
                              capture_output=True)
    report = json.loads(bench.communicate()[0])
    used = cpu_secs(pids) - before
    report["node_cpu_secs"] = used
    report["node_cpu_secs_per_million"] = used / max(report["records"], 1) * 1e6
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", default="1,6")
    ap.add_argument("--in-flight", default="1,64,256")
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--out", default="/tmp/flotilla-matrix")
    ap.add_argument("--bench-args", default="", help="more arguments for bench produce, e.g. --no-idempotence")
    a = ap.parse_args()
    BENCH_ARGS.extend(a.bench_args.split())
    os.makedirs(a.out, exist_ok=True)
    rows = {}
    for p in map(int, a.partitions.split(",")):
        for n in map(int, a.in_flight.split(",")):
            r = cell(p, n, a.secs, a.warmup, a.profile, a.out)
            rows[f"{p}/{n}"] = r
            lat = r["latency_ms"]
            print(f"partitions={p} in_flight={n}: {r['records_per_sec']:,.0f} records/s; "
                  f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms; "
                  f"node CPU {r['node_cpu_secs_per_million']:.0f} s per million records", flush=True)
    json.dump(rows, open(f"{a.out}/matrix.json", "w"), indent=1)
    flights = a.in_flight.split(",")
    print("\n| records/s; ack p50/p99 ms | " + " | ".join(f"{n} in flight" for n in flights) + " |")
    print("|---|" + "---|" * len(flights))
    for p in a.partitions.split(","):
        cells = []
        for n in flights:
            r = rows[f"{p}/{n}"]
            cells.append(f"{r['records_per_sec']:,.0f}; {r['latency_ms']['p50']:.2f}/{r['latency_ms']['p99']:.2f}")
        print(f"| {p} partition(s) | " + " | ".join(cells) + " |")
    print("\n| node CPU-s per million records | " + " | ".join(f"{n} in flight" for n in flights) + " |")
    print("|---|" + "---|" * len(flights))
    for p in a.partitions.split(","):
        print(f"| {p} partition(s) | " + " | ".join(
            f"{rows[f'{p}/{n}']['node_cpu_secs_per_million']:.0f}" for n in flights) + " |")


if __name__ == "__main__":
    sys.exit(main())
