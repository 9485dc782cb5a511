"""A VM's virtio-balloon device, through QMP: the guest's memory statistics and the balloon size.

This module owns hostd's use of QEMU's standard balloon, the device ``balloon0`` that
vm/launcher.py gives every guest (``virtio-balloon-pci,id=balloon0,deflate-on-oom=on``; the
guest image loads the ``virtio_balloon`` module in its ``/init``). It is a different thing from
heapballoon's own balloon (zeroed JVM heap pages the guest reports over virtio-serial and hostd
punches; guestsession.py): virtio-balloon takes *free guest memory* page by page from the guest
kernel, and QEMU discards those pages from the RAM file itself (a hole in the memfd), so it is
the cheap source and the JVM heap the dear one.

* :func:`read` turns on the guest's statistics once per VM (``qom-set`` of
  ``guest-stats-polling-interval``), then reads them (``qom-get guest-stats``: free, available,
  total, disk caches) and the balloon's ``actual`` (``query-balloon``: guest RAM left to the
  guest) into a :class:`BalloonReading`.
* :func:`set_actual` asks the device for a guest size (QMP ``balloon``); the guest driver
  inflates or deflates towards it on its own time, so the next reading says how far it got.

Both go through the VM's monitor (``vm.monitor``, heapballoon.qemu.monitor's interface,
``balloon``), in a worker thread. A libvirt domain's monitor is libvirt's: for it the same
steps go through libvirt's API (virDomainSetMemoryStatsPeriod, virDomainSetMemoryFlags,
virDomainMemoryStats; libvirt.conn's DomainMonitor, answering in QMP's shape), so libvirt's
own view of the domain's memory stays right.

Every call is one short connection to the VM's hostd monitor, made only while
hostd holds ``vm.lock`` (the reclaim worker uses the same monitor under that lock; QEMU serves
one client per monitor). A VM whose lock is taken is skipped, keeping its last reading:
statistics are never worth delaying a reclaim for. The guest's figures are its own word and
are used only to decide how much to *ask* for; what the host gains is measured in the memfd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from heapballoon.errors import ReclaimError
from heapballoon.qemu.monitor import BALLOON_DEVICE_PATH as DEVICE_PATH  # noqa: F401 - experiment/ reads it here

log = logging.getLogger("heapballoon.hostd")

STATS_INTERVAL_S = 2  # how often the guest driver refreshes its statistics (QEMU's property, integer s)
QMP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BalloonReading:
    """One reading of a VM's virtio-balloon. Guest figures are None until the guest has sent
    statistics (its driver loaded and the polling interval set)."""

    actual_bytes: int  # guest RAM the balloon leaves the guest (query-balloon)
    free_bytes: int | None  # stat-free-memory: unused guest pages
    available_bytes: int | None  # stat-available-memory: free + reclaimable caches (guest's estimate)
    total_bytes: int | None  # stat-total-memory: what the guest kernel manages
    disk_caches_bytes: int | None
    stats_age_s: float | None  # how old the guest's statistics are (QEMU's last-update), s
    read_at_s: float  # time.monotonic() of this reading

    def held_bytes(self, memory_bytes: int) -> int:
        """What the balloon keeps from the guest now."""
        return max(0, memory_bytes - self.actual_bytes)


def parse_reading(balloon: object, stats: object, now_s: float, wall_s: float) -> BalloonReading:
    """A :class:`BalloonReading` from QMP's answers (``query-balloon``, ``qom-get guest-stats``);
    ReclaimError if ``query-balloon`` has no ``actual``. Bad or missing statistics read as None."""
    try:
        actual = int(balloon["actual"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as err:
        raise ReclaimError(f"query-balloon: no 'actual' in {balloon!r:.100}") from err
    raw = stats.get("stats") if isinstance(stats, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    updated = stats.get("last-update") if isinstance(stats, dict) else None

    def stat(key: str) -> int | None:
        v = raw.get(key)
        # QEMU reports a statistic the guest did not send as -1
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    age = None
    if isinstance(updated, int) and not isinstance(updated, bool) and updated > 0:
        age = max(0.0, wall_s - updated)
    else:  # no statistics yet: do not trust zeros
        raw = {}
    return BalloonReading(actual, stat("stat-free-memory"), stat("stat-available-memory"),
                          stat("stat-total-memory"), stat("stat-disk-caches"), age, now_s)


async def read(vm, set_actual_bytes: int | None = None) -> BalloonReading | None:
    """Read ``vm``'s balloon (and first ask for ``set_actual_bytes``, if given) in one
    connection to its monitor (heapballoon.qemu.monitor: QMP, or libvirt's API for a libvirt
    domain); stores the reading in ``vm.virtio`` and returns it. None, keeping the last reading,
    when the VM's lock is taken (a reclaim is running). ReclaimError on QMP or libvirt trouble."""
    if vm.lock.locked():
        return None
    async with vm.lock:
        balloon, stats = await asyncio.to_thread(_query, vm, set_actual_bytes)
        if not vm.virtio_stats_on:
            vm.virtio_stats_on = True
            log.info("VM %s: virtio-balloon statistics every %d s%s", vm.name, STATS_INTERVAL_S,
                     "" if vm.MONITOR == "QMP" else f" (through {vm.MONITOR})")
    first = vm.virtio is None
    vm.virtio = parse_reading(balloon, stats, time.monotonic(), time.time())
    if first and set_actual_bytes is None:
        # what the device holds when hostd first sees it (a hostd before this one, crashed or
        # restarted, may have inflated it): the target to move from, so a decision of 0 deflates
        vm.virtio_target_bytes = vm.virtio.held_bytes(vm.memory_bytes)
    return vm.virtio


def _query(vm, set_actual_bytes: int | None) -> tuple[object, object]:
    """``read``'s exchange on the VM's monitor, in a worker thread (the caller holds ``vm.lock``)."""
    with vm.monitor(QMP_TIMEOUT_S) as monitor:
        return monitor.balloon(set_actual_bytes, None if vm.virtio_stats_on else STATS_INTERVAL_S)


async def set_actual(vm, actual_bytes: int) -> BalloonReading | None:
    """Ask ``vm``'s balloon to leave the guest ``actual_bytes`` (clamped to its RAM; QEMU wants at
    least 1 byte), then read it. None if a reclaim holds the VM (nothing was asked)."""
    actual_bytes = max(1, min(int(actual_bytes), vm.memory_bytes))
    reading = await read(vm, actual_bytes)
    if reading is not None:
        vm.virtio_target_bytes = vm.memory_bytes - actual_bytes
    return reading


async def refresh(vms, max_age_s: float) -> None:
    """Read every VM whose last reading is older than ``max_age_s`` (errors logged, not raised)."""
    now = time.monotonic()
    for vm in list(vms):
        if vm.virtio is not None and now - vm.virtio.read_at_s < max_age_s:
            continue
        try:
            await read(vm)
            vm.virtio_error = ""
        except ReclaimError as err:
            if str(err) != vm.virtio_error:  # said once, not at every status request
                log.info("VM %s: virtio-balloon: %s", vm.name, err)
            vm.virtio_error = str(err)
