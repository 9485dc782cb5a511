"""What the driver says about each tick: the summary line, per-JVM detail on change, and why a
node target cannot be met. Pure apart from the logger it is handed; no I/O of its own.

Log volume is bounded by design (docs/scale.md): the summary is one short line, logged when it
differs from the last one or every ``HEARTBEAT_TICKS`` ticks; a JVM's detail line is logged
at info only when its control state (connected, target, balloon, reclaimed, at MiB
resolution) changes, and every tick at debug level. A JVM's live set and committed heap move
with every collection, so they are in the debug lines and in ``status``, not in the info log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from heapballoon.driver import policy
from heapballoon.textsafe import log_text
from heapballoon.units import format_size

MIB = 1 << 20
HEARTBEAT_TICKS = 60


@dataclass(frozen=True)
class JvmDetail:
    """One JVM's control state as the log shows it (sizes at MiB resolution)."""

    pid: int
    name: str
    connected: bool
    target_mib: int
    balloon_mib: int
    reclaimed_mib: int
    # Shown, not compared: an agent reports its mode once the first target arrives, which
    # would log every JVM a second time as it registers.
    reclaim: str = field(compare=False)

    def line(self, live_bytes: int = -1, committed_bytes: int = -1) -> str:
        extra = "" if live_bytes < 0 else f" live={format_size(live_bytes)} committed={format_size(committed_bytes)}"
        return (f"pid {self.pid} {log_text(self.name, 64)} {'up' if self.connected else 'down'} target={self.target_mib}M "
                f"balloon={self.balloon_mib}M reclaimed={self.reclaimed_mib}M {self.reclaim}{extra}")


def jvm_detail(rec, target_bytes: int) -> JvmDetail:
    return JvmDetail(rec.pid, rec.name, rec.connected, target_bytes // MIB, rec.state.balloon_bytes // MIB,
                     rec.reclaimed_bytes // MIB, rec.state.reclaim)


@dataclass(frozen=True)
class Unmet:
    """What of a node target no JVM will hold, and why (``bytes`` 0: met, or no target)."""

    bytes: int = 0
    reason: str = ""
    # What makes the log repeat the warning: the shortfall in tenths of the target, and the
    # counts behind the reason (not the sizes in it, which move with every collection).
    key: tuple = ()


def unmet(node_target_bytes: int | None, targets: Mapping[int, int], records: Iterable) -> Unmet:
    """Compare the node target with the sum of the targets the split handed out, and say why
    the split fell short: no JVM, JVMs pinned by their own target, or no room for a balloon
    (the agent keeps live set + headroom (+¼ of it) free, in the old generation for Serial and
    Parallel, so a small heap may have none)."""
    if not node_target_bytes:
        return Unmet()
    short = node_target_bytes - sum(targets.values())
    if short <= 0:
        return Unmet()
    recs = [r for r in records if r.connected]
    if not recs:
        return Unmet(short, "no JVM is registered", (10 * short // node_target_bytes, 0))
    free = [r for r in recs if r.explicit_target_bytes is None]
    pinned = len(recs) - len(free)
    parts = []
    if pinned:
        parts.append(f"{pinned} JVM{'s' if pinned > 1 else ''} keep their own target")
    full = [r for r in free if r.balloon_max_bytes <= 0]
    room = sum(r.balloon_max_bytes for r in free)
    parts.append(f"the other {len(free)} JVMs can hold {format_size(room)} of balloon" if pinned
                 else f"the {len(free)} JVMs can hold at most {format_size(room)} of balloon")
    if full:
        r = min(full, key=lambda x: x.state.heap_max_bytes)
        where = "old generation" if r.hello.gc in ("Serial", "Parallel") else "heap"
        parts.append(f"{len(full)} have no room at all: the agent keeps the live set + 1.25 × headroom free "
                     f"and a balloon gets only the rest of the {where} (e.g. pid {r.pid}: {r.hello.gc}, heap max "
                     f"{format_size(r.state.heap_max_bytes)}, live {format_size(r.state.live_bytes)}, headroom "
                     f"{format_size(policy.agent_headroom_bytes(r.state.heap_max_bytes, r.state.headroom_bytes))})")
    return Unmet(short, "; ".join(parts), (10 * short // node_target_bytes, pinned, len(free), len(full)))


def node_summary(tick: int, records: list, node_target_bytes: int | None, short: Unmet, ksm: str) -> str:
    """The node part of a tick's summary line (``Ticker._tick_summary`` may append to it)."""
    up = sum(1 for r in records if r.connected)
    balloon = sum(r.state.balloon_bytes for r in records)
    reclaimed = sum(r.reclaimed_bytes for r in records)
    line = (f"jvms={up}/{len(records)} target={format_size(node_target_bytes or 0)} "
            f"balloon={format_size(balloon)} reclaimed={format_size(reclaimed)} ksm={ksm}")
    if short.bytes:
        line += f" unmet={format_size(short.bytes)}"
    return line


class TickLog:
    """Decides which of a tick's lines reach the log (see the module docstring)."""

    def __init__(self, log: logging.Logger, heartbeat_ticks: int = HEARTBEAT_TICKS) -> None:
        self.log = log
        self.heartbeat_ticks = heartbeat_ticks
        self.last_summary = ""
        self.last_logged_tick = 0
        self.details: dict[int, JvmDetail] = {}
        self.last_unmet = Unmet()

    def emit(self, tick: int, summary: str, details: Mapping[int, JvmDetail], short: Unmet,
             tick_ms: float, records: Iterable = ()) -> None:
        for pid, d in details.items():
            old = self.details.get(pid)
            if old is not None and old != d:
                self.log.info("%s", d.line())
        self.details = dict(details)
        if self.log.isEnabledFor(logging.DEBUG):
            for r in records:
                if r.pid in details:
                    self.log.debug("%s", details[r.pid].line(r.state.live_bytes, r.state.heap_committed_bytes))
        if short.key != self.last_unmet.key:
            if short.bytes:
                self.log.warning("node target cannot be met: %s short, because %s", format_size(short.bytes),
                                 short.reason)
            elif self.last_unmet.bytes:
                self.log.info("node target met (or lifted)")
            self.last_unmet = short
        if summary != self.last_summary or tick - self.last_logged_tick >= self.heartbeat_ticks:
            self.log.info("tick %d %s (%.1f ms)", tick, summary, tick_ms)
            self.last_summary = summary
            self.last_logged_tick = tick
