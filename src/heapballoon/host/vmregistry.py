"""Where hostd's VMs come from: the :class:`VMSource` protocol, and :class:`RunDirSource`, the run dir's VMs.

This module owns *discovery* for the run dir (``RUN_DIR/vms/NAME/``, read through the one
contract, :mod:`heapballoon.vm.vmdir`) and the identity rule that admits a VM: the pid in
``vm.json`` is alive, has the recorded start time, and its command line names the VM's
directory. A source only says what it found (a :class:`Discovery`); hostd's ``scan`` admits
and drops sessions in one place (host/hostd.py). The libvirt source is libvirt/backend.py's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from heapballoon.errors import KernelError, VMError
from heapballoon.host.vmsession import VMIdentity, VMSession, proc_starttime
from heapballoon.linux.procfs import ProcFS
from heapballoon.qemu.layout import RamRange
from heapballoon.vm.vmdir import VMDir, VMPaths, run_dir

log = logging.getLogger("heapballoon.hostd")


def run_dir_path(cli_value: str | None = None) -> str:
    return str(run_dir(cli_value))


@dataclass(frozen=True)
class Discovery:
    """What a source found at one scan: ``keep``, the names of known sessions still valid;
    ``new``, sessions to admit (replacing a known one of the same name); ``left_alone``, VMs
    seen but not managed → why. ``complete`` False: the source could not look (libvirtd away):
    known sessions stay while their QEMU lives."""

    keep: frozenset[str] = frozenset()
    new: tuple[VMSession, ...] = ()
    left_alone: Mapping[str, str] = field(default_factory=dict)
    complete: bool = True


class VMSource(Protocol):
    """Where a hostd gets its VMs (the run dir, or a libvirtd)."""

    where: str  # for hostd's start-up line

    def attach(self, sessions: Mapping[str, VMSession], rescan: Callable[[], None]) -> None:
        """hostd's sessions (read only) and a call that makes hostd scan again (source events)."""

    def discover(self, known: Mapping[str, VMSession]) -> Discovery:
        """The VMs there now, compared with ``known``."""

    def close(self) -> None:
        """Let go of connections."""


def _cmdline(pid: int) -> str:
    try:
        return " ".join(ProcFS().cmdline(pid))
    except KernelError:
        return ""


def load_vm(vm_dir: str) -> VMSession | None:
    """The VM described by ``vm_dir/vm.json`` (the VM-directory contract, vm.vmdir) if its QEMU
    is alive and is really that VM."""
    path = Path(vm_dir)
    try:
        record = VMDir.load(VMPaths.of(path.parent.parent, path.name))
    except VMError as err:
        log.debug("%s: %s", vm_dir, err)
        return None
    starttime = proc_starttime(record.pid) if record.pid > 0 else None
    if starttime is None:
        return None
    cmd = _cmdline(record.pid)
    if os.path.realpath(vm_dir) not in cmd and vm_dir not in cmd:
        log.warning("VM %s: process %d does not name %s on its command line; ignoring it",
                    record.name, record.pid, vm_dir)
        return None
    layout = tuple(RamRange(r.gpa, r.size_bytes, r.offset) for r in record.ram_layout)  # read at launch
    return VMSession(VMIdentity(record.name, vm_dir, record.pid, starttime, record.memory_bytes, record.reclaim,
                                ram_layout=layout))


class RunDirSource:
    """The VMs of ``vms_dir`` (``RUN_DIR/vms``): one per directory whose QEMU is alive."""

    def __init__(self, vms_dir: str) -> None:
        self.vms_dir = vms_dir
        self.where = vms_dir

    def attach(self, sessions: Mapping[str, VMSession], rescan: Callable[[], None]) -> None:
        pass  # the run dir has no events: hostd's scan loop looks every SCAN_INTERVAL_S

    def discover(self, known: Mapping[str, VMSession]) -> Discovery:
        keep, new = set(), {}
        try:
            entries = sorted(os.scandir(self.vms_dir), key=lambda e: e.name)
        except OSError:
            entries = []
        for entry in entries:
            if not entry.is_dir():
                continue
            session = next((v for v in known.values() if v.dir == entry.path), None)
            if session is not None and session.alive():
                keep.add(session.name)
                continue
            vm = load_vm(entry.path)
            if vm is not None and vm.name not in keep and vm.name not in new:
                new[vm.name] = vm
        return Discovery(frozenset(keep), tuple(new.values()))

    def close(self) -> None:
        pass
