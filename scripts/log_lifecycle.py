#!/usr/bin/env python3
"""The partition log's lifecycle on three local nodes (RFC 0003): memory while a
partition grows, restart time, and disk use under retention.

Usage:
  scripts/log_lifecycle.py grow [GIB]       # one partition fed GIB (default 2) of 1 KiB
                                            # records; each node's RSS sampled; then every
                                            # node killed -9 and restarted, and the time
                                            # until a fetch is served again
  scripts/log_lifecycle.py retain [MINUTES] [MB]
                                            # a topic with retention-bytes MB (default 100)
                                            # under continuous produce for MINUTES (default
                                            # 10), values that do not compress; each node's
                                            # data directory sampled and 5,000 records read
                                            # from the log start every 10 s
Starts three `flotilla node` processes (ports 7171-7173, data in /tmp/flotilla-lifecycle)
and drives them with `flotilla bench produce`. FLOTILLA names the binary (default: the
release build if present, else the debug build). Prints one line per sample.
"""
import os, signal, subprocess, sys, time

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/flotilla/target"))
BIN = os.environ.get("FLOTILLA") or next(
    (p for p in (f"{TARGET}/release/flotilla", f"{TARGET}/debug/flotilla") if os.path.exists(p)), None)
DIR = "/tmp/flotilla-lifecycle"
PORT = 7170
# Each node listens for other nodes on its client port + 100 (`rpc-listen`).
PEERS = ",".join(f"{i}=127.0.0.1:{PORT+100+i}" for i in (1, 2, 3))
BOOT = ",".join(f"127.0.0.1:{PORT+i}" for i in (1, 2, 3))
procs = {}


def start(i, extra):
    log = open(f"{DIR}/node-{i}.log", "a")
    procs[i] = subprocess.Popen([BIN, "node", "--id", str(i), "--listen", f"127.0.0.1:{PORT+i}",
                                 "--data-dir", f"{DIR}/node-{i}", "--peers", PEERS,
                                 "--retention-check-interval-ms", "1000"] + extra, stdout=log, stderr=log)


def rss_mib(i):
    for line in open(f"/proc/{procs[i].pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def du_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total / (1 << 20)


def cli(*args, check=True, **kw):
    return subprocess.run([BIN, "--bootstrap", BOOT, *args], check=check, capture_output=True, text=True, **kw)


def up(extra=()):
    subprocess.run(["rm", "-rf", DIR])
    os.makedirs(DIR)
    for i in (1, 2, 3):
        start(i, list(extra))
    deadline = time.time() + 60
    while cli("cluster", "describe", check=False).returncode != 0:
        if time.time() > deadline:
            raise SystemExit("the cluster did not come up")
        time.sleep(0.5)


def down():
    for p in procs.values():
        p.send_signal(signal.SIGKILL)
        p.wait()


def bench(records, seconds=None, random_values=False):
    args = ["bench", "produce", "--topic", "t", "--producers", "64", "--record-size", "1024", "--linger-ms", "2"]
    args += ["--random-values"] if random_values else []
    args += ["--duration-secs", str(seconds)] if seconds else ["--records", str(records)]
    return subprocess.Popen([BIN, "--bootstrap", BOOT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def served_in():
    """Seconds until a fetch of the partition's last record is answered."""
    t0 = time.time()
    while time.time() - t0 < 120:
        r = cli("consume", "t", "-p", "0", "-o", "-1", "-n", "1", check=False, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return time.time() - t0
        time.sleep(0.1)
    raise SystemExit("no fetch served within 120 s of the restart")


def grow(gib):
    up()
    cli("topic", "create", "t", "--partitions", "1", "--replication-factor", "3")
    records = int(gib * (1 << 30) / 1024)
    base = {i: rss_mib(i) for i in procs}
    print(f"binary {BIN}; {records} records of 1 KiB; RSS at start (MiB): "
          + ", ".join(f"n{i} {base[i]:.0f}" for i in procs), flush=True)
    b = bench(records)
    peak = dict(base)
    t0 = time.time()
    while b.poll() is None:
        time.sleep(5)
        now = {i: rss_mib(i) for i in procs}
        peak = {i: max(peak[i], now[i]) for i in procs}
        print(f"{time.time()-t0:6.0f}s RSS (MiB): " + ", ".join(f"n{i} {now[i]:.0f}" for i in procs)
              + "; data (MiB): " + ", ".join(f"n{i} {du_mib(f'{DIR}/node-{i}'):.0f}" for i in procs), flush=True)
    print(b.stdout.read().strip())
    print("RSS growth over the run, peak - start (MiB): "
          + ", ".join(f"n{i} {peak[i]-base[i]:.0f}" for i in procs))
    down()
    for i in (1, 2, 3):
        start(i, [])
    print(f"every node killed -9 and restarted: a fetch served after {served_in():.2f} s")
    down()


def retain(minutes, mb):
    up()
    cli("topic", "create", "t", "--partitions", "1", "--replication-factor", "3", "--retention-bytes",
        str(mb << 20))
    b = bench(None, seconds=int(minutes * 60), random_values=True)
    t0 = time.time()
    worst = 0.0
    reads, contiguous = 0, 0
    while b.poll() is None:
        time.sleep(10)
        sizes = {i: du_mib(f"{DIR}/node-{i}") for i in procs}
        worst = max(worst, *sizes.values())
        # A consumer from the log start: 5,000 records, which must be contiguous offsets.
        r = cli("consume", "t", "-p", "0", "-o", "beginning", "-n", "5000", "--format", "%o\n", check=False)
        offsets = [int(x) for x in r.stdout.split()] if r.returncode == 0 else []
        ok = len(offsets) == 5000 and offsets == list(range(offsets[0], offsets[0] + 5000))
        reads += 1
        contiguous += ok
        start_offset = offsets[0] if offsets else "?"
        print(f"{time.time()-t0:6.0f}s data (MiB): " + ", ".join(f"n{i} {sizes[i]:.0f}" for i in procs)
              + f"; log start {start_offset}; 5,000 from it contiguous: {ok}", flush=True)
    print(b.stdout.read().strip())
    print(f"largest data directory seen: {worst:.0f} MiB (retention-bytes {mb} MiB, values that do not compress)")
    print(f"reads of 5,000 records from the log start with contiguous offsets: {contiguous} of {reads}")
    down()


if __name__ == "__main__":
    if not BIN:
        raise SystemExit("no flotilla binary: run `make build` (or set FLOTILLA)")
    mode = sys.argv[1] if len(sys.argv) > 1 else "grow"
    try:
        if mode == "grow":
            grow(float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
        elif mode == "retain":
            retain(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0, int(sys.argv[3]) if len(sys.argv) > 3 else 100)
        else:
            raise SystemExit(__doc__)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
