"""The balloon holds on every HotSpot collector and JDK (issues 6 and 15, every pair).

Each pair runs the scenario of scenario.py: a 1 GiB pre-touched heap, 200 MiB live, started with
`heapballoon run`, target 512M, sampled every 2 s for a minute. At the low rate (100 MiB/s) the
live set then grows to 700 MiB and shrinks back. At the high rate (1600 MiB/s, the live set
replaced every 2 s) the window is the test. Marked ``matrix``: `make test` runs these two at a
time, but a high-rate JVM runs alone (it takes two cores: an exclusive lock, which low-rate runs
share), and a rotating subset of the high-rate pairs runs each day (:func:`high_rate_pairs`),
every pair within ``ceil(len(MATRIX) / HIGH_RATE_PER_RUN)`` days.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time

import pytest

import jdks
import scenario
from hbtest import MIB, require_root

pytestmark = [pytest.mark.jvm, pytest.mark.matrix]
IDS = [f"jdk{j}-{g}" for j, g in jdks.MATRIX]
HIGH_RATE_PER_RUN = 3  # ~100 s each, alone on the machine: 4 put `make test` at 45-46 min
HIGH_RATE_LOCK = "/tmp/heapballoon-high-rate.lock"


def high_rate_pairs(run_id: int | None = None) -> list[tuple[int, str]]:
    """The high-rate pairs this run covers: HIGH_RATE_PER_RUN consecutive pairs of the matrix,
    starting at run_id × HIGH_RATE_PER_RUN (wrapping). run_id is $HEAPBALLOON_RUN_ID, else the
    day number, so consecutive days cover every pair; HEAPBALLOON_HIGH_RATE=all runs them all."""
    if os.environ.get("HEAPBALLOON_HIGH_RATE") == "all":
        return list(jdks.MATRIX)
    if run_id is None:
        run_id = int(os.environ.get("HEAPBALLOON_RUN_ID") or time.time() // 86400)
    n = len(jdks.MATRIX)
    start = run_id * HIGH_RATE_PER_RUN % n
    return [jdks.MATRIX[(start + i) % n] for i in range(HIGH_RATE_PER_RUN)]


def test_high_rate_rotation_covers_every_pair():
    days = math.ceil(len(jdks.MATRIX) / HIGH_RATE_PER_RUN)
    assert {p for day in range(days) for p in high_rate_pairs(day)} == set(jdks.MATRIX)


@contextlib.contextmanager
def machine(exclusive: bool):
    """A high-rate JVM keeps both cores busy: it runs alone (LOCK_EX); low-rate runs share (LOCK_SH)."""
    with open(HIGH_RATE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _why(out: scenario.Outcome, d, j) -> str:
    return (f"\nallocation {out.alloc_mib_per_s} MiB/s, re-inflated in {out.reinflate_s} s\n{out.table()}"
            f"\nnotes: {out.notes}\nstatus: {out.final_status}"
            f"\n--- daemon log tail ---\n{d.log()[-2500:]}\n--- JVM stderr ---\n{j.stderr()[-2500:]}")


def check_window(out: scenario.Outcome, gc: str, why: str) -> None:
    """Issue 15's criteria for the sampled minute, at any rate."""
    assert out.reported_gc == jdks.REPORTED_GC.get(gc, gc), why
    assert out.window, why
    # The largest balloon it can hold: most of the heap for region collectors (the headroom the
    # allocation rate needs comes off it), the old generation otherwise.
    floor_mib = 300 if gc in ("Serial", "Parallel") else 448
    assert min(s.balloon_max_bytes for s in out.window) >= floor_mib * MIB, why
    # From 20 s to 60 s: every sample holds ≥ 90 % of min(512 MiB, balloon_max), ≥ 85 % reclaimed.
    assert out.balloon_ratio_min() >= 0.90, why
    assert out.reclaimed_ratio_min() >= 0.85, why
    assert out.flaps_in_window() == 0 and out.samples[-1].flaps == 0, why
    assert out.soft_cleared() == 0, why
    # The live estimate in the window (by then a complete collection has run, or a young one bounds
    # it as closely): within −10 % / +25 % of 200 MiB.
    low, high = out.live_error_range()
    assert 0.90 <= low and high <= 1.25, why


# Known failures of the GC-cost bar at 100 MiB/s, by collector: only that bar turns into an xfail
# (non-strict: still run and reported); every other check of the pair stays an assertion. Issue 15
# stays open until this is empty.
KNOWN_GC_COST_FAILURES: dict[str, str] = {
    # Empty since 2026-12-05. Parallel was here (+5.4 to +8.9 points): every System.gc() and the JVM's first
    # three full collections compacted fully and slid the chunks; `heapballoon run` now starts Parallel with
    # -XX:-UseMaximumCompactionOnSystemGC (and -XX:-ScavengeBeforeFullGC on JDK 17-21), and the agent takes
    # those first collections before the balloon: +1.6, +0.9, +0.1 points alone (docs/agent.md, "Parallel").
}


