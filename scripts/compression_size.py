#!/usr/bin/env python3
"""What the producer's compression saves at rest: for each codec, a fresh three-node
cluster (`flotilla dev`), `flotilla bench produce` of the same records (the bench's
repeating 1 KiB value, or --random-values), then the bytes in the three data directories
once RocksDB has flushed its memtables (the nodes are stopped gracefully first).

Usage: scripts/compression_size.py [--records 100000] [--codecs none,lz4,zstd]
                                   [--bench-args='--random-values']
FLOTILLA names the binary (default: the release build).
"""
import argparse, os, signal, subprocess, time

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/flotilla/target"))
BIN = os.environ.get("FLOTILLA") or f"{TARGET}/release/flotilla"
PORT = 7370
BOOT = ",".join(f"127.0.0.1:{PORT + i}" for i in range(3))


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def run(codec, records, extra):
    data = f"/tmp/flotilla-compression-{codec}"
    subprocess.run(["rm", "-rf", data])
    dev = subprocess.Popen([BIN, "dev", "--nodes", "3", "--dir", data, "--base-port", str(PORT)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        for line in dev.stdout:
            if "Ready" in line or time.time() > deadline:
                break
        bench = [BIN, "--bootstrap", BOOT, "bench", "produce", "--topic", "c", "--create", "--partitions", "6",
                 "--producers", "64", "--records", str(records), "--warmup-secs", "0", "--linger-ms", "5",
                 "--compression", codec] + extra
        out = subprocess.run(bench, capture_output=True, text=True)
        rate = next((l for l in out.stdout.splitlines() if "acknowledged in" in l), out.stderr.strip()[-200:])
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)
    return du(data), rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--codecs", default="none,lz4,zstd")
    ap.add_argument("--bench-args", default="")
    a = ap.parse_args()
    print(f"binary {BIN}; {a.records} records of 1 KiB, 64 producers, linger 5 ms, 6 partitions, rf 3")
    for codec in a.codecs.split(","):
        size, rate = run(codec, a.records, a.bench_args.split())
        print(f"{codec}: data directories {size / 2**20:.1f} MiB; {rate.strip()}")


if __name__ == "__main__":
    main()
