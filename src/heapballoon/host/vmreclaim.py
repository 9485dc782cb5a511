"""One VM's reported pages, reclaimed: hostd's glue between a pages report and an engine.

This module owns the per-VM steps around a reclaim: a QMP connection to the VM's hostd monitor
(heapballoon.qemu.monitor: asyncio for the batch engine, a blocking socket in a worker thread
for the short engine), the guest-RAM file (the session's one owner opens it) and the
guest-physical layout (vm.json's, read at launch; a libvirt domain's from its monitor, once
per boot), the fragmentation limit, and turning a :class:`~heapballoon.host.reclaim.ReclaimResult` into the guest's
``pages_ack`` plus hostd's running totals and pause figures. ``vm`` is a VMSession.
"""

from __future__ import annotations

import asyncio
import logging
import os

from heapballoon import protocol
from heapballoon.errors import HeapballoonError, ReclaimError
from heapballoon.units import PAGE_BYTES
from heapballoon.qemu.layout import GuestLayout
from heapballoon.host.reclaim import Reclaimer, ReclaimResult
from heapballoon.host.shortpause import PauseBoost, PauseModel, ShortPauseReclaimer
from heapballoon.qemu.monitor import connect_async, disconnect_async
from heapballoon.linux.procfs import ProcFS
from heapballoon.textsafe import log_text

log = logging.getLogger("heapballoon.hostd")

MAX_BALLOON_INTERVALS = 1 << 20
QMP_CONNECT_TIMEOUT_S = 5.0


def _check_fragmentation(vm, extents_list: list[list[tuple[int, int]]]) -> None:
    if len(vm.balloon) + sum(len(e) for e in extents_list) > MAX_BALLOON_INTERVALS:
        raise ReclaimError(f"balloon too fragmented (> {MAX_BALLOON_INTERVALS} intervals)")


def _log_layout(vm) -> None:
    log.info("VM %s: guest RAM layout %r (%s)", vm.name, vm.layout,
             "from vm.json, as QEMU said at launch" if vm.identity.ram_layout else "from QEMU's monitor")


def _pause_boost(vm, qmp) -> PauseBoost:
    """A PauseBoost for QEMU's threads: its vCPUs (``query-cpus-fast``), boosted for the
    ``stop`` round trip only, and the others — main loop (runs QMP commands), monitor I/O
    (reads and writes the QMP socket), RCU, workers — for the whole pause; and the scheduler
    autogroups of QEMU and hostd."""
    try:
        vcpus = tuple(sorted({int(c["thread-id"]) for c in qmp.execute("query-cpus-fast")}))
        return PauseBoost(tuple(t for t in ProcFS().tasks(vm.pid) if t not in vcpus), vcpu_tids=vcpus,
                          autogroup_pids=(vm.pid, os.getpid()))
    except (HeapballoonError, KeyError, TypeError, ValueError) as err:
        log.info("VM %s: cannot tell QEMU's threads apart (%s); boosting its main thread only", vm.name, err)
        return PauseBoost((vm.pid,), autogroup_pids=(vm.pid, os.getpid()))


def reclaim_short(vm, reports: list, pause_budget_ms: float) -> tuple[list[list[tuple[int, int]]], list[ReclaimResult]]:
    """The short engine, all in the calling worker thread: a blocking QMP socket of our own,
    the RAM file and layout if not known yet, then pre-check and short pauses."""
    with vm.monitor(QMP_CONNECT_TIMEOUT_S) as qmp:
        ram = vm.ram.get()
        if vm.layout is None:
            vm.layout = vm.launch_layout() or GuestLayout.from_mtree(
                str(qmp.execute("human-monitor-command", {"command-line": "info mtree -f"})),
                vm.ram_backend, ram_bytes=vm.memory_bytes)
            _log_layout(vm)
        extents_list = [vm.layout.ranges_to_offsets(r)[0] for r in reports]
        _check_fragmentation(vm, extents_list)
        if vm.pause_model is None:
            vm.pause_model = PauseModel(pause_budget_ms)
        engine = ShortPauseReclaimer(ram, vm.layout, qmp, vm.pause_model, vm.name,
                                     boost=_pause_boost(vm, qmp), debt=vm.debt())
        return extents_list, engine.reclaim_many(reports)


async def reclaim_batch(vm, ranges, batch_pages: int | None) -> tuple[list[tuple[int, int]], ReclaimResult]:
    """The first engine (fixed batches, everything under the pause) on one report."""
    debt = vm.debt()
    if debt.owed:  # hostd's own pause from an earlier cont that failed: end it first (before
        # our asyncio client takes the socket: QEMU serves one client per QMP socket)

        def pay() -> None:
            with vm.monitor(QMP_CONNECT_TIMEOUT_S) as sync:
                debt.pay(sync)

        await asyncio.to_thread(pay)
    qmp = await connect_async(vm.qmp_path, f"hostd-{vm.name}", QMP_CONNECT_TIMEOUT_S)
    try:
        ram = await asyncio.to_thread(vm.ram.get)
        if vm.layout is None:
            vm.layout = vm.launch_layout() or await GuestLayout.from_qmp(qmp, vm.ram_backend, ram_bytes=vm.memory_bytes)
            _log_layout(vm)
        extents, _ = vm.layout.ranges_to_offsets(ranges)
        _check_fragmentation(vm, [extents])
        rec = Reclaimer(ram, vm.layout, qmp, name=vm.name, debt=debt,
                        **({"batch_pages": batch_pages} if batch_pages else {}))
        return extents, await rec.reclaim(ranges)
    finally:
        await disconnect_async(qmp)


def account(vm, msg: protocol.Pages, res: ReclaimResult) -> protocol.PagesAck:
    """Add ``res`` to the VM's totals and pause figures, log it, and make the guest's ack."""
    vm.pause_stats.add(res.pauses, res.punched_pages * PAGE_BYTES)
    for k, v in (("punched", res.punched_pages), ("already", res.already_pages),
                 ("skipped_nonzero", res.skipped_nonzero_pages), ("rejected", res.rejected_pages)):
        vm.totals[k] += v
    log.info("VM %s: pages seq %d key %s: %d reported, %d punched, %d already, %d non-zero skipped, "
             "%d rejected in %d pauses (pre-check %.1f ms), pause max %.1f ms, sum %.1f ms%s", vm.name,
             msg.seq, log_text(msg.key or "-"), sum(c for _, c in msg.ranges), res.punched_pages, res.already_pages,
             res.skipped_nonzero_pages, res.rejected_pages, res.batches, res.precheck_ms,
             max(res.pauses_ms, default=0.0), sum(res.pauses_ms), f", error: {res.error}" if res.error else "")
    return protocol.PagesAck(msg.seq, res.punched_pages, res.already_pages, res.skipped_nonzero_pages,
                             res.rejected_pages, res.error[:1000])
