"""The short-pause reclaim engine: check on the running guest, pause briefly to re-check and punch.

This module owns the *pause protocol* of the second engine (the first, one pause per fixed
batch of pages with everything inside it, is reclaim.Reclaimer). Per reclaim:

1. ``precheck`` on the running VM (guestram): holes are already reclaimed, non-zero pages are
   skipped, allocated all-zero runs become candidates. Nothing is written, so no pause.
2. The candidates are cut into pauses bounded in *time*, not pages: :class:`PauseModel`
   learns what ``stop``, ``cont`` and a byte of re-check+punch cost on this VM and hands out
   as many bytes as fit in ``pause_budget_ms``.
3. Per pause, in the calling (worker) thread, with a blocking QMP socket (heapballoon.qemu.monitor) and no
   awaits, no logging and no other VM's pause in between (one process-wide lock, taken
   *before* ``stop``): ``query-status``; ``stop``; re-check the candidates in place and punch
   what is still zero; ``cont`` (always attempted, in a ``finally``). Each part is timed.

The guarantee is the first engine's: a page is punched only if it was all zero while the guest
was stopped (re-checked under this very pause). A page the guest wrote after the pre-check is
seen non-zero under the pause and skipped. hostd punches only under a pause it issued itself:
a VM paused by someone else (``paused``, ``prelaunch``, ``suspended``) is *deferred* (nothing
checked or punched, the pages come back unprocessed) because whoever holds that pause may end
it at any time; a RESUME from anyone during hostd's own pause aborts it before the next punch
(resumeguard.py); any other state is refused. A ``cont`` that fails leaves a debt
(contdebt.py): retried until the VM runs, and paid first by the next reclaim.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Iterable

from heapballoon.errors import HeapballoonError, KernelError, ReclaimError
from heapballoon.host.contdebt import ContDebt
from heapballoon.host.guestram import GuestRam
from heapballoon.units import PAGE_BYTES
from heapballoon.qemu.layout import GuestLayout
from heapballoon.host.pausestats import PauseSample
from heapballoon.qemu.monitor import event_time_s
from heapballoon.host.reclaim import ReclaimResult
from heapballoon.host.resumeguard import DeferredError, ResumedUnderPause, recheck_and_punch_guarded
from heapballoon.linux.procfs import ProcFS

DEFAULT_PAUSE_BUDGET_MS = 5.0
MIN_PAUSE_BYTES = 64 * PAGE_BYTES  # progress even when the model says nothing fits
MAX_PAUSE_BYTES = 256 << 20
MIN_WORK_SHARE = 0.4  # of the budget, for re-check and punch, however slow stop/cont are
PAUSE_NICE = -10  # the pause thread and QEMU's non-vCPU threads, while the VM is paused
# hostd sets this GIL switch interval (default 5 ms): when the pause thread waits for a QMP
# answer, the event-loop thread may take the GIL; the pause thread gets it back this soon
GIL_SWITCH_INTERVAL_S = 0.0005
_RUNNING = ("running",)
_PAUSED_BY_OTHERS = ("paused", "prelaunch", "suspended")
# one VM paused at a time in this process: a pause never waits on another VM's pause (the lock
# is taken before stop), and two pause paths never compete for the GIL or the memory bus
PAUSE_LOCK = threading.Lock()


class PauseModel:
    """What a pause costs on one VM, learnt from its pauses, and how many candidate bytes fit
    in ``budget_ms``: pause ≈ stop + cont + other (fixed, between the parts) + bytes × rate.
    Averages are exponential (the rate rises faster than it falls). A VM's model is kept
    across reclaims."""

    ALPHA = 0.3
    ALPHA_UP = 0.6
    OUTLIER_X = 3.0

    def __init__(self, budget_ms: float = DEFAULT_PAUSE_BUDGET_MS, stop_ms: float = 1.0,
                 cont_ms: float = 0.5, work_ns_per_byte: float = 0.3, other_ms: float = 0.1,
                 margin: float = 0.8) -> None:
        if budget_ms <= 0:
            raise ValueError("pause budget must be > 0 ms")
        self.budget_ms = budget_ms
        self.stop_ms = stop_ms
        self.cont_ms = cont_ms
        self.other_ms = other_ms
        self.work_ns_per_byte = work_ns_per_byte
        self.margin = margin  # plan for this share of the budget: room for noise

    def pause_bytes(self, share: float | None = None) -> int:
        """Candidate bytes to re-check and punch in the next pause, planned for ``share`` of
        the budget (``margin`` by default)."""
        share = self.margin if share is None else share
        # when stop/cont alone eat the budget (a host too busy to answer QMP quickly), still
        # give each pause MIN_WORK_SHARE of the budget of work: tiny pauses only add overhead
        room_ms = max(self.budget_ms * share - self.stop_ms - self.cont_ms - self.other_ms,
                      self.budget_ms * MIN_WORK_SHARE)
        n = int(room_ms * 1e6 / max(self.work_ns_per_byte, 1e-3)) // PAGE_BYTES * PAGE_BYTES
        return max(MIN_PAUSE_BYTES, min(MAX_PAUSE_BYTES, n))

    def plan(self, remaining_bytes: int) -> int:
        """Bytes for the next pause: the margin's worth, or everything left if that still
        fits the whole budget (no short pause just for a remainder)."""
        full = self.pause_bytes(1.0)
        return remaining_bytes if remaining_bytes <= full else self.pause_bytes()

    def learn(self, sample: PauseSample, work_bytes: int) -> None:
        """Fold one pause in. A sample far above the estimate (the host did not run us or QEMU
        for a while: seen up to 370 ms on the shared test machine) counts as at most
        ``OUTLIER_X`` × the estimate + 1 ms, so one stall does not shrink the next pauses to
        nothing (which only adds stop/cont overhead)."""
        a = self.ALPHA

        def clip(value: float, estimate: float) -> float:
            return min(value, self.OUTLIER_X * estimate + 1.0)

        self.stop_ms += a * (clip(sample.stop_ms, self.stop_ms) - self.stop_ms)
        self.cont_ms += a * (clip(sample.cont_ms, self.cont_ms) - self.cont_ms)
        work_ms = sample.check_ms + sample.punch_ms
        other = max(0.0, sample.total_ms - sample.stop_ms - sample.cont_ms - work_ms)
        self.other_ms += a * (clip(other, self.other_ms) - self.other_ms)
        if work_bytes >= MIN_PAUSE_BYTES:  # tiny pauses say little about the rate
            rate = min(work_ms * 1e6 / work_bytes, self.OUTLIER_X * self.work_ns_per_byte)
            self.work_ns_per_byte += (self.ALPHA_UP if rate > self.work_ns_per_byte else a) * (
                rate - self.work_ns_per_byte)


class PauseBoost:
    """Raise the CPU priority (nice) of this thread and of QEMU's service threads (main loop,
    monitor I/O: the ones that answer QMP) for the length of a pause, then put them back. On
    a busy host the ``stop`` and ``cont`` round trips are mostly waits for a CPU; measured with
    three CPU hogs on two cores, p99 ``cont`` fell from 7.7 to 0.4 ms. vCPU threads (``vcpu_tids``) are boosted only
    for the ``stop`` round trip (:meth:`stopping`: a vCPU must run to reach a stop point) and
    put back as soon as it is answered, when they no longer run — never while they spin (a
    TCG vCPU at a high priority would starve the host). With scheduler autogroups (a
    ``-daemonize``d QEMU is a session of its own) a thread's nice only counts inside its group,
    so the autogroups of ``autogroup_pids`` (QEMU, hostd) are raised too for the pause — the
    vCPUs in QEMU's group are stopped by then. Failures (not root, no autogroups) are ignored:
    the boost is an optimisation, never a condition."""

    def __init__(self, tids: tuple[int, ...] = (), nice: int = PAUSE_NICE, vcpu_tids: tuple[int, ...] = (),
                 autogroup_pids: tuple[int, ...] = (), procfs: ProcFS | None = None) -> None:
        self.tids = tids
        self.vcpu_tids = vcpu_tids
        self.nice = nice
        self.autogroup_pids = autogroup_pids
        self.procfs = procfs or ProcFS()
        self._saved: list[tuple[int, int]] = []
        self._saved_groups: list[tuple[int, int]] = []

    def _raise_groups(self) -> list[tuple[int, int]]:
        saved, seen = [], set()
        for pid in self.autogroup_pids:
            group = self.procfs.autogroup(pid)
            if group is None or group[0] in seen or group[1] <= self.nice:
                continue
            seen.add(group[0])
            try:
                self.procfs.set_autogroup_nice(pid, self.nice)
                saved.append((pid, group[1]))
            except KernelError:
                pass
        return saved

    def _raise(self, tids) -> list[tuple[int, int]]:
        saved = []
        for tid in tids:
            try:
                old = os.getpriority(os.PRIO_PROCESS, tid)
                if old > self.nice:
                    os.setpriority(os.PRIO_PROCESS, tid, self.nice)
                    saved.append((tid, old))
            except OSError:
                pass
        return saved

    @staticmethod
    def _restore(saved: list[tuple[int, int]]) -> None:
        for tid, old in saved:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, old)
            except OSError:
                pass

    @contextlib.contextmanager
    def stopping(self):
        """Around the ``stop`` round trip: the vCPU threads too."""
        saved = self._raise(self.vcpu_tids)
        try:
            yield
        finally:
            self._restore(saved)

    def __enter__(self) -> PauseBoost:
        self._saved = self._raise((threading.get_native_id(), *self.tids))
        self._saved_groups = self._raise_groups()
        return self

    def __exit__(self, *exc) -> None:
        for pid, nice in self._saved_groups:
            try:
                self.procfs.set_autogroup_nice(pid, nice)
            except KernelError:
                pass
        self._restore(self._saved)


def take_bytes(runs: list[tuple[int, int]], limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split ``runs`` into (first ``limit`` bytes, the rest); runs are cut at page bounds."""
    head: list[tuple[int, int]] = []
    room = limit
    i = 0
    while i < len(runs) and room > 0:
        off, length = runs[i]
        if length <= room:
            head.append((off, length))
            room -= length
            i += 1
        else:
            cut = room // PAGE_BYTES * PAGE_BYTES
            if cut:
                head.append((off, cut))
            return head, [(off + cut, length - cut)] + runs[i + 1:]
    return head, runs[i:]


