#!/usr/bin/env python3
"""How the disk under a directory answers fdatasync, the floor under every durable write of
ledgerd: appends of `--bytes` followed by fdatasync for `--seconds`, then the latency
percentiles and the stalls (fdatasync calls over 20 ms). A benchmark run on a disk that stalls
shows those stalls as its tail latency; run this before and after a benchmark to tell the two
apart.

  tools/bench/fsync_probe.py [--dir DIR] [--seconds 10] [--bytes 8192]
"""
import argparse
import os
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=".")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--bytes", type=int, default=8192)
    a = ap.parse_args()
    fd, path = tempfile.mkstemp(dir=a.dir, prefix=".fsync-probe-")
    try:
        buf = b"x" * a.bytes
        lat = []
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            os.write(fd, buf)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    n = len(lat)
    stalls = [x for x in lat if x > 0.020]

    def pct(p):
        return lat[min(n - 1, int(p / 100 * n))] * 1e3

    print(f"fdatasync after {a.bytes}-byte appends in {a.dir}: {n / a.seconds:.0f}/s, "
          f"p50 {pct(50):.3f} ms, p99 {pct(99):.3f} ms, p99.9 {pct(99.9):.3f} ms, "
          f"max {lat[-1] * 1e3:.1f} ms; stalls > 20 ms: {len(stalls)} "
          f"({sum(stalls) * 1e3:.0f} ms in all)")


if __name__ == "__main__":
    main()
