"""The collector acceptance scenario (issue 6), shared by the matrix test and the benchmark.

One JVM, ``-Xms1g -Xmx1g -XX:+AlwaysPreTouch``, 200 MiB live, churning 100 MiB/s, started with
``heapballoon run`` on a given JDK and collector; target 512M; ``status --json`` sampled every
2 s for 60 s; then the live set grows to 700 MiB and shrinks back to 200 MiB. ``run`` only
measures and returns an :class:`Outcome`; the test asserts on it, the benchmark tabulates it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from hbtest import MIB, rss_bytes, run_cli, wait_for

TARGET_BYTES = 512 * MIB
SAMPLE_EVERY_S = 2.0
WINDOW_S = (20.0, 60.0)
GROWN_LIVE_MIB = 700
REINFLATE_WITHIN_S = 30.0


@dataclass(frozen=True)
class Sample:
    t_s: float
    balloon_bytes: int
    reclaimed_bytes: int
    balloon_max_bytes: int
    live_bytes: int
    flaps: int

    @property
    def wanted_bytes(self) -> int:
        """What this sample must hold: min(512 MiB, balloon_max_bytes)."""
        return min(TARGET_BYTES, self.balloon_max_bytes)


@dataclass
class Outcome:
    jdk: int
    gc: str
    reported_gc: str = ""
    rss_before_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)
    gave_way: bool = False
    balloon_at_700_bytes: int = -1
    reinflate_s: float | None = None
    oom: bool = False
    data_errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def window(self) -> list[Sample]:
        return [s for s in self.samples if WINDOW_S[0] <= s.t_s <= WINDOW_S[1]]

    @property
    def level_bytes(self) -> int:
        """The level the balloon must hold: min(512 MiB, the window's median balloon_max_bytes)."""
        return min(TARGET_BYTES, int(statistics.median(s.balloon_max_bytes for s in self.window)))

    def balloon_ratio_min(self) -> float:
        return min(s.balloon_bytes / max(1, s.wanted_bytes) for s in self.window)

    def reclaimed_ratio_min(self) -> float:
        return min(s.reclaimed_bytes / max(1, s.wanted_bytes) for s in self.window)

    def flaps_in_window(self) -> int:
        return self.samples[-1].flaps - self.samples[0].flaps if self.samples else 0


def _sample(daemon, pid: int, t0: float) -> Sample | None:
    j = daemon.jvm(pid)
    if j is None:
        return None
    return Sample(round(time.monotonic() - t0, 1), j["balloon_bytes"], j["reclaimed_bytes"], j["balloon_max_bytes"],
                  j["live_bytes"], j["flaps"])


def run(daemon, jvm, jdk: int, gc: str) -> Outcome:
    """Drive the scenario against a JVM already started under ``daemon``; never asserts."""
    out = Outcome(jdk, gc)
    s = wait_for(lambda: daemon.jvm(jvm.pid), 40, 0.2, what=f"JVM {jvm.pid} registered")
    out.reported_gc = s["gc"]
    wait_for(lambda: jvm.last().get("live_mib") == 200 and jvm.last().get("allocated_mib", 0) > 1500,
             90, 0.2, what="application warm-up")
    out.rss_before_bytes = rss_bytes(jvm.pid)

    run_cli("target", jvm.pid, "512M", sock=daemon.sock, check=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < WINDOW_S[1] + 0.5:
        if (sample := _sample(daemon, jvm.pid, t0)) is not None:
            out.samples.append(sample)
        next_at = t0 + len(out.samples) * SAMPLE_EVERY_S
        time.sleep(max(0.0, next_at - time.monotonic()))
    if not out.window:
        out.notes.append("no samples in the window")
        return out

    # The live set grows to 700 MiB: the balloon must give way, with no OutOfMemoryError.
    jvm.send(f"live {GROWN_LIVE_MIB}")
    try:
        wait_for(lambda: jvm.last().get("live_mib") == GROWN_LIVE_MIB or jvm.proc.poll() is not None, 90, 0.25,
                 what="live set grown to 700 MiB")
        heap_max = (daemon.jvm(jvm.pid) or {}).get("heap_max_bytes", 0)
        room = max(0, heap_max - GROWN_LIVE_MIB * MIB)
        gone = {"balloon_bytes": -1}  # the JVM left the daemon: it died (checked below)
        s = wait_for(lambda: (s := daemon.jvm(jvm.pid) or gone)["balloon_bytes"] <= room and s, 30, 0.25,
                     what="balloon gave way")
        out.gave_way = s is not gone
        out.balloon_at_700_bytes = s["balloon_bytes"]
    except AssertionError as err:
        out.notes.append(str(err))
    out.oom = jvm.proc.poll() is not None or "OutOfMemoryError" in jvm.stderr() or any(
        line.get("error") == "oom" for line in jvm.lines)
    if out.oom:
        return out

    # Back to 200 MiB: the balloon re-inflates to the level it held before.
    jvm.send("live 200")
    wait_for(lambda: jvm.last().get("live_mib") == 200, 30, 0.25, what="live set back to 200 MiB")
    t1 = time.monotonic()
    level = 0.9 * out.level_bytes
    try:
        wait_for(lambda: (daemon.jvm(jvm.pid) or {}).get("balloon_bytes", 0) >= level, REINFLATE_WITHIN_S + 30,
                 0.5, what="re-inflation")
        out.reinflate_s = round(time.monotonic() - t1, 1)
    except AssertionError as err:
        out.notes.append(str(err))

    checks = jvm.last().get("checks", 0)
    jvm.send("check")
    wait_for(lambda: jvm.last().get("checks", 0) > checks, 15, 0.25, what="a data check")
    out.data_errors = len(jvm.errors()) + int(jvm.last().get("errors", 0))
    return out