def _guest_ms(events) -> float:
    """STOP → RESUME by QEMU's timestamps, from the events of one pause (0.0 if missing)."""
    if not events:
        return 0.0
    stop = next((event_time_s(e) for e in events if e.get("event") == "STOP"), None)
    resume = next((event_time_s(e) for e in reversed(events) if e.get("event") == "RESUME"), None)
    return max(0.0, (resume - stop) * 1000.0) if stop is not None and resume is not None else 0.0


class ShortPauseReclaimer:
    """Reclaims a VM's zero guest pages with short pauses. ``qmp``: anything with a blocking
    ``execute(cmd, arguments=None)`` (heapballoon.qemu.monitor.QMPMonitor, or libvirt.conn.DomainMonitor). Call :meth:`reclaim` from a worker
    thread, never from the event loop."""

    def __init__(self, guest_ram: GuestRam, layout: GuestLayout, qmp, model: PauseModel | None = None,
                 name: str = "", clock=time.perf_counter, boost: PauseBoost | None = None,
                 debt: ContDebt | None = None) -> None:
        self.debt = debt  # the cont hostd owes this VM (contdebt.py); None: a failed cont is only an error
        self._state_checked = False
        self.guest_ram = guest_ram
        self.layout = layout
        self.qmp = qmp
        self.model = model or PauseModel()
        self.name = name or guest_ram.name
        self.clock = clock
        self.boost = boost or PauseBoost()

    def _status(self) -> str:
        return str((self.qmp.execute("query-status") or {}).get("status", "?"))

    def _check_state(self) -> None:
        """Pay an owed cont (row 7: hostd's own pause is not someone else's), then refuse a VM
        that is not running: paused, prelaunch or suspended by someone else is *deferred*
        (nothing re-checked or punched: hostd holds no pause of its own there, and whoever holds
        it may resume it at any time — an RTC wake from S3, another client's ``cont``); any
        other state (migrating, shut down, crashed) is refused."""
        if self.debt is not None and self.debt.owed:
            self.debt.pay(self.qmp)
        status = self._status()
        if status in _PAUSED_BY_OTHERS:
            raise DeferredError(f"VM {self.name} is {status} by someone else; reclaim deferred until it runs")
        if status not in _RUNNING:
            raise ReclaimError(f"VM {self.name} is in state {status!r}; not reclaiming")

    def _cont(self) -> None:
        try:
            self.qmp.execute("cont")
        except HeapballoonError as err:
            if self.debt is not None:
                self.debt.owe(str(err))
            raise

    def run_pause(self, work_list: list[tuple[ReclaimResult, list[tuple[int, int]]]],
                  pauses: ReclaimResult) -> None:
        """One pause over candidate runs of one or more reports: stop → re-check and punch →
        cont. Counts go to each report's result, the pause sample to ``pauses``. The VM must
        run (hostd's own stop); a RESUME by anyone between our stop and a punch aborts the
        pause before that punch (:func:`recheck_and_punch_guarded`)."""
        if not self._state_checked:  # (reclaim_many just did, for the first pause)
            self._check_state()
        self._state_checked = False
        counter = getattr(self.qmp, "resume_count", None)
        if counter is None:
            raise ReclaimError(f"VM {self.name}: the monitor cannot report resumes; not punching")
        clock = self.clock
        nbytes = sum(n for _, runs in work_list for _, n in runs)
        done = []
        events = getattr(self.qmp, "events", None)
        if events is not None:
            events.clear()
        ours = True  # hostd's own pause (also after a failed stop: it may have landed)
        with PAUSE_LOCK, self.boost:
            t0 = clock()
            t1 = t2 = t0
            try:
                stops = getattr(self.qmp, "stop_count", None)
                s0 = stops() if stops is not None else 0
                try:
                    with self.boost.stopping():
                        self.qmp.execute("stop")
                finally:  # even a failed stop may have landed: cont below
                    t1 = clock()
                base = counter()  # RESUMEs up to our stop's answer (ours, earlier); any more: not ours
                if stops is not None and stops() == s0:  # no STOP: it was not running any more
                    ours = False  # someone else's pause (or S3): not ours to end with a cont
                    raise DeferredError(f"VM {self.name} stopped running before hostd's stop (paused or "
                                        "suspended by someone else); nothing punched")

                def resumed() -> bool:
                    return counter() != base

                for result, runs in work_list:
                    try:
                        done.append((result, recheck_and_punch_guarded(self.guest_ram, runs, resumed, clock)))
                    except ResumedUnderPause as err:
                        done.append((result, err.work))
                        raise ResumedUnderPause(f"VM {self.name} was resumed by another client during "
                                                "hostd's pause; nothing more punched", err.work) from None
            finally:
                t2 = clock()
                try:
                    if ours:
                        self._cont()
                finally:
                    t3 = clock()
                    ms = 1000.0
                    if ours:
                        sample = PauseSample(
                            (t1 - t0) * ms, sum(w.check_s for _, w in done) * ms,
                            sum(w.punch_s for _, w in done) * ms, (t3 - t2) * ms, (t3 - t0) * ms,
                            nbytes // PAGE_BYTES, _guest_ms(events))
                        pauses.pauses.append(sample)
                        pauses.pauses_ms.append(sample.total_ms)
                    pauses.batches += 1
                    for result, w in done:  # also what was done before an error
                        result.punched_pages += w.punched_pages
                        result.skipped_nonzero_pages += w.skipped_nonzero_pages
        self.model.learn(pauses.pauses[-1], nbytes)

    def reclaim(self, ranges: Iterable[tuple[int, int]]) -> ReclaimResult:
        """Reclaim the zero pages among ``ranges`` (``[(first_pfn, count)]``). Never raises for
        VM trouble: the error lands in ``result.error``, the pages not dealt with in
        ``unprocessed_pages``."""
        return self.reclaim_many([ranges])[0]

    def reclaim_many(self, reports: list[Iterable[tuple[int, int]]]) -> list[ReclaimResult]:
        """:meth:`reclaim` for several reports at once: each is pre-checked, then their
        candidates share pauses (fewer, fuller pauses). One result per report, each page in
        exactly one counter of its own report; the pauses are all in the first result."""
        results = [ReclaimResult() for _ in reports]
        mapped = []
        queue: list[tuple[ReclaimResult, list[tuple[int, int]]]] = []
        try:
            self._check_state()  # deferred or refused: nothing looked at
            self._state_checked = True
            for result, ranges in zip(results, reports):
                extents, result.rejected_pages = self.layout.ranges_to_offsets(ranges)
                mapped.append(sum(n for _, n in extents) // PAGE_BYTES)
                t0 = self.clock()
                pre = self.guest_ram.precheck(extents)
                result.precheck_ms = (self.clock() - t0) * 1000.0
                result.already_pages += pre.already_pages
                result.skipped_nonzero_pages += pre.skipped_nonzero_pages
                if pre.candidates:
                    queue.append((result, list(pre.candidates)))
            while queue:
                room = self.model.plan(sum(n for _, runs in queue for _, n in runs))
                work_list = []
                while queue and room > 0:
                    result, runs = queue[0]
                    head, rest = take_bytes(runs, room)
                    if not head:
                        break
                    work_list.append((result, head))
                    room -= sum(n for _, n in head)
                    if rest:
                        queue[0] = (result, rest)
                    else:
                        queue.pop(0)
                self.run_pause(work_list, results[0])
        except (HeapballoonError, OSError) as err:
            error = str(err) or type(err).__name__
            for i, result in enumerate(results[:len(mapped)]):
                done = result.punched_pages + result.already_pages + result.skipped_nonzero_pages
                result.unprocessed_pages = mapped[i] - done
                if result.unprocessed_pages:  # a report finished before the error keeps no error
                    result.error = error
            for i in range(len(mapped), len(results)):  # not even mapped: count what was reported
                extents, rejected = self.layout.ranges_to_offsets(reports[i])
                results[i].rejected_pages = rejected
                results[i].unprocessed_pages = sum(n for _, n in extents) // PAGE_BYTES
                results[i].error = error
        return results
