"""hostd's registry of VMs: one :class:`VM` per live VM directory, and the rule that admits one.

This module owns what hostd knows about a VM between scans: the identity checks (the pid in
``vm.json`` is alive, has the recorded start time, and its command line names the VM's
directory) and the per-VM state hostd builds up (guest RAM, layout, balloon, pause figures).
The VM directory itself is read through the one contract, :mod:`heapballoon.vm.vmdir`.
Owned by hostd's event loop; the reclaim worker gets a VM only under ``vm.lock``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from heapballoon import protocol, transport
from heapballoon.errors import KernelError, ReclaimError, VMError
from heapballoon.host.contdebt import ContDebt
from heapballoon.host.guestram import GuestRam
from heapballoon.host.layout import GuestLayout
from heapballoon.host.pageset import PageSet
from heapballoon.host.pausestats import PauseStats
from heapballoon.host.shortpause import PauseModel
from heapballoon.host.virtioballoon import BalloonReading
from heapballoon.linux.procfs import ProcFS
from heapballoon.vm.vmdir import VMDir, VMPaths, run_dir

log = logging.getLogger("heapballoon.hostd")


def run_dir_path(cli_value: str | None = None) -> str:
    return str(run_dir(cli_value))


def _proc_starttime(pid: int) -> int | None:
    """Start time (clock ticks after boot) of ``pid``: with the pid, a process identity."""
    try:
        return ProcFS().starttime(pid)
    except KernelError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return " ".join(ProcFS().cmdline(pid))
    except KernelError:
        return ""


class RamFile:
    """The one owner of a VM's guest-RAM file: opened at most once, by whichever thread first
    needs it (status, metrics' worker, the reclaim worker), under its own lock, and closed once
    when hostd forgets the VM; after that it is never opened again (no fd outlives the VM)."""

    def __init__(self, pid: int, memory_bytes: int, alive) -> None:
        self._pid, self._memory_bytes, self._alive = pid, memory_bytes, alive
        self._lock = threading.Lock()
        self._ram: GuestRam | None = None
        self._closed = False

    @property
    def current(self) -> GuestRam | None:
        """The open file, or None if no one has needed it yet (never opens)."""
        return self._ram

    def get(self) -> GuestRam:
        """The open file, opened now if needed; ReclaimError if the VM's QEMU is gone."""
        with self._lock:
            if self._closed:
                raise ReclaimError(f"QEMU {self._pid}: hostd forgot this VM")
            if self._ram is None:
                ram = GuestRam.open(self._pid, self._memory_bytes)
                if not self._alive():  # pid reused between scan and open
                    ram.close()
                    raise ReclaimError(f"QEMU {self._pid} exited")
                self._ram = ram
            return self._ram

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._ram is not None:
                self._ram.close()  # our fd would keep the dead VM's RAM allocated
                self._ram = None


@dataclass
class VM:
    """One VM as hostd knows it."""

    name: str
    dir: str
    pid: int
    starttime: int
    memory_bytes: int
    reclaim: str
    target_bytes: int = 0
    ram: RamFile | None = None  # made in __post_init__: the one owner of the guest-RAM fd
    layout: GuestLayout | None = None
    hello: protocol.GuestHello | None = None
    guest_status: protocol.GuestStatus | None = None
    balloon: PageSet = field(default_factory=PageSet)  # RAM-file page numbers
    pause_stats: PauseStats = field(default_factory=PauseStats)
    pause_model: PauseModel | None = None  # short engine: what a pause costs on this VM
    engine: str = "short"
    soft_dirty: bool = False  # detected on the host (not used by the engines yet)
    totals: dict = field(default_factory=lambda: dict(punched=0, already=0, skipped_nonzero=0, rejected=0))
    channel: transport.LineChannel | None = None
    task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # virtio-balloon (virtioballoon.py): the last reading, whether the guest's statistics are
    # on, and what hostd asked the device to hold (bytes taken from the guest; 0: nothing)
    virtio: BalloonReading | None = None
    virtio_stats_on: bool = False
    virtio_target_bytes: int = 0
    virtio_error: str = ""
    policy_reason: str = ""  # hostd --policy auto: why the VM's targets are what they are
    holes: object = None  # vmstatus.HoleCount of a balloon too fragmented to measure at once
    ram_backend: str = "ram0"  # QEMU's id of the guest-RAM memory backend (libvirt: pc.ram)
    # hostd reaches the virtio-balloon through the VM's QMP socket; libvirt domains, whose
    # monitor libvirt owns, through libvirt's API (their ``virtio_query``)
    virtio_via_qmp: bool = True
    cont_debt: ContDebt | None = None  # the cont hostd owes after its own pause (contdebt.py)

    def __post_init__(self) -> None:
        if self.ram is None:
            self.ram = RamFile(self.pid, self.memory_bytes, self.alive)

    @property
    def guest_ram(self) -> GuestRam | None:
        """The guest-RAM file if open (read-only view: only ``ram`` opens and closes it)."""
        return self.ram.current

    @property
    def paths(self) -> VMPaths:
        return VMPaths.of(Path(self.dir).parent.parent, Path(self.dir).name)

    @property
    def qmp_path(self) -> str:
        own = self.paths.hostd_qmp_socket  # a monitor only hostd uses, if present
        return str(own if own.exists() else self.paths.qmp_socket)

    @property
    def channel_path(self) -> str:
        return str(self.paths.channel_socket)

    def alive(self) -> bool:
        return _proc_starttime(self.pid) == self.starttime

    def monitor(self, timeout_s: float):
        """A blocking monitor for the pause path (``with vm.monitor(t) as qmp: qmp.execute(...)``):
        QMP on the VM's own socket here; libvirt domains go through libvirt."""
        from heapballoon.host.qmpsync import SyncQMP

        return SyncQMP(self.qmp_path, timeout_s)

    def debt(self) -> ContDebt:
        """The VM's :class:`ContDebt` (made on first use), retried on fresh monitors."""
        if self.cont_debt is None:
            self.cont_debt = ContDebt(self.name, lambda: self.monitor(5.0), self.alive)
        return self.cont_debt

    def close(self) -> None:
        if self.cont_debt is not None:
            self.cont_debt.close()
        if self.task is not None:
            self.task.cancel()
        if self.channel is not None:
            self.channel.close()
        self.ram.close()


def load_vm(vm_dir: str) -> VM | None:
    """The VM described by ``vm_dir/vm.json`` (the VM-directory contract, vm.vmdir) if its QEMU
    is alive and is really that VM."""
    path = Path(vm_dir)
    try:
        record = VMDir.load(VMPaths.of(path.parent.parent, path.name))
    except VMError as err:
        log.debug("%s: %s", vm_dir, err)
        return None
    starttime = _proc_starttime(record.pid) if record.pid > 0 else None
    if starttime is None:
        return None
    cmd = _cmdline(record.pid)
    if os.path.realpath(vm_dir) not in cmd and vm_dir not in cmd:
        log.warning("VM %s: process %d does not name %s on its command line; ignoring it",
                    record.name, record.pid, vm_dir)
        return None
    return VM(record.name, vm_dir, record.pid, starttime, record.memory_bytes, record.reclaim)
