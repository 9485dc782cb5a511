#!/usr/bin/env python3
"""How fast a JVM's pre-touch takes memory, next to the policy's tick (issue 16).

A JVM started with -Xms = -Xmx and -XX:+AlwaysPreTouch (the experiment's production config)
touches its whole heap before main() runs. Under a memory cgroup without swap, whatever the
balloons have not taken by then is an OOM kill. This times ``java -Xms<H> -Xmx<H> -version``
with and without -XX:+AlwaysPreTouch, ROUNDS times each, interleaved; the median difference
is the pre-touch, and heap / that is the rate a policy would have to beat after the fact.

    .venv/bin/python benchmarks/pretouch.py [--heaps 384,1024] [--rounds 7] [--java PATH]

Run it under `flock /work/heavy.lock` on a shared machine. No root needed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"


def once(java: str, heap_mib: int, pretouch: bool) -> float:
    cmd = [java, f"-Xms{heap_mib}m", f"-Xmx{heap_mib}m", "-XX:+UseG1GC"]
    if pretouch:
        cmd.append("-XX:+AlwaysPreTouch")
    t0 = time.monotonic()
    subprocess.run(cmd + ["-version"], check=True, capture_output=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heaps", default="384,1024", help="heap sizes in MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--java", default=JAVA)
    args = ap.parse_args()
    print("| heap MiB | start without pre-touch s (median) | with s (median) | pre-touch s | MiB/s |")
    print("|---|---|---|---|---|")
    for heap in (int(h) for h in args.heaps.split(",")):
        plain, touched = [], []
        for _ in range(args.rounds):
            plain.append(once(args.java, heap, False))
            touched.append(once(args.java, heap, True))
        p, t = statistics.median(plain), statistics.median(touched)
        print(f"| {heap} | {p:.3f} | {t:.3f} | {t - p:.3f} | {heap / max(t - p, 1e-3):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
