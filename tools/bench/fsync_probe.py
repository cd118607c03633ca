#!/usr/bin/env python3
"""How the disk under a directory answers fdatasync, the floor under every durable write of
ledgerd: appends of `--bytes` followed by fdatasync for `--seconds`, then the latency
percentiles and the stalls (fdatasync calls over 20 ms). A benchmark run on a disk that stalls
shows those stalls as its tail latency; run this before and after a benchmark to tell the two
apart.

With `--delete-mb N`, another thread meanwhile writes a file of N MiB every `--delete-every`
seconds, syncs it, waits a second and deletes it -- as RocksDB deletes an obsolete write-ahead
log or table file -- and the probe also reports the slowest fdatasync in the second after each
deletion. `--delete-chunk-mb C` deletes it the way ledgerd does (RocksDB's delete scheduler): cut
C MiB off its end at a time (ftruncate, fsync), at `--delete-rate-mb` MiB/s (default 256, as
ledgerd), then unlink the last chunk. On a file system
mounted with `discard` a whole-file unlink makes the next journal commit discard all of it.

  tools/bench/fsync_probe.py [--dir DIR] [--seconds 10] [--bytes 8192]
                             [--delete-mb N [--delete-every 2] [--delete-chunk-mb C]
                              [--delete-rate-mb R]]
"""
import argparse
import os
import tempfile
import threading
import time


def delete_file(path, size, chunk, pause):
    if chunk > 0:
        fd = os.open(path, os.O_WRONLY)
        try:
            while size > chunk:
                size -= chunk
                os.ftruncate(fd, size)
                os.fsync(fd)  # as RocksDB's delete scheduler does after each cut
                time.sleep(pause)
        finally:
            os.close(fd)
    os.unlink(path)


def deleter(a, stop, deletions):
    block = os.urandom(1 << 20)
    while not stop.wait(max(0.0, a.delete_every - 1)):
        fd, path = tempfile.mkstemp(dir=a.dir, prefix=".fsync-probe-big-")
        try:
            for _ in range(a.delete_mb):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        if stop.wait(1):
            os.unlink(path)
            return
        deletions.append(time.monotonic())
        delete_file(path, a.delete_mb << 20, a.delete_chunk_mb << 20,
                    a.delete_chunk_mb / a.delete_rate_mb if a.delete_rate_mb > 0 else 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=".")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--delete-mb", type=int, default=0)
    ap.add_argument("--delete-every", type=float, default=2)
    ap.add_argument("--delete-chunk-mb", type=int, default=0)
    ap.add_argument("--delete-rate-mb", type=float, default=256)
    a = ap.parse_args()
    stop = threading.Event()
    deletions = []
    thread = None
    if a.delete_mb > 0:
        thread = threading.Thread(target=deleter, args=(a, stop, deletions))
        thread.start()
    fd, path = tempfile.mkstemp(dir=a.dir, prefix=".fsync-probe-")
    timed = []  # (monotonic start, seconds)
    try:
        buf = b"x" * a.bytes
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            os.write(fd, buf)
            start = time.monotonic()
            t = time.perf_counter()
            os.fdatasync(fd)
            timed.append((start, time.perf_counter() - t))
            if thread is not None:
                time.sleep(0.001)  # leave the deleting thread the interpreter
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        os.close(fd)
        os.unlink(path)
    lat = sorted(x for _, x in timed)
    n = len(lat)
    stalls = [x for x in lat if x > 0.020]

    def pct(p):
        return lat[min(n - 1, int(p / 100 * n))] * 1e3

    print(f"fdatasync after {a.bytes}-byte appends in {a.dir}: {n / a.seconds:.0f}/s, "
          f"p50 {pct(50):.3f} ms, p99 {pct(99):.3f} ms, p99.9 {pct(99.9):.3f} ms, "
          f"max {lat[-1] * 1e3:.1f} ms; stalls > 20 ms: {len(stalls)} "
          f"({sum(stalls) * 1e3:.0f} ms in all)")
    if deletions:
        how = (f"{a.delete_chunk_mb} MiB at a time" if a.delete_chunk_mb > 0 else "unlinked whole")
        worst = []
        for d in deletions:
            window = [x for s, x in timed if d - 0.01 <= s <= d + 1.0]
            worst.append(max(window) * 1e3 if window else 0.0)
        print(f"slowest fdatasync in the second after each deletion of {a.delete_mb} MiB ({how}): "
              + ", ".join(f"{w:.1f}" for w in worst) + " ms")


if __name__ == "__main__":
    main()
