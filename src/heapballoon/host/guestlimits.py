"""The limits hostd holds each guest to (docs/protocol.md, "Limits", Guest ↔ hostd).

This module owns one VM's :class:`GuestGuard`: what a guest may cost hostd, kept across
reconnections of its channel (a guest that hangs up gets no fresh budget):

* **work budgets** (:class:`TokenBucket`): pages of ``pages add`` verified per second (each
  allocated page is read and compared with zeros, ~1 s of CPU per 4 GiB), ranges of any
  ``pages`` message handled per second (each costs the event loop some microseconds), and
  bytes of lines read per second (decoding). A guest over budget is simply not read until the
  budget has refilled: its socket fills and it waits.
* **bad lines**: counted by the one counter every socket uses (:class:`heapballoon.transport.BadLines`,
  ``MAX_BAD_LINES`` within ``BAD_LINES_WINDOW_S`` drop the connection; valid lines in between
  do not reset the count).
* **logging**: a guest's faults are logged once, then counted (:meth:`GuestGuard.note`):
  at most one line per kind per ``LOG_REPEAT_S`` with how many were not logged.
* **its own worker thread** (:attr:`GuestGuard.executor`) for the reclaim work of its reports,
  so one guest's scans never occupy the thread pool that status and the policy use, nor
  another VM's reclaim.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from heapballoon.transport import BadLines
from heapballoon.units import PAGE_BYTES

log = logging.getLogger("heapballoon.hostd")

ADD_PAGES_PER_S = (1 << 30) // PAGE_BYTES  # pages add: 1 GiB a second verified (~25 % of a core)
ADD_PAGES_BURST = (1 << 30) // PAGE_BYTES
RANGES_PER_S = 65536  # ranges of pages messages handled a second (one full message)
RANGES_BURST = 2 * 65536
BYTES_PER_S = 4 << 20  # bytes of lines read a second (decoding costs the event loop ~10 ms/MiB)
BYTES_BURST = 8 << 20
LOG_REPEAT_S = 60.0  # a guest fault of one kind is logged at most once in this long
RECONNECT_AFTER_FAULT_S = 5.0  # a connection dropped for a fault: wait this long to reconnect


class TokenBucket:
    """``rate_per_s`` units a second, up to ``burst`` saved. :meth:`charge` takes units now
    (going into debt if need be) and says how long to wait before doing the work, so the work
    done by time t is never more than ``burst + rate_per_s * t``."""

    def __init__(self, rate_per_s: float, burst: float, clock=time.monotonic) -> None:
        self.rate_per_s, self.burst, self.clock = rate_per_s, burst, clock
        self.tokens = burst
        self._t = clock()

    def charge(self, units: float) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate_per_s)
        self._t = now
        self.tokens -= units
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate_per_s


class GuestGuard:
    """One VM's limits and counters (owned by hostd's event loop), kept while the VM is known."""

    def __init__(self, name: str, clock=time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self.add_pages = TokenBucket(ADD_PAGES_PER_S, ADD_PAGES_BURST, clock)
        self.ranges = TokenBucket(RANGES_PER_S, RANGES_BURST, clock)
        self.bytes_in = TokenBucket(BYTES_PER_S, BYTES_BURST, clock)
        self.bad_lines = BadLines(clock)  # kept across reconnections, as the budgets are
        self._logged: dict[str, float] = {}  # kind → when last logged
        self._unlogged: collections.Counter[str] = collections.Counter()
        self.faults = 0  # connections dropped for a fault (bad lines, oversized line, stall)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hostd-reclaim")
        return self._executor

    def bad_line(self) -> bool:
        """Count one bad line; True when the connection must be dropped."""
        return self.bad_lines.add()

    def note(self, kind: str, fmt: str, *args, level: int = logging.WARNING) -> None:
        """Log a guest fault of ``kind`` the first time and then at most once per LOG_REPEAT_S,
        saying how many of that kind were not logged in between."""
        now = self.clock()
        last = self._logged.get(kind)
        if last is not None and now - last < LOG_REPEAT_S:
            self._unlogged[kind] += 1
            return
        self._logged[kind] = now
        more = self._unlogged.pop(kind, 0)
        log.log(level, "VM %s: " + fmt + ("" if not more else f" ({more} more not logged since)"),
                self.name, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
