#!/usr/bin/env python3
"""What the producer's compression saves at rest: for each codec, a fresh three-node
cluster (`flotilla dev`), `flotilla bench produce` of the same records (the bench's
repeating 1 KiB value, or --random-values), then the bytes in the three data directories
once RocksDB has flushed its memtables (the nodes are stopped gracefully first).

Usage: scripts/compression_size.py [--records 100000] [--codecs none,lz4,zstd]
                                   [--bench-args='--random-values']
FLOTILLA names the binary (default: the release build); the cluster is started as
scripts/bench_matrix.py starts it.
"""
import argparse, os, subprocess

from bench_matrix import BIN, BOOT, dev_cluster


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
    with dev_cluster(data):
        bench = [BIN, "--bootstrap", BOOT, "bench", "produce", "--topic", "c", "--create", "--partitions", "6",
                 "--producers", "64", "--records", str(records), "--warmup-secs", "0", "--linger-ms", "5",
                 "--compression", codec] + extra
        out = subprocess.run(bench, capture_output=True, text=True)
        rate = next((l for l in out.stdout.splitlines() if "acknowledged in" in l), out.stderr.strip()[-200:])
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
