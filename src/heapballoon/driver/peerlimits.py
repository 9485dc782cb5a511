"""Limits the driver holds every peer to (docs/protocol.md, "Limits"): pure bookkeeping, no I/O.

* :class:`LogBudget`: a few log lines of a kind per peer and minute, then a count.
* :class:`TokenBucket`: a message (or work) rate with a burst.
* :class:`Outbox`: what the tick sends one agent, sent by that agent's own task, so an agent
  that stops reading holds nobody but itself (newest target wins; at most one waiting).
"""

from __future__ import annotations

import asyncio
import logging
import time

from heapballoon import protocol, transport
from heapballoon.errors import PeerStalled


class LogBudget:
    """At most ``per_window`` log lines of one kind from one peer per ``window_s``; the rest are
    counted, and the next line allowed says how many were not logged."""

    def __init__(self, per_window: int, window_s: float, clock=time.monotonic) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self.clock = clock
        self.start = clock()
        self.used = 0
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log this one, how many were suppressed before it)."""
        now = self.clock()
        if now - self.start >= self.window_s:
            self.start, self.used = now, 0
        if self.used >= self.per_window:
            self.suppressed += 1
            return False, 0
        self.used += 1
        skipped, self.suppressed = self.suppressed, 0
        return True, skipped


class TokenBucket:
    """``rate_per_s`` units a second, up to ``burst`` saved; :meth:`take` says if a cost fits."""

    def __init__(self, rate_per_s: float, burst: float, clock=time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.last = clock()

    def take(self, cost: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class Outbox:
    """Messages for one agent, sent by a task of its own. ``put`` never waits: the newest
    target replaces one still waiting. A send that does not drain within the transport's
    timeout (:data:`transport.SEND_TIMEOUT_S`) aborts the connection: the agent is dropped
    (its session ends) and logged once."""

    def __init__(self, chan: transport.LineChannel, pid: int, log: logging.Logger) -> None:
        self.chan = chan
        self.pid = pid
        self.log = log
        self.waiting: protocol.Message | None = None
        self._ready = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    def put(self, msg: protocol.Message) -> None:
        self.waiting = msg
        self._ready.set()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            msg, self.waiting = self.waiting, None
            if msg is None:
                continue
            try:
                await self.chan.send(msg)
            except PeerStalled as err:
                self.log.warning("agent pid %d dropped: %s", self.pid, err)
                return
            except (ConnectionError, OSError) as err:
                self.log.warning("could not send to agent pid %d: %s; dropped it", self.pid, err)
                self.chan.abort()
                return

    def close(self) -> None:
        self.task.cancel()
