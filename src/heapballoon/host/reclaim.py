"""Reclaim guest pages of one VM: batch, pause the VM, check-and-punch, resume.

This module owns the *pause protocol* around guest RAM writes. :class:`Reclaimer` turns a
guest's page-frame ranges into RAM-file extents (layout.py), cuts them into batches of at
most ``batch_pages`` and, per batch, runs QMP ``stop`` → :meth:`GuestRam.check_and_punch`
→ QMP ``cont``. ``cont`` is always attempted in a ``finally``; one that fails is owed and
retried (contdebt.py). hostd works only under its own pause: a VM someone else paused
(``paused``, ``prelaunch``, ``suspended``) is deferred, left paused and not touched, as is a VM
in any other state (migrating, shut down, crashed). Unlike the short engine, this engine does
not look for another client's ``cont`` between a batch's check and punch (the check and punch
are guestram's one call): use the short engine (the default) where other clients may resume.

It also holds the baselines that do not punch: the virtio-balloon device (QMP ``balloon`` /
``query-balloon``); KSM lives in ksm.py. ``qmp`` is anything with ``async execute(cmd,
arguments=None)`` — a connected :class:`qemu.qmp.QMPClient`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Iterable

from heapballoon.errors import ReclaimError
from heapballoon.host.guestram import GuestRam, PunchResult
from heapballoon.units import PAGE_BYTES
from heapballoon.qemu.layout import GuestLayout
from heapballoon.host.pausestats import PauseSample, percentile  # noqa: F401 - percentile re-exported

log = logging.getLogger("heapballoon.host.reclaim")

# 8192 pages = 32 MiB a pause: ~8-10 ms of check+punch when every page is zero-but-allocated
# (benchmarks/host_punch.py, see reclaim_benchmark below), and a batch of holes is ~free.
DEFAULT_BATCH_PAGES = 8192
# QMP RunState values: a VM in one of these we may pause ourselves / may work on while
# someone else holds it paused. Anything else (inmigrate, postmigrate, finish-migrate,
# save-vm, restore-vm, shutdown, guest-panicked, internal-error, io-error, ...) is refused.
_RUNNING = ("running",)
_PAUSED_BY_OTHERS = ("paused", "prelaunch", "suspended")


@dataclass
class ReclaimResult:
    """What one ``reclaim`` did. Every reported page is in exactly one counter, except when
    ``error`` is set: then ``unprocessed_pages`` were not looked at."""

    punched_pages: int = 0
    already_pages: int = 0
    skipped_nonzero_pages: int = 0
    rejected_pages: int = 0
    unprocessed_pages: int = 0
    pauses_ms: list[float] = field(default_factory=list)
    pauses: list[PauseSample] = field(default_factory=list)  # the same pauses, in parts
    batches: int = 0
    precheck_ms: float = 0.0  # short-pause engine: the look at the running guest (no pause)
    error: str = ""

    def add(self, r: PunchResult) -> None:
        self.punched_pages += r.punched_pages
        self.already_pages += r.already_pages
        self.skipped_nonzero_pages += r.skipped_nonzero_pages

    @property
    def reported_pages(self) -> int:
        return (self.punched_pages + self.already_pages + self.skipped_nonzero_pages
                + self.rejected_pages + self.unprocessed_pages)


def split_batches(extents: list[tuple[int, int]], batch_pages: int) -> list[list[tuple[int, int]]]:
    """Cut ``[(offset, length)]`` into batches of at most ``batch_pages`` pages each."""
    limit = batch_pages * PAGE_BYTES
    batches: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    room = limit
    for off, length in extents:
        while length:
            take = min(length, room)
            cur.append((off, take))
            off, length, room = off + take, length - take, room - take
            if room == 0:
                batches.append(cur)
                cur, room = [], limit
    if cur:
        batches.append(cur)
    return batches


async def _qmp(qmp, cmd: str, arguments: dict | None = None):
    try:
        return await qmp.execute(cmd, arguments) if arguments else await qmp.execute(cmd)
    except Exception as err:  # noqa: BLE001 - qemu.qmp raises ExecuteError, StateError, OSError...
        raise ReclaimError(f"QMP {cmd} {arguments or ''} failed: {type(err).__name__}: {err}") from err


class Reclaimer:
    """Punches a VM's zero guest pages, a short pause at a time."""

    def __init__(self, guest_ram: GuestRam, layout: GuestLayout, qmp,
                 batch_pages: int = DEFAULT_BATCH_PAGES, name: str = "", debt=None) -> None:
        if batch_pages < 1:
            raise ValueError("batch_pages must be >= 1")
        self.guest_ram = guest_ram
        self.layout = layout
        self.qmp = qmp
        self.batch_pages = batch_pages
        self.name = name or guest_ram.name
        self.debt = debt  # contdebt.ContDebt: a cont that fails is owed and retried
        self._lock = asyncio.Lock()  # one reclaim at a time per VM: pauses never nest

    async def _pause(self) -> tuple[bool, float, float]:
        """Stop the VM if it runs: (True if we stopped it so we must resume it, when the
        pause began and when the stop was answered, by perf_counter)."""
        status = (await _qmp(self.qmp, "query-status")).get("status", "?")
        t0 = time.perf_counter()
        if status in _RUNNING:
            try:
                await _qmp(self.qmp, "stop")
                return True, t0, time.perf_counter()
            except ReclaimError:
                # the stop may have landed before the failure was seen: never leave it paused
                try:
                    await self._resume()
                except ReclaimError as err:
                    log.warning("VM %s: cont after a failed stop failed too: %s", self.name, err)
                raise
        if status in _PAUSED_BY_OTHERS:  # not our pause: it may end at any time (shortpause.py)
            raise ReclaimError(f"VM {self.name} is {status} by someone else; reclaim deferred until it runs")
        raise ReclaimError(f"VM {self.name} is in state {status!r}; not reclaiming")

    async def _resume(self) -> None:
        try:
            await _qmp(self.qmp, "cont")
        except ReclaimError as err:
            if self.debt is not None:
                self.debt.owe(str(err))
            raise

    async def run_batch(self, extents: list[tuple[int, int]], result: ReclaimResult) -> None:
        """One pause: stop → check and punch ``extents`` → cont (cont always attempted)."""
        paused_by_us, t0, t1 = await self._pause()  # the pause: from sending stop to the cont reply
        punched = None
        try:
            punched = await asyncio.to_thread(self.guest_ram.check_and_punch, extents)
            result.add(punched)
        finally:
            t2 = time.perf_counter()
            if paused_by_us:
                try:
                    await self._resume()
                finally:
                    t3 = time.perf_counter()
                    punch_s = getattr(punched, "punch_s", 0.0)
                    work_s = (t2 - t1) if punched is not None else 0.0
                    sample = PauseSample((t1 - t0) * 1e3, max(0.0, work_s - punch_s) * 1e3, punch_s * 1e3,
                                         (t3 - t2) * 1e3, (t3 - t0) * 1e3, sum(n for _, n in extents) // PAGE_BYTES)
                    result.pauses.append(sample)
                    result.pauses_ms.append(sample.total_ms)
            result.batches += 1

    async def reclaim(self, ranges: Iterable[tuple[int, int]]) -> ReclaimResult:
        """Reclaim the zero pages among ``ranges`` (``[(first_pfn, count)]``).

        Never raises for VM trouble: an error (QMP gone, VM in a state we must not touch,
        I/O error) stops the work, lands in ``result.error`` and leaves the remaining pages
        in ``unprocessed_pages``."""
        result = ReclaimResult()
        extents, result.rejected_pages = self.layout.ranges_to_offsets(ranges)
        batches = split_batches(extents, self.batch_pages)
        async with self._lock:
            for i, batch in enumerate(batches):
                try:
                    await self.run_batch(batch, result)
                except (ReclaimError, OSError) as err:
                    result.error = str(err)
                    # pages of a batch that failed half way count as unprocessed
                    done = result.punched_pages + result.already_pages + result.skipped_nonzero_pages
                    mapped = sum(n for b in batches for _, n in b) // PAGE_BYTES
                    result.unprocessed_pages = mapped - done
                    log.warning("reclaim %s: batch %d/%d failed: %s", self.name, i + 1, len(batches), err)
                    break
        return result


# ---------------------------------------------------------------- virtio-balloon baseline

async def balloon_set(qmp, guest_bytes_after: int) -> None:
    """Baseline: ask the virtio-balloon device to leave the guest ``guest_bytes_after``."""
    await _qmp(qmp, "balloon", {"value": int(guest_bytes_after)})


async def balloon_query(qmp) -> int:
    """The guest's current size by the balloon (``query-balloon`` ``actual``, bytes)."""
    return int((await _qmp(qmp, "query-balloon"))["actual"])