@pytest.mark.parametrize("jdk,gc", jdks.MATRIX, ids=IDS)
def test_balloon_holds_on_every_collector(daemons, apps, jdk, gc):
    java = jdks.require_java(jdk)
    require_root()
    with machine(exclusive=False):
        d = daemons.start()
        j = scenario.start(apps, d, java, jdks.GC_FLAGS[gc], f"jdk{jdk}-{gc}")
        try:
            out = scenario.run(d, j, jdk, gc)
        finally:
            j.stop()
    why = _why(out, d, j)
    print(why)
    check_window(out, gc, why)
    # What the balloon costs the collector at 100 MiB/s: GC CPU share (GC threads over the JVM's CPU,
    # measured by the agent) at most 5 points above the same JVM's before the target was set.
    s = out.final_status
    assert s.get("gc_cpu_share", -1) >= 0 and s.get("gc_cpu_share_no_balloon", -1) >= 0, why
    # Growing to 700 MiB live: the balloon gives way, no OutOfMemoryError; back to 200 MiB: it re-inflates.
    assert not out.oom, why
    assert out.gave_way, why
    assert out.reinflate_s is not None and out.reinflate_s <= scenario.REINFLATE_WITHIN_S, why
    assert out.data_errors == 0, why
    # Parallel's estimate comes from the JVM's own perf data (the accurate path), not the agent's fallback.
    assert (s.get("promotion_reserve_bytes", 0) > 0) == (gc == "Parallel"), why
    assert "promotion estimate is not readable" not in j.stderr(), why
    # `heapballoon run` started Parallel without the full compactions that slide the balloon (agent/launch.py):
    # the agent says when it finds either option on.
    assert "-XX:+UseMaximumCompactionOnSystemGC" not in j.stderr() and "-XX:+ScavengeBeforeFullGC" not in j.stderr(), why
    extra = s["gc_cpu_share"] - s["gc_cpu_share_no_balloon"]
    if extra > 0.05 and gc in KNOWN_GC_COST_FAILURES:  # every other check above still holds for the pair
        pytest.xfail(f"{KNOWN_GC_COST_FAILURES[gc]} (this run: +{extra * 100:.1f} points)")
    assert extra <= 0.05, why


# Known failures of the product at the high rate, still run and reported (xfail, not strict: a pass
# shows as XPASS). Each names what was seen; issue 15 stays open until this is empty.
KNOWN_HIGH_RATE_FAILURES = {
    # The JVM's own failure, not the balloon's: with no agent at all, JDK 25.0.2's Shenandoah at this rate in a
    # 1 GiB heap fails allocations with 170 MiB free and degenerates "Outside of Cycle" (26 times in 35 s alone,
    # benchmarks/shenandoah_no_balloon.py; JDK 21: 1), and a degenerated collection that handles an allocation
    # failure clears every soft reference. No headroom prevents it (docs/agent.md, "What is not covered").
    (25, "Shenandoah"): "JDK 25 Shenandoah degenerates on its own at 1.6 GiB/s (no agent: 26 allocation-failure "
                        "degenerated collections in 35 s), and each clears every soft reference: 5 soft_cleared "
                        "in 60 s on 2026-12-04 (16:47), with a balloon of 16 MiB and with a learned headroom of 190 MiB",
    # (17, "Parallel") was here until 2026-12-05: full compactions every ~20 s slid the 400 MiB balloon (GC CPU
    # share 18.4 % against 3.4 % in CI; the cost guard gave a quarter back, balloon_max 264-272 MiB). With the
    # options `heapballoon run` now gives Parallel (agent/launch.py): 9.6, 10.2 and 9.1 % against 2.7-3.2 %
    # (JDK 17, 21, 25, alone), pause p99 54-147 ms.
}


@pytest.mark.parametrize("jdk,gc", jdks.MATRIX, ids=IDS)
def test_balloon_holds_at_a_high_allocation_rate(daemons, apps, jdk, gc, request):
    chosen = high_rate_pairs()
    print(f"high-rate pairs this run: {', '.join(f'jdk{j}-{g}' for j, g in chosen)}")
    if (jdk, gc) not in chosen:
        pytest.skip("high-rate pair not in this run's rotating subset (HEAPBALLOON_HIGH_RATE=all runs every pair)")
    if (jdk, gc) in KNOWN_HIGH_RATE_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_HIGH_RATE_FAILURES[(jdk, gc)], strict=False))
    java = jdks.require_java(jdk)
    require_root()
    rate = scenario.RATES["high"]
    with machine(exclusive=True):
        d = daemons.start()
        j = scenario.start(apps, d, java, jdks.GC_FLAGS[gc], f"jdk{jdk}-{gc}-high", rate)
        try:
            out = scenario.run(d, j, jdk, gc, rate)
        finally:
            j.stop()
    why = _why(out, d, j)
    print(why)
    check_window(out, gc, why)
    assert not out.oom, why
    assert out.data_errors == 0, why
