#!/usr/bin/env python3
"""Idle CPU of three nodes holding one topic of many partitions, measured with nothing
else running (scripts/many_partitions.py polls every node's /metrics while it measures).

Usage: FLOTILLA=<binary> scripts/idle_cpu.py PARTITIONS [extra `flotilla node` flags...]
Starts three `flotilla node` processes (client ports 7071-7073, data in
/tmp/flotilla-idle-cpu), creates the topic (replication factor 3), waits until every
partition has a leader, rests 30 s, and prints each node's CPU (user + system, from
/proc) over the next 20 s, as a percentage of one core. PERF=1 also records node 2 with
`perf record --call-graph dwarf` for 10 s of that time, into /tmp/idle-cpu-perf.data.
"""
import os, subprocess, sys, time

from local_cluster import BOOTSTRAP as B, cpu_seconds, metric, start

BIN = os.environ.get("FLOTILLA", "/root/.cache/flotilla/target/release/flotilla")
N = int(sys.argv[1])
procs = start(BIN, "/tmp/flotilla-idle-cpu", sys.argv[2:])
cpu = lambda i: cpu_seconds(procs[i])

try:
    time.sleep(3)
    t0 = time.time()
    subprocess.run([BIN, *B, "topic", "create", "many", "--partitions", str(N), "--replication-factor", "3"],
                   check=True)
    while True:
        led = [metric(i, "flotilla_partitions_leading") for i in (1, 2, 3)]
        if None not in led and sum(led) == N:
            break
        if time.time() - t0 > 300:
            raise SystemExit(f"not every partition led within 300 s: {led}")
        time.sleep(max(1, N / 2000))
    print(f"every partition led {time.time() - t0:.1f} s after the create command started: {led}", flush=True)
    time.sleep(30)
    c0 = {i: cpu(i) for i in procs}
    t = time.time()
    if os.environ.get("PERF"):
        subprocess.run(["perf", "record", "-F", "299", "--call-graph", "dwarf,16384", "-p", str(procs[2].pid),
                        "-o", "/tmp/idle-cpu-perf.data", "--", "sleep", "10"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(0, 20 - (time.time() - t)))
    use = {i: round(100 * (cpu(i) - c0[i]) / (time.time() - t), 1) for i in procs}
    print(f"idle CPU % of a core per node over 20 s: {use}; quiesced replicas: "
          f"{ {i: metric(i, 'flotilla_partitions_quiesced') for i in procs} }", flush=True)
finally:
    for p in procs.values():
        p.kill()
