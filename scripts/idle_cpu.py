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
import os, re, subprocess, sys, time, urllib.request

BIN = os.environ.get("FLOTILLA", "/root/.cache/flotilla/target/release/flotilla")
N = int(sys.argv[1])
EXTRA = sys.argv[2:]
DIR = "/tmp/flotilla-idle-cpu"
PEERS = ",".join(f"{i}=127.0.0.1:{7170+i}" for i in (1, 2, 3))
subprocess.run(["rm", "-rf", DIR])
os.makedirs(DIR)
procs = {i: subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{7070+i}",
                              "--data-dir", f"{DIR}/node-{i}", "--peers", PEERS,
                              "--metrics-listen", f"127.0.0.1:{8070+i}"] + EXTRA,
                             stdout=open(f"{DIR}/node-{i}.log", "w"), stderr=subprocess.STDOUT)
         for i in (1, 2, 3)}

def metric(i, name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{8070+i}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else None

def cpu(i):
    f = open(f"/proc/{procs[i].pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

try:
    time.sleep(3)
    B = ["--bootstrap", "127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7073"]
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
