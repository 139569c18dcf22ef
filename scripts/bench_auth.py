#!/usr/bin/env python3
"""flotilla bench produce with authorization off and on, alternating (docs/perf.md).

Two modes, each on a fresh cluster of three `flotilla node` processes started by hand
(plaintext, as bench_tls.py's `none`), REPS times each in turn: `off`, no authorization
and no credentials; `on`, `--authorization` with a bootstrap superuser that creates user
`bench` with ACL entries for every topic and for describing the cluster, and the
benchmark runs as `bench` (a password in every request, checked against the cached
credential, and every request checked against the entries). Each runs a closed-loop
produce of 1 KiB records to a topic of 6 partitions at each PRODUCERS level for 10 s
after a 2 s warm-up. Prints one line per run and the median per mode and level.

    scripts/bench_auth.py [BIN] [REPS]     # BIN: the flotilla binary (default: on PATH)
"""
import json, os, shutil, signal, statistics, subprocess, sys, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "flotilla"
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
LEVELS = [1, 64]
DIR = "/tmp/flotilla-bench-auth"
BOOTSTRAP = "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072"
ADMIN = {"FLOTILLA_USER": "admin", "FLOTILLA_PASSWORD": "admin-pw"}
BENCH = {"FLOTILLA_USER": "bench", "FLOTILLA_PASSWORD": "bench-pw"}


def cli(args, env=None, stdin=None):
    return subprocess.run([BIN, "--bootstrap", BOOTSTRAP] + args, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=stdin)


def start(mode):
    """Three nodes of `mode`, ready; the first node's process, whose group to signal."""
    os.makedirs(DIR)
    peers = ",".join(f"{i}=127.0.0.1:{7169 + i}" for i in (1, 2, 3))
    extra = ["--authorization", "--superusers", "admin", "--bootstrap-user", "admin"] if mode == "on" else []
    env = {**os.environ, "FLOTILLA_BOOTSTRAP_PASSWORD": ADMIN["FLOTILLA_PASSWORD"]}
    log = open(f"{DIR}/nodes.log", "w")
    nodes = []
    for i in (1, 2, 3):
        nodes.append(subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{7069 + i}",
                                       "--data-dir", f"{DIR}/node-{i}", "--peers", peers] + extra,
                                      stdout=log, stderr=log, env=env,
                                      process_group=nodes[0].pid if nodes else 0))
    as_admin = ADMIN if mode == "on" else None
    deadline = time.time() + 60
    while time.time() < deadline:
        out = cli(["cluster", "describe", "--output", "json"], as_admin)
        if out.returncode == 0 and sum(b.get("state") == "alive" for b in json.loads(out.stdout)["brokers"]) == 3:
            break
        time.sleep(0.5)
    else:
        sys.exit(f"{mode}: cluster not ready")
    if mode == "on":
        steps = [(["user", "create", "bench"], BENCH["FLOTILLA_PASSWORD"] + "\n"),
                 (["acl", "add", "--principal", "bench", "--operation", "all", "--topic", "*"], None),
                 (["acl", "add", "--principal", "bench", "--operation", "describe", "--cluster"], None)]
        for args, stdin in steps:
            done = cli(args, ADMIN, stdin)
            if done.returncode != 0:
                sys.exit(f"{args}: {done.stderr}")
    return nodes


def run(mode, rep):
    shutil.rmtree(DIR, ignore_errors=True)
    nodes = start(mode)
    out = {}
    try:
        for p in LEVELS:
            done = cli(["bench", "produce", "--topic", f"b{p}", "--create", "--partitions", "6",
                        "--producers", str(p), "--record-size", "1024", "--duration-secs", "10",
                        "--output", "json"], BENCH if mode == "on" else None)
            if done.returncode != 0:
                sys.exit(f"{mode}: bench failed: {done.stderr}")
            r = json.loads(done.stdout)
            out[p] = r
            print(f"{mode:3} rep {rep} producers {p:3}: {r['records_per_sec']:9.0f} records/s, "
                  f"p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f} ms, "
                  f"node CPU {r['node_cpu']['cpu_secs_per_million_records']:.0f} s per million records",
                  flush=True)
    finally:
        os.killpg(nodes[0].pid, signal.SIGINT)
        for n in nodes:
            n.wait(timeout=30)
    return out


MODES = ("off", "on")
results = {(m, p): [] for m in MODES for p in LEVELS}
for rep in range(1, REPS + 1):
    for mode in MODES:
        for p, r in run(mode, rep).items():
            results[(mode, p)].append(r)
print("median of", REPS)
for (mode, p), rs in sorted(results.items(), key=lambda kv: (kv[0][1], MODES.index(kv[0][0]))):
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"{mode:3} producers {p:3}: {med(lambda r: r['records_per_sec']):9.0f} records/s, "
          f"p50 {med(lambda r: r['latency_ms']['p50']):.2f} ms, p99 {med(lambda r: r['latency_ms']['p99']):.2f} ms, "
          f"node CPU {med(lambda r: r['node_cpu']['cpu_secs_per_million_records']):.0f} s per million records")
