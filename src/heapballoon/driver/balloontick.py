"""The driver's ticker: deciding targets, then doing each tick's I/O.

This module owns what one tick of a driver (node or guest) does, in order
(:meth:`Ticker.step`): forget JVMs that are gone, let the policy engine tick, send each agent
the target :meth:`Ticker.tick` decides, verify every balloon through pagemap (in a worker
thread, :func:`_read_verifications`, a pure function of copies), steer KSM, and log the tick
(``driver.tickreport``). :class:`Ticker` owns the tick's own state (declared in its
``__init__``); it writes the verification figures of the JVM table's records. All of it is owned
by the event loop thread. The guest driver changes what a tick does through the constructor's
hooks (``node_target``, ``room_bytes``, ``verify_pagemap``), not by subclassing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from heapballoon import protocol
from heapballoon.driver import policy
from heapballoon.driver.ksmctl import KsmController
from heapballoon.driver.registry import JVMRecord, Registry
from heapballoon.driver.targetbook import TargetBook
from heapballoon.driver.tickreport import TickLog, Unmet, jvm_detail, node_summary, unmet
from heapballoon.driver.verify import Scan, steady_reclaimed_bytes, verify_step
from heapballoon.errors import KernelError
from heapballoon.linux import pagemap
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.driver")
DISCONNECTED_GRACE_S = 60.0
MOVE_GRACE_S = 1.5
REVERIFY_S = 10.0  # a settled, fully reclaimed balloon is read through pagemap this often
REVERIFY_SLACK_BYTES = 1 << 20  # "fully reclaimed": all but this much of the balloon
REAP_SWEEP_TICKS = 30


class Ticker:
    """The controller and the tick. Reads the JVM table (``registry``), the targets set by hand
    (``book``) and the policy; drops an agent through ``drop_agent``. Its own mutable state,
    owned by the event loop thread: ``ticks``, ``tick_ms``, ``tick_errors``, ``tick_log``,
    ``zero_pfn`` (read once at start) and ``reverify_s``."""

    def __init__(self, registry: Registry, book: TargetBook, *, procfs: ProcFS, ksmctl: KsmController,
                 clock, policy, reclaim_pref: str, drop_agent: Callable[[int, str], None],
                 verify_pagemap: bool = True, node_target: Callable[[], int | None] | None = None,
                 room_bytes: Callable[[JVMRecord], int] | None = None) -> None:
        self.registry = registry
        self.book = book
        self.procfs = procfs
        self.ksmctl = ksmctl
        self.clock = clock
        self.policy = policy  # an AutoPolicy (--policy auto), or None: targets are set by hand
        self.reclaim_pref = reclaim_pref
        self.drop_agent = drop_agent
        # Whether balloon pages are verified here through pagemap (the guest driver's report
        # way: no, the host acknowledges them).
        self.verify_pagemap = verify_pagemap
        self._node_target = node_target or (lambda: self.book.node_target_bytes)
        self._room_bytes = room_bytes or (lambda rec: rec.balloon_max_bytes)
        self.ticks = 0
        self.tick_ms = 0.0  # how long the last step() took
        self.tick_errors: set[str] = set()  # kinds of error a tick raised (each logged in full once)
        self.tick_log = TickLog(log)
        self.zero_pfn: int | None = None
        self.reverify_s = REVERIFY_S  # see verify_due

    # ------------------------------------------------------------------ policy

    def reclaim_mode(self, rec: JVMRecord) -> str:
        modes = rec.hello.reclaim_modes
        if self.reclaim_pref == "report":
            return "report"
        if self.reclaim_pref in ("auto", "direct") and "direct" in modes:
            return "direct"
        return "ksm"

    def node_target(self) -> int | None:
        """The node target the tick splits: the one set by hand (``target all``) by default; the
        guest driver's local law raises it (guest.locallaw)."""
        return self._node_target()

    def targets(self) -> dict[int, int]:
        connected = [r for r in self.registry if r.connected]
        if self.policy is not None:
            return self.policy.targets(connected)
        return policy.effective_targets(
            self.node_target(),
            {r.pid: r.explicit_target_bytes for r in connected},
            {r.pid: r.excess_bytes for r in connected},
            {r.pid: self.room_bytes(r) for r in connected},
        )

    def room_bytes(self, rec: JVMRecord) -> int:
        """Most a balloon may hold in this JVM. By default what its agent says it can hold (up
        to the maximum heap, or the old generation for Serial and Parallel), since the kernel
        frees balloon pages (direct or KSM) and a heap that grows to hold them costs nothing."""
        return self._room_bytes(rec)

    def unmet(self, targets: dict[int, int]) -> Unmet:
        """What of the node target the split could not hand out, and why."""
        return unmet(self.node_target(), targets, self.registry)

    def tick(self) -> list[tuple[JVMRecord, protocol.Target]]:
        """Decide which agents must be sent a new target. Pure: reads only the registry."""
        out = []
        for pid, target_bytes in self.targets().items():
            rec = self.registry.get(pid)
            want = protocol.Target(target_bytes=target_bytes, reclaim=self.reclaim_mode(rec))
            if rec.sent != want:
                out.append((rec, want))
        return out

    # ------------------------------------------------------------------ the loop

    def _reap(self) -> None:
        """Forget JVMs whose process is gone (or whose pid now belongs to another process).

        A connected agent's process cannot be gone: its exit closes the socket, which marks the
        record disconnected at once. So each tick checks the disconnected records, and every
        ``REAP_SWEEP_TICKS`` ticks all of them (a /proc read per JVM is most of an idle tick)."""
        now = self.clock()
        sweep = self.ticks % REAP_SWEEP_TICKS == 1
        for rec in self.registry:
            if rec.connected and not sweep:
                continue
            try:
                alive = self.procfs.starttime(rec.pid) == rec.starttime
            except KernelError:
                alive = False
            if not alive or (not rec.connected and now - rec.last_seen_s > DISCONNECTED_GRACE_S):
                self.registry.remove(rec.pid)
                log.info("forgot JVM pid=%d (%s)", rec.pid, "exited" if not alive else "gone quiet")
                if not alive:
                    self.book.forget(rec)

    async def _send_targets(self) -> None:
        """Hand each agent its new target. Never waits on an agent: each has an outbox sent by
        a task of its own (``peerlimits.Outbox``), so one that stops reading is dropped after
        the transport's send timeout and holds up no tick and no other agent."""
        for rec, want in self.tick():
            outbox = self.registry.outbox(rec.pid)
            if outbox is None:
                continue
            outbox.put(want)
            rec.sent = want

    async def _verify_all(self) -> None:
        """Count reclaimed balloon pages of every JVM through pagemap: the pagemap reads run in a
        worker thread as a pure function of (pid, start time, chunks, scan so far); the records
        are updated back here, on the event loop, which owns them. At most
        ``verify.MAX_VERIFY_PAGES_PER_TICK`` pages per agent a tick: a bigger balloon is read over
        several ticks. An agent whose verification raises is dropped, and the others go on.
        Off where ``verify_pagemap`` is False (the guest's report way)."""
        if not self.verify_pagemap:
            return
        now = self.clock()
        plans = [(rec.pid, rec.starttime, rec.state.chunks, rec.scan, rec.peak_bytes, rec.given_back_bytes)
                 for rec in self.registry
                 if rec.state.chunks and rec.hello.address_mode != "none"
                 and self.verify_due(rec, now)]
        for rec in self.registry:
            if not rec.state.chunks or rec.hello.address_mode == "none":
                rec.reclaimed_bytes, rec.balloon_pages, rec.released_pages, rec.scan = 0, 0, 0, None
        if not plans:
            return
        results = await asyncio.to_thread(_read_verifications, self.procfs, plans, self.zero_pfn)
        now = self.clock()
        for pid, chunks, v in results:
            rec = self.registry.get(pid)
            if rec is None or rec.state.chunks != chunks:
                continue  # gone, or its balloon changed while we read: the next tick counts it
            if isinstance(v, BaseException):
                rec.scan = None
                self.drop_agent(pid, f"verifying its balloon failed: {type(v).__name__}: {v}")
                continue
            if isinstance(v, Scan):
                rec.scan = v  # more to read next tick
                continue
            rec.scan = None
            if v is None:
                continue  # pagemap unreadable now
            rec.peak_bytes = max(rec.peak_bytes, v.peak_bytes)
            rec.given_back_bytes = max(rec.given_back_bytes, v.given_back_bytes)
            if v.reclaimed_bytes < rec.reclaimed_bytes and rec.verified_epoch == rec.state.chunks_epoch:
                # Fewer pages reclaimed at the same addresses: either the JVM wrote to its
                # balloon, or a collection moved the chunks and the agent's new addresses are
                # on their way (the GC notification runs after the collection). Publish the drop
                # only if no new state came within MOVE_GRACE_S.
                if rec.drop_seen_s is None:
                    rec.drop_seen_s = now
                if now - rec.drop_seen_s < MOVE_GRACE_S:
                    continue
            rec.drop_seen_s = None
            rec.verified_s = now
            rec.verified_epoch = rec.state.chunks_epoch
            rec.reclaimed_bytes = steady_reclaimed_bytes(rec.reclaimed_bytes, v)
            rec.balloon_pages = v.balloon_pages
            rec.released_pages = v.not_resident_pages

    def verify_due(self, rec: JVMRecord, now: float) -> bool:
        """Whether a JVM's balloon is read through pagemap this tick. Reading every page of every
        balloon every tick cost 380 ms a tick with 100 JVMs holding 4.7 GiB; a balloon whose
        chunks did not change and whose pages are all reclaimed is read again every
        ``reverify_s`` (REVERIFY_S, staggered by pid so the JVMs do not all come due on one tick;
        a write into it shows up then), the others every tick: new or moved chunks, a drop
        waiting for the agent's new addresses, KSM still merging."""
        if (rec.verified_s is None or rec.verified_epoch != rec.state.chunks_epoch or rec.drop_seen_s is not None
                or rec.scan is not None):
            return True
        # Settled means every page released (not resident), whether or not it counts as
        # reclaimed: a balloon in heap the JVM never used is settled too.
        if rec.released_pages * pagemap.PAGE_SIZE < rec.state.balloon_bytes - REVERIFY_SLACK_BYTES:
            return True
        return now - rec.verified_s >= self.reverify_s * (0.5 + (rec.pid % 97) / 97)

    def _tick_summary(self, targets: dict[int, int], short: Unmet) -> str:
        """The one short line a tick logs (when it changed, or as a heartbeat): the node's
        state. Whoever adds state to the driver (the policy engine) appends it here."""
        ksm = "boost" if self.ksmctl.boosted else self.ksmctl.reason
        return node_summary(self.ticks, list(self.registry), self.node_target(), short, ksm)

    def _log_tick(self) -> None:
        targets = self.targets()
        short = self.unmet(targets)
        details = {r.pid: jvm_detail(r, targets.get(r.pid, 0)) for r in self.registry}
        self.tick_log.emit(self.ticks, self._tick_summary(targets, short), details, short, self.tick_ms,
                           self.registry)

    async def step(self) -> None:
        started = time.perf_counter()
        self.ticks += 1
        self._reap()
        if self.policy is not None:
            self.policy.maybe_tick([r for r in self.registry if r.connected], self.clock())
        await self._send_targets()
        await self._verify_all()
        waiting = sum(max(0, r.balloon_pages - r.released_pages)
                      for r in self.registry if r.state.reclaim == "ksm")
        try:
            self.ksmctl.tick(waiting)
        except KernelError as err:
            log.error("KSM control failed: %s", err)
        if self.policy is None:  # the policy logs its own summary line
            self._log_tick()
        self.tick_ms = (time.perf_counter() - started) * 1000

    def failed(self, err: Exception) -> None:
        """Log a failed tick: with its traceback the first time a kind of error is seen, then
        as one line (a tick runs every second)."""
        kind = type(err).__name__
        if kind not in self.tick_errors:
            self.tick_errors.add(kind)
            log.exception("a tick failed (the daemon goes on; the next %s is logged in one line)", kind)
        else:
            log.warning("a tick failed: %s: %s", kind, err)


def _read_verifications(procfs: ProcFS, plans, zero_pfn):
    """Worker thread: one verification step per (pid, start time, chunks, scan, peak); touches no
    daemon state. Per agent: a Scan (more to read), a Verification, None (unreadable now), or
    the exception that agent's verification raised (MemoryError included): it is dropped."""
    out = []
    for pid, starttime, chunks, scan, peak_bytes, given_back_bytes in plans:
        try:
            out.append((pid, chunks, verify_step(procfs, pid, starttime, chunks, scan, zero_pfn, peak_bytes,
                                                 given_back_bytes=given_back_bytes)))
        except KernelError as err:
            log.debug("pagemap of pid %d unreadable: %s", pid, err)
            out.append((pid, chunks, None))
        except Exception as err:  # noqa: BLE001 - one agent's failure is that agent's alone
            out.append((pid, chunks, err))
    return out
