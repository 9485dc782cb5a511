"""The VM API in one import, for scripts and tests (``from heapballoon.vm.qemu import start_vm``).

Owns nothing: it re-exports the public functions of the modules that own each role, so code
written against the former single ``qemu`` module keeps working (benchmarks/, tests/vm/):

* :mod:`heapballoon.vm.vmdir`      the VM directory contract (paths, vm.json)
* :mod:`heapballoon.vm.registry`   which VMs exist, their state, console
* :mod:`heapballoon.vm.launcher`   QEMU argv, start, stop
* :mod:`heapballoon.vm.execclient` ``vm exec``
* :mod:`heapballoon.vm.ramfile`    the guest RAM memfd and guest-physical offsets

New code imports the owning module.
"""

from __future__ import annotations

from pathlib import Path

from heapballoon.vm.execclient import vm_exec
from heapballoon.vm.launcher import qemu_command, start_vm, stop_vm, wait_ready
from heapballoon.vm.ramfile import find_guest_ram, gpa_to_ram_offset, open_guest_ram, qemu_ram_fd_path
from heapballoon.vm.registry import (READY_MARKER, VMInfo, cmd_exit_code, get_vm, list_vms, qemu_alive,
                                     vm_logs)
from heapballoon.vm.vmdir import (CHANNEL_PORT, EXEC_PORT, NAME_RE, RECLAIM_MODES, VMDir, VMPaths, run_dir,
                                  validate_name)


def vms_dir() -> Path:
    return run_dir() / "vms"


def state_dir(name: str) -> Path:
    """The directory of VM ``name`` under the current run dir."""
    return VMPaths.of(run_dir(), name).dir


__all__ = [
    "CHANNEL_PORT", "EXEC_PORT", "NAME_RE", "READY_MARKER", "RECLAIM_MODES", "VMDir", "VMInfo", "VMPaths",
    "cmd_exit_code", "find_guest_ram", "get_vm", "gpa_to_ram_offset", "list_vms", "open_guest_ram",
    "qemu_alive", "qemu_command", "qemu_ram_fd_path", "run_dir", "start_vm", "state_dir", "stop_vm",
    "validate_name", "vm_exec", "vm_logs", "vms_dir", "wait_ready",
]
