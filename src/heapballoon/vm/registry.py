"""Which VMs exist and what state each is in: the CLI's view of the VM directories.

Owns :class:`VMInfo` (what ``vm list`` shows, ``--json`` included) and the rules that turn a
VM directory (:mod:`heapballoon.vm.vmdir`) plus the live process table into a state:

* ``running``  its QEMU is alive (not a zombie) and names this VM's directory on its command line;
* ``starting`` no ``vm.json``/pidfile yet and the directory is younger than STARTING_GRACE_S;
* ``stopped``  the guest powered itself off (``reboot: Power down`` on the console);
* ``dead``     anything else (QEMU killed, crashed, or a half-written directory).

Process facts come from :class:`~heapballoon.linux.procfs.ProcFS` (overridable root).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from heapballoon.errors import KernelError, VMDirError, VMError
from heapballoon.linux.procfs import ProcFS
from heapballoon.vm import vmdir
from heapballoon.vm.vmdir import VMPathsView, VMDir, VMPaths

READY_MARKER = "HEAPBALLOON-READY"
CMD_EXIT_RE = re.compile(r"HEAPBALLOON-CMD-EXIT rc=(-?\d+)")
POWER_DOWN_MARKER = b"reboot: Power down"
STARTING_GRACE_S = 120.0


@dataclass(frozen=True)
class VMInfo(VMPathsView):
    """One VM as ``vm list`` shows it (``asdict`` is the ``--json`` form)."""

    name: str
    pid: int
    memory_bytes: int
    cpus: int = 1
    reclaim: str = "pfn"
    cmd: list[str] = field(default_factory=list)
    accel: str = ""
    state: str = "running"          # running | stopped | dead | starting
    state_dir: str = ""
    copies: list[list[str]] = field(default_factory=list)
    image_key: str = ""
    started_at: float = 0.0         # seconds since the epoch
    ram_layout: list[dict] = field(default_factory=list)   # [{"gpa", "size", "offset"}] from QEMU

    @property
    def paths(self) -> VMPaths:
        p = Path(self.state_dir)
        return VMPaths(p.parent.parent, self.name)


    @classmethod
    def of(cls, d: VMDir, state: str) -> VMInfo:
        return cls(name=d.name, pid=d.pid, memory_bytes=d.memory_bytes, cpus=d.cpus, reclaim=d.reclaim,
                   cmd=list(d.cmd), accel=d.accel, state=state, state_dir=str(d.dir),
                   copies=[list(c) for c in d.copies], image_key=d.image_key, started_at=d.started_at_s,
                   ram_layout=[r.to_json() for r in d.ram_layout])


def qemu_alive(pid: int, vm_dir: Path | None = None, procfs: ProcFS | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) QEMU, for ``vm_dir`` when given (its command line
    names the directory: a recycled pid is not mistaken for the VM)."""
    procfs = procfs or ProcFS()
    if pid <= 0 or not procfs.alive(pid):
        return False
    try:
        argv = procfs.cmdline(pid)
    except KernelError:
        return False
    joined = "\0".join(argv)
    if "qemu-system" not in joined and not (argv and "qemu" in argv[0]):
        return False
    return vm_dir is None or str(vm_dir) in joined


def _starting(paths: VMPaths) -> bool:
    """A directory another start_vm is still filling in (no pidfile yet, created just now)."""
    try:
        return not paths.pidfile.exists() and time.time() - paths.dir.stat().st_mtime < STARTING_GRACE_S
    except OSError:
        return False


def _powered_off(paths: VMPaths) -> bool:
    try:
        with open(paths.console_log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return POWER_DOWN_MARKER in f.read()
    except OSError:
        return False


def load_info(paths: VMPaths, procfs: ProcFS | None = None) -> VMInfo:
    """The VM at ``paths`` with its state (a directory without a valid vm.json is starting or dead)."""
    try:
        d = VMDir.load(paths)
    except VMDirError:
        pid = paths.read_pid()
        state = "running" if qemu_alive(pid, paths.dir, procfs) else "starting" if _starting(paths) else "dead"
        return VMInfo(name=paths.name, pid=pid, memory_bytes=0, state=state, state_dir=str(paths.dir))
    if d.pid == 0:
        d = replace(d, pid=paths.read_pid())
    if qemu_alive(d.pid, paths.dir, procfs):
        state = "running"
    elif _starting(paths):
        state = "starting"
    else:
        state = "stopped" if _powered_off(paths) else "dead"
    return VMInfo.of(d, state)


def get_vm(name: str, procfs: ProcFS | None = None) -> VMInfo:
    paths = VMPaths.of(vmdir.run_dir(), name)
    if not paths.dir.is_dir():
        raise VMError(f"no VM named {name!r} (`heapballoon vm list` shows the VMs)")
    return load_info(paths, procfs)


def list_vms(procfs: ProcFS | None = None) -> list[VMInfo]:
    return [load_info(p, procfs) for p in vmdir.scan(vmdir.run_dir())]


def read_console(info: VMInfo) -> str:
    try:
        return info.console_log.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def console_has(info: VMInfo, marker: str = READY_MARKER, chunk_bytes: int = 1 << 16) -> bool:
    """True once ``marker`` is on the VM's console, read from the start in chunks up to it: the
    ready marker comes after the boot messages, so a guest that has printed megabytes since costs
    a few chunks, not the whole log (``vm exec`` asks this on every call)."""
    needle = marker.encode()
    tail = b""
    try:
        with open(info.console_log, "rb") as f:
            while chunk := f.read(chunk_bytes):
                seen = tail + chunk
                if needle in seen:
                    return True
                tail = seen[max(0, len(seen) - len(needle) + 1):]  # a marker split between two chunks
    except OSError:
        return False
    return False


def vm_logs(name: str) -> str:
    """The guest serial console so far."""
    return read_console(get_vm(name))


def cmd_exit_code(name: str) -> int | None:
    """The VM command's exit code once ``HEAPBALLOON-CMD-EXIT`` is on the console, else None."""
    m = CMD_EXIT_RE.search(read_console(get_vm(name)))
    return int(m.group(1)) if m else None
