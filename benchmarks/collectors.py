#!/usr/bin/env python3
"""The collector matrix as a table: does the balloon hold on every JDK and collector?

For each (JDK, collector) pair it runs the acceptance scenario of tests/scenario.py (a 1 GiB
pre-touched heap, 200 MiB live, churning 100 MiB/s, `heapballoon run`, target 512M, status
sampled every 2 s for 60 s, then live 700 MiB and back to 200 MiB) and prints one markdown row.
With ``--baseline-rev REV`` every pair also runs with the agent built from that git revision
(the daemon stays this tree's), interleaved in the same run, so the two columns share the
machine's noise.

    .venv/bin/python benchmarks/collectors.py [--parallel 3] [--baseline-rev 29928c4] [--pairs 17:Serial,21:G1]

Needs root (pagemap) and `make jdks` (JDK 21 and 25).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import jdks  # noqa: E402
import scenario  # noqa: E402
from hbtest import DaemonFactory, JVMFactory  # noqa: E402

_ENV_LOCK = threading.Lock()


def run_pair(jdk: int, gc: str, agent_src: str | None, workdir: Path) -> tuple[scenario.Outcome, int]:
    """One scenario; returns the outcome and the number of give-backs (pressure_release events)."""
    daemons, apps = DaemonFactory(workdir), JVMFactory()
    try:
        d = daemons.start()
        # `heapballoon run` reads HEAPBALLOON_AGENT_SRC from its environment, copied when the
        # process starts: set it (or clear it) and start under one lock, so pairs started at
        # the same moment in other threads never see another variant's agent.
        with _ENV_LOCK:
            saved = os.environ.pop("HEAPBALLOON_AGENT_SRC", None)
            if agent_src:
                os.environ["HEAPBALLOON_AGENT_SRC"] = agent_src
            try:
                j = apps.run(d, heap="1g", live_mib=200, churn_mib_per_s=100, gc=None, java_bin=jdks.java(jdk),
                             extra_jvm=(*jdks.GC_FLAGS[gc], "-XX:+AlwaysPreTouch"), name=f"jdk{jdk}-{gc}")
            finally:
                os.environ.pop("HEAPBALLOON_AGENT_SRC", None)
                if saved is not None:
                    os.environ["HEAPBALLOON_AGENT_SRC"] = saved
        try:
            out = scenario.run(d, j, jdk, gc)
        except AssertionError as err:
            out = scenario.Outcome(jdk, gc, notes=[str(err)])
        status = d.jvm(j.pid) or {}
        return out, status.get("events", {}).get("pressure_release", 0)
    finally:
        apps.teardown()
        for dm in daemons.daemons:
            daemons.stop(dm)


def row(label: str, out: scenario.Outcome, releases: int) -> str:
    w = out.window
    if not w:
        return f"| {out.jdk} | {out.gc} | {label} | no samples: {'; '.join(out.notes)[:80]} | | | | | | |"

    def span(values):
        lo, hi = min(values) >> 20, max(values) >> 20
        return f"{lo}" if lo == hi else f"{lo} to {hi}"

    reinflate = f"{out.reinflate_s:.0f} s" if out.reinflate_s is not None else "no"
    return (f"| {out.jdk} | {out.gc} | {label} | {span([s.balloon_bytes for s in w])} | "
            f"{span([s.balloon_max_bytes for s in w])} | {span([s.reclaimed_bytes for s in w])} | "
            f"{span([s.live_bytes for s in w])} | {out.flaps_in_window()} / {releases} | "
            f"{'yes' if out.gave_way and not out.oom else 'OOM' if out.oom else 'no'} | {reinflate} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=3, help="pairs run at once (default 3)")
    p.add_argument("--pairs", help="comma-separated JDK:collector pairs (default: the whole matrix)")
    p.add_argument("--baseline-rev", help="also run every pair with the agent of this git revision")
    args = p.parse_args()
    pairs = jdks.MATRIX
    if args.pairs:
        pairs = [(int(x.split(":")[0]), x.split(":")[1]) for x in args.pairs.split(",")]
    missing = sorted({jdk for jdk, _ in pairs if jdks.java(jdk) is None})
    if missing:
        print(f"error: {jdks.missing(missing[0])}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hb-collectors-"))
    variants: list[tuple[str, str | None]] = [("this tree", None)]
    if args.baseline_rev:
        tree = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline_rev],
                       check=True, capture_output=True)
        variants.append((f"agent @ {args.baseline_rev}", str(tree / "agent")))
    jobs = [(jdk, gc, label, src) for jdk, gc in pairs for label, src in variants]  # interleaved
    results = {}
    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = {pool.submit(run_pair, jdk, gc, src, Path(tempfile.mkdtemp(dir=work))): (jdk, gc, label)
                       for jdk, gc, label, src in jobs}
            for fut, key in futures.items():
                results[key] = fut.result()
                print(f"done: {key}", file=sys.stderr, flush=True)
    finally:
        if args.baseline_rev:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")],
                           capture_output=True)
    print("| JDK | collector | agent | balloon MiB, 20–60 s | balloon_max MiB | reclaimed MiB | live_bytes reported MiB "
          "| flaps / give-backs | live 700 MiB: gave way, no OOM | re-inflated after 700 → 200 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for jdk, gc, label, _ in jobs:
        print(row(label, *results[(jdk, gc, label)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
