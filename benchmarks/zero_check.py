#!/usr/bin/env python3
"""What the work under a VM pause costs per GiB on this machine: the zero check and the punch.

Run: `.venv/bin/python benchmarks/zero_check.py [--mib 512] [--rounds 3]` (no root, no QEMU)

A memfd of ``--mib`` dirty zero pages, mapped read-write by a "QEMU" mapping that touched every
page (as a running guest's RAM is), then per round:

* zero check, ``preadv`` 1 MiB into a buffer + ``bytes ==`` (the first engine's check);
* zero check in place, ``memcmp`` on a populated read-only mapping (linux.memview, the short
  engine's check), after ``MADV_POPULATE_READ`` (which is not timed: the short engine does it
  before the pause);
* punch 16 MiB at a time (``fallocate(PUNCH_HOLE)``) with only the "QEMU" mapping, and with
  the "QEMU" mapping plus hostd's populated view (what the short engine punches).

Printed: milliseconds per GiB, median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from heapballoon.linux.memview import MemView, punch_holding_gil  # noqa: E402

MIB, GIB = 1 << 20, 1 << 30
PIECE = 16 * MIB


def memfd(size: int) -> tuple[int, object]:
    """A memfd of dirty zeros, every page written through a shared mapping (like QEMU's)."""
    import mmap

    fd = os.memfd_create("hb-bench")
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    for off in range(0, size, 4096):
        m[off] = 0
    return fd, m


def per_gib(seconds: float, size: int) -> float:
    return seconds * 1000 * GIB / size


def one_round(size: int) -> dict[str, float]:
    out = {}
    fd, qemu_map = memfd(size)
    buf, zero = bytearray(MIB), bytes(MIB)
    t = time.perf_counter()
    for off in range(0, size, MIB):
        os.preadv(fd, [buf], off)
        assert buf == zero
    out["check: preadv + bytes == (ms/GiB)"] = per_gib(time.perf_counter() - t, size)
    view = MemView(fd, size)
    view.populate(0, size)
    t = time.perf_counter()
    assert view.is_zero(0, size)
    out["check: memcmp in place (ms/GiB)"] = per_gib(time.perf_counter() - t, size)
    half = size // 2
    t = time.perf_counter()
    for off in range(0, half, PIECE):
        punch_holding_gil(fd, off, PIECE)
    out["punch, QEMU mapping + hostd view (ms/GiB)"] = per_gib(time.perf_counter() - t, half)
    view.drop(half, size - half)
    t = time.perf_counter()
    for off in range(half, size, PIECE):
        punch_holding_gil(fd, off, PIECE)
    out["punch, QEMU mapping only (ms/GiB)"] = per_gib(time.perf_counter() - t, size - half)
    view.close()
    qemu_map.close()
    os.close(fd)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rounds = [one_round(args.mib * MIB) for _ in range(args.rounds)]
    print(f"| what ({args.mib} MiB, median of {args.rounds}) | ms per GiB | GB/s |")
    print("|---|---|---|")
    for key in rounds[0]:
        ms = statistics.median(r[key] for r in rounds)
        print(f"| {key.split(' (')[0]} | {ms:.0f} | {GIB / (ms / 1000) / 1e9:.1f} |")


if __name__ == "__main__":
    main()
