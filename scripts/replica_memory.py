#!/usr/bin/env python3
"""Resident memory per partition replica at rest, after a produce load, and a while after.

Usage: FLOTILLA=<binary> scripts/replica_memory.py PARTITIONS LOAD_SECS [PRODUCERS]
Starts three `flotilla node` processes (client ports 7071-7073, data in
/tmp/flotilla-replica-memory), creates a topic of PARTITIONS partitions (replication
factor 3), and prints each node's resident memory above what it held before the topic,
divided by PARTITIONS (each node holds one replica of every partition): 30 s after the
topic's creation, 20 s after LOAD_SECS of `bench produce` with PRODUCERS closed-loop
producers (default 300) spread over every partition, and 60 s after that. With
IDLE_MINUTES=M, no load: once a minute for M minutes instead (LOAD_SECS is ignored).
"""
import os, subprocess, sys, time

from local_cluster import BOOTSTRAP as B, rss_kib, start

BIN = os.environ.get("FLOTILLA", "/root/.cache/flotilla/target/release/flotilla")
N, SECS = int(sys.argv[1]), sys.argv[2]
PRODUCERS = sys.argv[3] if len(sys.argv) > 3 else "300"
procs = start(BIN, "/tmp/flotilla-replica-memory")

def per_replica(base):
    return {i: round((rss_kib(procs[i]) - base[i]) / N, 1) for i in procs}

try:
    time.sleep(3)
    base = {i: rss_kib(procs[i]) for i in procs}
    subprocess.run([BIN, *B, "topic", "create", "many", "--partitions", str(N), "--replication-factor", "3"],
                   check=True)
    time.sleep(30)
    print(f"at rest: KiB per replica {per_replica(base)}", flush=True)
    if os.environ.get("IDLE_MINUTES"):
        for m in range(1, int(os.environ["IDLE_MINUTES"]) + 1):
            time.sleep(60)
            print(f"{m} min later: KiB per replica {per_replica(base)}", flush=True)
        raise SystemExit(0)
    # --ack-gaps-over-ms makes producer k write to partition k mod N: every partition
    # gets records all the time.
    out = subprocess.run([BIN, *B, "bench", "produce", "--topic", "many", "--duration-secs", SECS,
                          "--producers", PRODUCERS, "--ack-gaps-over-ms", "100000"],
                         capture_output=True, text=True)
    print("\n".join(l for l in out.stdout.splitlines() if "records acknowledged" in l), flush=True)
    time.sleep(20)
    print(f"after the load: KiB per replica {per_replica(base)}", flush=True)
    time.sleep(60)
    print(f"60 s later: KiB per replica {per_replica(base)}", flush=True)
finally:
    for p in procs.values():
        p.kill()
