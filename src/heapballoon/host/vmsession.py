"""One VM as hostd manages it: who it is (:class:`VMIdentity`) and hostd's session with it (:class:`VMSession`).

This module owns every piece of per-VM mutable state in hostd, each with one owner:

* :class:`VMIdentity` (immutable): name, directory, QEMU pid and start time, RAM size, reclaim
  mode and RAM backend id; ``alive()`` tells whether that very process still runs.
* :class:`RamFile`: the guest-RAM fd, opened at most once by whichever thread needs it first
  (its own ``threading.Lock``), closed once with the session.
* :class:`VMSession`: the rest, owned by hostd's event loop: the guest channel and its task,
  ``lock`` (an asyncio lock: the reclaim worker and the virtio monitor use the VM only under
  it), layout, balloon, pause statistics and model, virtio readings, targets, the policy's reason.

Status, metrics and the policy read a session through vmstatus.snapshot (a frozen VMSnapshot).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from heapballoon import protocol, transport
from heapballoon.errors import KernelError, ReclaimError
from heapballoon.host.contdebt import ContDebt
from heapballoon.host.guestram import GuestRam
from heapballoon.host.pageset import PageSet
from heapballoon.host.pausestats import PauseStats
from heapballoon.host.shortpause import PauseModel
from heapballoon.host.virtioballoon import BalloonReading
from heapballoon.linux.procfs import ProcFS
from heapballoon.qemu.layout import GuestLayout, RamRange
from heapballoon.qemu.monitor import QMPMonitor
from heapballoon.status import JvmStatus
from heapballoon.vm.vmdir import VMPaths


def proc_starttime(pid: int) -> int | None:
    """Start time (clock ticks after boot) of ``pid``: with the pid, a process identity."""
    try:
        return ProcFS().starttime(pid)
    except KernelError:
        return None


@dataclass(frozen=True)
class VMIdentity:
    """Who a VM is: fixed for the life of its QEMU process (a new process is a new identity)."""

    name: str
    dir: str
    pid: int
    starttime: int
    memory_bytes: int
    reclaim: str  # pfn: memfd RAM hostd punches; ksm: private RAM left to KSM
    ram_backend: str = "ram0"  # QEMU's id of the guest-RAM memory backend (libvirt: pc.ram)
    # where guest RAM sits, as QEMU said at launch (vm.json's ram_layout; () if not recorded)
    ram_layout: tuple[RamRange, ...] = ()

    def alive(self) -> bool:
        return proc_starttime(self.pid) == self.starttime


class RamFile:
    """The one owner of a VM's guest-RAM file: opened at most once, by whichever thread first
    needs it (status, metrics' worker, the reclaim worker), under its own lock, and closed once
    when hostd forgets the VM; after that it is never opened again (no fd outlives the VM)."""

    def __init__(self, pid: int, memory_bytes: int, alive, opener=None) -> None:
        """``opener(pid, memory_bytes)``: how the file is opened (default GuestRam.open)."""
        self._pid, self._memory_bytes, self._alive = pid, memory_bytes, alive
        self._opener = opener
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
                ram = (self._opener or GuestRam.open)(self._pid, self._memory_bytes)
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


@dataclass(eq=False)
class VMSession:
    """hostd's session with one VM (``identity``): every field below is owned by hostd's event
    loop; a worker thread gets the session only under ``lock``."""

    MONITOR: ClassVar[str] = "QMP"  # what monitor() talks to (libvirt domains: "libvirt")

    identity: VMIdentity
    target_bytes: int = 0
    ram: RamFile | None = None  # made in __post_init__: the one owner of the guest-RAM fd
    layout: GuestLayout | None = None
    hello: protocol.GuestHello | None = None
    guest_status: protocol.GuestStatus | None = None
    guest_jvms: tuple[JvmStatus, ...] = ()  # the guest_status's JVMs, typed when it arrived
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
    cont_debt: ContDebt | None = None  # the cont hostd owes after its own pause (contdebt.py)

    def __post_init__(self) -> None:
        if self.ram is None:
            self.ram = RamFile(self.pid, self.memory_bytes, self.alive)

    name = property(lambda self: self.identity.name)
    dir = property(lambda self: self.identity.dir)
    pid = property(lambda self: self.identity.pid)
    starttime = property(lambda self: self.identity.starttime)
    memory_bytes = property(lambda self: self.identity.memory_bytes)
    reclaim = property(lambda self: self.identity.reclaim)
    ram_backend = property(lambda self: self.identity.ram_backend)

    def launch_layout(self) -> GuestLayout | None:
        """The guest RAM layout QEMU reported at launch (read once per VM, into vm.json), or
        None if the VM's record has none (a libvirt domain: read from its monitor)."""
        if not self.identity.ram_layout:
            return None
        return GuestLayout(self.identity.ram_layout, ram_bytes=self.memory_bytes)

    def describe(self) -> str:
        """Where the VM comes from, for hostd's log."""
        return f"run dir {self.dir}"

    def set_guest_status(self, msg: protocol.GuestStatus) -> None:
        """The guest's latest status (validated and typed at the channel)."""
        self.guest_status = msg
        self.guest_jvms = msg.jvms

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
        return self.identity.alive()

    def monitor(self, timeout_s: float):
        """A blocking monitor for the pause path (``with vm.monitor(t) as qmp: qmp.execute(...)``):
        QMP on the VM's own socket here; libvirt domains go through libvirt."""
        return QMPMonitor(self.qmp_path, timeout_s)

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
