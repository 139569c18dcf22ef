#!/usr/bin/env python3
"""Many partitions on three local nodes: leader balance, idle CPU, failover, handover,
and every leader moved by a preferred-region change.

Usage: scripts/many_partitions.py [PARTITIONS] [extra `flotilla node` flags...]
  (idle scale: scripts/many_partitions.py 10000, with FLOTILLA naming the release build)
  e.g. scripts/many_partitions.py 1000 --quiesce-after-ms 3000
  LED_LIMIT=S gives up (and stops the nodes) if not every partition has a leader S seconds
  after the topic's creation (default 600).
Starts three `flotilla node` processes (ports 7071-7073, metrics 8071-8073, data in
/tmp/flotilla-many), creates one topic, and prints: partitions without a leader every
5 s until all have one, when leaders are even, idle CPU and resident memory per node
(and per replica: each node holds one replica of every partition), how long after a
kill -9 of node 1 every partition has a leader again, and how long after its restart
leaders are even again; then how long it takes every partition's
leadership to follow the topic's preferred leader region to node 2 (region r2), then to
node 3 (r3: N transfers). FLOTILLA names the binary.
"""
import os, re, signal, subprocess, sys, time, urllib.request

BIN = os.environ.get("FLOTILLA", "/root/.cache/flotilla/target/debug/flotilla")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
DIR = "/tmp/flotilla-many"
# Each node listens for other nodes on its client port + 100 (`rpc-listen`).
PEERS = ",".join(f"{i}=127.0.0.1:{7170+i}" for i in (1, 2, 3))
procs = {}

def start(i):
    log = open(f"{DIR}/node-{i}.log", "a")
    procs[i] = subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{7070+i}",
        "--data-dir", f"{DIR}/node-{i}", "--peers", PEERS, "--zone", "abc"[i-1], "--region", f"r{i}",
        "--metrics-listen", f"127.0.0.1:{8070+i}"] + EXTRA, stdout=log, stderr=log)

def metric(i, name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{8070+i}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else None

def leaders():
    return {i: metric(i, "flotilla_partitions_leading") for i in (1, 2, 3)}

def cpu(i):
    f = open(f"/proc/{procs[i].pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def rss_kib(i):
    for line in open(f"/proc/{procs[i].pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def wait(what, cond, limit=300, every=None):
    """Polls the leader counts until `cond` holds; with `every`, prints how many
    partitions have no leader that often."""
    t0 = time.time(); shown = t0
    while time.time() - t0 < limit:
        l = leaders()
        if cond(l):
            return time.time() - t0, l
        if every and time.time() - shown >= every:
            shown = time.time()
            led = sum(v or 0 for v in l.values())
            print(f"  {shown-t0:5.1f}s: {N - led} of {N} partitions without a leader", flush=True)
        time.sleep(POLL)
    for p in procs.values():
        p.send_signal(signal.SIGKILL)
    raise SystemExit(f"{what}: not within {limit}s: {leaders()}")

EXTRA = sys.argv[2:]
# A node's /metrics holds every partition it hosts (about 1.5 MB at 3,000 partitions):
# rendering it four times a second took a tenth of a node's CPU at 3,000, so the poll
# slows down as the topic grows (one poll in 2 s at 10,000), and the times printed are
# that coarse. scripts/failover.py times failover precisely.
POLL = max(0.25, N / 5000)
subprocess.run(["rm", "-rf", DIR])
os.makedirs(DIR)
for i in (1, 2, 3):
    start(i)
time.sleep(3)
rss0 = {i: rss_kib(i) for i in procs}
t0 = time.time()
subprocess.run([BIN, "--bootstrap", "127.0.0.1:7071", "topic", "create", "many", "--partitions", str(N),
                "--replication-factor", "3"], check=True)
print(f"topic of {N} partitions created in {time.time()-t0:.1f}s", flush=True)
all_led = lambda l: None not in l.values() and sum(l.values()) == N
dt, l = wait("all led", all_led, float(os.environ.get("LED_LIMIT", 600)), every=5)
print(f"every partition led {time.time()-t0:.1f}s after the create command started: {l}", flush=True)
even = lambda l: all_led(l) and max(l.values()) - min(l.values()) <= 1
dt, l = wait("balanced", even, 600)
print(f"leaders balanced {l} {dt:.1f}s after that", flush=True)
time.sleep(10)
c0 = {i: cpu(i) for i in procs}; t = time.time(); time.sleep(20)
use = {i: round(100 * (cpu(i) - c0[i]) / (time.time() - t), 1) for i in procs}
print(f"idle CPU % of a core per node over 20 s: {use}; quiesced replicas: "
      f"{ {i: metric(i, 'flotilla_partitions_quiesced') for i in procs} }", flush=True)
rss = {i: rss_kib(i) for i in procs}
print(f"resident memory per node (KiB): before the topic {rss0}, at rest {rss}; per replica "
      f"{ {i: round((rss[i] - rss0[i]) / N, 1) for i in procs} } KiB", flush=True)
led1 = leaders()[1]
procs[1].send_signal(signal.SIGKILL); procs[1].wait(); tk = time.time()
dt, l = wait("failover", lambda l: l[2] is not None and l[3] is not None and l[2] + l[3] == N, 300, every=5)
print(f"kill -9 node 1 (led {led1}): all {N} led by 2 and 3 {dt:.1f}s after: {l}", flush=True)
time.sleep(5)
start(1); tr = time.time()
up, _ = wait("restart", lambda l: l[1] is not None, 300)
first, _ = wait("first handover", lambda l: (l[1] or 0) > 0, 300)
dt, l = wait("handover", even, 300)
print(f"node 1 restarted: serving metrics after {up:.1f}s, leading its first partition after "
      f"{up+first:.1f}s, leaders even again {up+first+dt:.1f}s after the restart: {l}", flush=True)
time.sleep(5)
for region, node in (("r2", 2), ("r3", 3)):
    before = leaders()
    t0 = time.time()
    subprocess.run([BIN, "--bootstrap", "127.0.0.1:7071", "topic", "config", "many", "--replication-factor", "3",
                    "--preferred-leader-region", region], check=True, stdout=subprocess.DEVNULL)
    dt, l = wait(f"leaders to {region}", lambda l, node=node: l[node] == N, 300)
    print(f"preferred leader region {region}: {N - before[node]} transfers, all {N} led by node {node} "
          f"{dt:.1f}s after the change: {l}", flush=True)
print("final", leaders(), flush=True)
for p in procs.values():
    p.send_signal(signal.SIGTERM)
for p in procs.values():
    p.wait()
