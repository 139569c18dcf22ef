#!/usr/bin/env python3
"""flotilla bench produce with TLS off and on, alternating (docs/perf.md).

Three modes, each on a fresh three-node cluster in a new directory, REPS times each in
turn: `none`, three `flotilla node` processes started by hand without any TLS (plaintext
node-to-node traffic, which a node allows with a warning); `nodes`, `flotilla dev` (node
to node mutual TLS, as `make run`), clients in plaintext; `all`, `flotilla dev
--client-tls` (clients over TLS too). Each runs a closed-loop produce of 1 KiB records
to a topic of 6 partitions at each PRODUCERS level for 10 s after a 2 s warm-up. Prints
one line per run and the median per mode and level.

    scripts/bench_tls.py [BIN] [REPS]     # BIN: the flotilla binary (default: on PATH)
"""
import json, os, shutil, signal, statistics, subprocess, sys, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "flotilla"
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
LEVELS = [1, 64]
DIR = "/tmp/flotilla-bench-tls"


BOOTSTRAP = "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072"


def start(mode):
    """The cluster of `mode`, ready: (a process whose group to signal, its pids)."""
    if mode != "none":
        args = [BIN, "dev", "--nodes", "3", "--dir", DIR] + (["--client-tls"] if mode == "all" else [])
        dev = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        for line in dev.stdout:
            if line.startswith("Ready") or line.startswith("Not ready"):
                break
        return dev
    os.makedirs(DIR)
    peers = ",".join(f"{i}=127.0.0.1:{7169 + i}" for i in (1, 2, 3))
    log = open(f"{DIR}/nodes.log", "w")
    nodes = []
    for i in (1, 2, 3):
        # One process group, signalled as a whole (the first node's pid).
        nodes.append(subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{7069 + i}",
                                       "--data-dir", f"{DIR}/node-{i}", "--peers", peers], stdout=log, stderr=log,
                                      process_group=nodes[0].pid if nodes else 0))
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run([BIN, "cluster", "describe", "--bootstrap", BOOTSTRAP, "--output", "json"],
                             capture_output=True, text=True)
        if out.returncode == 0 and sum(b.get("state") == "alive" for b in json.loads(out.stdout)["brokers"]) == 3:
            break
        time.sleep(0.5)
    return Group(nodes)


class Group:
    """Processes in one process group, waited for together."""

    def __init__(self, procs):
        self.procs, self.pid = procs, procs[0].pid

    def wait(self, timeout):
        for p in self.procs:
            p.wait(timeout=timeout)


def run(mode, rep):
    shutil.rmtree(DIR, ignore_errors=True)
    dev = start(mode)
    cli = [BIN, "--bootstrap", BOOTSTRAP] + (["--tls-ca", f"{DIR}/certs/ca.pem"] if mode == "all" else [])
    out = {}
    try:
        for p in LEVELS:
            done = subprocess.run(
                cli + ["bench", "produce", "--topic", f"b{p}", "--create", "--partitions", "6",
                       "--producers", str(p), "--record-size", "1024", "--duration-secs", "10",
                       "--output", "json"], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{mode}: bench failed: {done.stderr}")
            r = json.loads(done.stdout)
            out[p] = r
            print(f"{mode:5} rep {rep} producers {p:3}: {r['records_per_sec']:9.0f} records/s, "
                  f"p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f} ms, "
                  f"node CPU {r['node_cpu']['cpu_secs_per_million_records']:.0f} s per million records",
                  flush=True)
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=30)
    return out


MODES = ("none", "nodes", "all")
results = {(m, p): [] for m in MODES for p in LEVELS}
for rep in range(1, REPS + 1):
    for mode in MODES:
        for p, r in run(mode, rep).items():
            results[(mode, p)].append(r)
print("median of", REPS)
for (mode, p), rs in sorted(results.items(), key=lambda kv: (kv[0][1], MODES.index(kv[0][0]))):
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"{mode:5} producers {p:3}: {med(lambda r: r['records_per_sec']):9.0f} records/s, "
          f"p50 {med(lambda r: r['latency_ms']['p50']):.2f} ms, p99 {med(lambda r: r['latency_ms']['p99']):.2f} ms, "
          f"node CPU {med(lambda r: r['node_cpu']['cpu_secs_per_million_records']):.0f} s per million records")
