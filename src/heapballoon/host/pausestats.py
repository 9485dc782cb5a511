"""VM pauses measured in parts, and the figures hostd reports about them.

This module owns the *pause breakdown*: one :class:`PauseSample` per pause (QMP ``stop``
round trip, the zero re-check, the punches, QMP ``cont`` round trip, and the whole pause from
sending ``stop`` to the ``cont`` reply; and ``guest``, the same pause by QEMU's own event
timestamps), a per-VM rolling window of them (:class:`PauseStats`)
and its summary: p50/p99/max of each part (``pause_breakdown_ms`` in ``status --json`` and
hostd's Prometheus metrics) plus running totals (pause per GiB reclaimed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

PARTS = ("stop", "check", "punch", "cont", "total", "guest")
GIB = 1 << 30
WINDOW_PAUSES = 4096


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


@dataclass(frozen=True)
class PauseSample:
    """One VM pause, in milliseconds (``total_ms`` includes time between the parts).
    ``guest_ms``: from QEMU's ``STOP`` event to its ``RESUME`` event, by QEMU's timestamps —
    how long the guest itself was stopped, without hostd's side of the QMP round trips
    (0.0 when the QMP client does not keep events)."""

    stop_ms: float
    check_ms: float
    punch_ms: float
    cont_ms: float
    total_ms: float
    pages: int = 0  # pages re-checked under this pause
    guest_ms: float = 0.0

    def part(self, name: str) -> float:
        return getattr(self, f"{name}_ms")


def breakdown(samples: Iterable[PauseSample]) -> dict[str, dict[str, float]]:
    """``{part: {"p50", "p99", "max"}}`` over ``samples`` (zeros when there are none)."""
    ss = list(samples)
    out = {}
    for name in PARTS:
        vals = [s.part(name) for s in ss]
        out[name] = {"p50": round(percentile(vals, 50), 3), "p99": round(percentile(vals, 99), 3),
                     "max": round(max(vals, default=0.0), 3)}
    return out


class PauseStats:
    """A VM's recent pauses (window) and running totals since hostd started."""

    def __init__(self, window: int = WINDOW_PAUSES) -> None:
        self.samples: deque[PauseSample] = deque(maxlen=window)
        self.pauses = 0
        self.pause_ms_sum = 0.0
        self.guest_ms_sum = 0.0
        self.punched_bytes = 0

    def add(self, samples: Iterable[PauseSample], punched_bytes: int = 0) -> None:
        for s in samples:
            self.samples.append(s)
            self.pauses += 1
            self.pause_ms_sum += s.total_ms
            self.guest_ms_sum += s.guest_ms
        self.punched_bytes += punched_bytes

    def totals(self) -> list[float]:
        return [s.total_ms for s in self.samples]

    def breakdown(self) -> dict[str, dict[str, float]]:
        return breakdown(self.samples)

    @property
    def pause_ms_per_gib(self) -> float:
        """Pause time per GiB punched, over hostd's lifetime (0.0 before anything was punched)."""
        return self.pause_ms_sum / (self.punched_bytes / GIB) if self.punched_bytes else 0.0

    @property
    def guest_ms_per_gib(self) -> float:
        """The same by QEMU's STOP → RESUME timestamps (0.0 without them)."""
        return self.guest_ms_sum / (self.punched_bytes / GIB) if self.punched_bytes else 0.0
