"""The VM-directory contract: what ``<run dir>/vms/<name>/`` holds, typed, validated, in one place.

Every host-side program that manages or watches a VM reads it through this module: the VM
launcher (:mod:`heapballoon.vm.launcher`) writes it, the CLI and hostd read it. Layout::

    <run dir>/                 HEAPBALLOON_RUN_DIR, hostd --run-dir, or /run/heapballoon
      vms/<name>/
        vm.json                the VM's record (:class:`VMDir`), written atomically
        qemu.pid               written by QEMU (-pidfile)
        qmp.sock               QMP for lifecycle (the CLI, stop)
        qmp-hostd.sock         a second QMP socket that hostd may hold while the CLI uses qmp.sock
        channel.sock           host side of virtio-serial port org.heapballoon.0 (hostd connects)
        exec.sock              host side of virtio-serial port org.heapballoon.exec (vm exec)
        exec.lock              one vm exec at a time (flock)
        console.log            the guest serial console
        qemu.log               QEMU's own messages until it daemonized

:class:`VMPaths` names the files (it exists before ``vm.json`` does); :class:`VMDir` is
``vm.json`` with its paths. :class:`VMHandles` is what a *managed VM's host-side handles*
are to the rest of heapballoon, whatever started the VM: a QEMU VM directory implements it
here; another backend (libvirt domains) would implement the same Protocol from its own
records, and hostd would not need to know which one it has.

hostd adoption: ``VMDir.load(VMPaths.of(run_dir, name))`` (or :func:`load_all`) replaces its
own ``vm.json`` parsing and socket names; :attr:`VMDir.hostd_qmp_socket` and
:attr:`VMDir.channel_socket` are the sockets it uses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from heapballoon.errors import VMDirError, VMError
from heapballoon.linux import safefs

DEFAULT_RUN_DIR = "/run/heapballoon"
VMS_SUBDIR = "vms"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MIN_MEMORY_BYTES = 256 << 20
MAX_MEMORY_BYTES = 1 << 40
MAX_CPUS = 64
RECLAIM_MODES = ("pfn", "ksm", "virtio")
ACCELS = ("kvm", "tcg")
CHANNEL_PORT = "org.heapballoon.0"
EXEC_PORT = "org.heapballoon.exec"
SOCKET_PATH_MAX_BYTES = 107


def run_dir(cli_value: str | None = None) -> Path:
    """The run dir: a command-line value, ``$HEAPBALLOON_RUN_DIR``, or /run/heapballoon.

    As root it must be root's alone: owned by root, not group/other-writable, nor any
    directory above it unless sticky; one that does not exist yet must sit in such directories
    (VMDirError, one line). Root keeps QEMU's sockets, pid files and logs there; another
    user's directory would let that user point them anywhere."""
    path = Path(cli_value or os.environ.get("HEAPBALLOON_RUN_DIR") or DEFAULT_RUN_DIR)
    if os.geteuid() == 0:
        try:
            safefs.check_trusted_dir(str(path), missing_ok=True)
        except safefs.UnsafePath as err:
            raise VMDirError(f"run dir: {err}") from err
    return path


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VMError(f"invalid VM name {name!r}: use 1-32 of a-z 0-9 _ - starting with a letter or digit")
    return name


def validate_memory(memory_bytes: int) -> int:
    if not isinstance(memory_bytes, int) or isinstance(memory_bytes, bool):
        raise VMError(f"invalid VM memory {memory_bytes!r}: expected a number of bytes")
    if memory_bytes < MIN_MEMORY_BYTES:
        raise VMError(f"VM memory {memory_bytes} bytes is too small: at least {MIN_MEMORY_BYTES >> 20} MiB")
    if memory_bytes > MAX_MEMORY_BYTES:
        raise VMError(f"VM memory {memory_bytes} bytes is too large: at most {MAX_MEMORY_BYTES >> 30} GiB")
    if memory_bytes % (1 << 20):
        raise VMError(f"VM memory {memory_bytes} bytes is not a whole number of MiB")
    return memory_bytes


def validate_cpus(cpus: int) -> int:
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= MAX_CPUS:
        raise VMError(f"invalid cpus {cpus!r}: 1..{MAX_CPUS}")
    return cpus


def validate_reclaim(reclaim: str) -> str:
    if reclaim not in RECLAIM_MODES:
        raise VMError(f"invalid reclaim mode {reclaim!r}: one of {', '.join(RECLAIM_MODES)}")
    return reclaim


@dataclass(frozen=True)
class VMPaths:
    """The files of VM ``name`` under ``run_dir`` (pure path arithmetic, no I/O)."""

    run_dir: Path
    name: str

    @classmethod
    def of(cls, run_dir_path: str | Path, name: str) -> VMPaths:
        return cls(Path(run_dir_path), validate_name(name))

    @property
    def dir(self) -> Path:
        return self.run_dir / VMS_SUBDIR / self.name

    @property
    def vm_json(self) -> Path:
        return self.dir / "vm.json"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def hostd_qmp_socket(self) -> Path:
        return self.dir / "qmp-hostd.sock"

    @property
    def channel_socket(self) -> Path:
        return self.dir / "channel.sock"

    @property
    def exec_socket(self) -> Path:
        return self.dir / "exec.sock"

    @property
    def exec_lock(self) -> Path:
        return self.dir / "exec.lock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    def check_socket_lengths(self) -> None:
        """VMDirError when a socket path would not fit a unix socket address (108 bytes)."""
        longest = max((self.qmp_socket, self.hostd_qmp_socket, self.channel_socket, self.exec_socket),
                      key=lambda p: len(str(p)))
        if len(str(longest)) > SOCKET_PATH_MAX_BYTES:
            raise VMDirError(f"state dir {self.dir} is too long for unix sockets; "
                             "set HEAPBALLOON_RUN_DIR to a shorter path")

    def read_pid(self) -> int:
        """QEMU's pid from its pidfile, 0 when there is none (yet) or it is unreadable."""
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return 0


def scan(run_dir_path: str | Path) -> list[VMPaths]:
    """Every VM directory under ``run_dir/vms`` with a valid name, sorted by name."""
    base = Path(run_dir_path) / VMS_SUBDIR
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        return []
    except OSError as err:
        raise VMDirError(f"cannot list {base}: {err.strerror}") from err
    return [VMPaths(Path(run_dir_path), p.name) for p in entries if p.is_dir() and NAME_RE.match(p.name)]


@dataclass(frozen=True)
class RamRangeRecord:
    """``size_bytes`` of guest-physical memory from ``gpa`` are RAM-file bytes from ``offset``
    (as QEMU's memory tree said at start; JSON keys ``gpa``, ``size``, ``offset``)."""

    gpa: int
    size_bytes: int
    offset: int

    def to_json(self) -> dict:
        return {"gpa": self.gpa, "size": self.size_bytes, "offset": self.offset}


class VMPathsView:
    """The sockets and logs of a VM, for any record with a ``paths`` (VMDir, vm.registry.VMInfo)."""

    @property
    def qmp_socket(self) -> Path:
        return self.paths.qmp_socket

    @property
    def hostd_qmp_socket(self) -> Path:
        return self.paths.hostd_qmp_socket

    @property
    def channel_socket(self) -> Path:
        return self.paths.channel_socket

    @property
    def exec_socket(self) -> Path:
        return self.paths.exec_socket

    @property
    def console_log(self) -> Path:
        return self.paths.console_log


@runtime_checkable
class VMHandles(Protocol):
    """A managed VM's host-side handles: what hostd and the CLI need, whatever backend runs it."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int: ...           # the process that holds guest RAM (QEMU)

    @property
    def memory_bytes(self) -> int: ...

    @property
    def reclaim(self) -> str: ...       # "pfn" (memfd RAM, punched), "ksm" (private, merged) or "virtio" (stock virtio-balloon)

    @property
    def channel_socket(self) -> Path: ...   # the guest channel (org.heapballoon.0)

    @property
    def hostd_qmp_socket(self) -> Path: ...  # a QMP monitor hostd may hold


def _int(d: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise VMDirError(f"{key} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


def _str(d: dict, key: str, default: str = "") -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise VMDirError(f"{key} must be a string, not {v!r}")
    return v


def _strs(d: dict, key: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise VMDirError(f"{key} must be a list of strings")
    return tuple(v)


@dataclass(frozen=True)
class VMDir(VMPathsView):
    """One VM directory: its paths and ``vm.json``'s validated fields. Implements VMHandles."""

    paths: VMPaths
    pid: int                       # QEMU's pid (0 until QEMU runs)
    memory_bytes: int
    cpus: int = 1
    reclaim: str = "pfn"
    accel: str = "tcg"
    cmd: tuple[str, ...] = ()
    copies: tuple[tuple[str, str], ...] = ()   # (host path, guest path)
    image_key: str = ""
    started_at_s: float = 0.0      # seconds since the epoch (JSON key "started_at")
    ram_layout: tuple[RamRangeRecord, ...] = ()
    qemu_argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_memory(self.memory_bytes)
        validate_cpus(self.cpus)
        validate_reclaim(self.reclaim)
        if self.accel not in ACCELS:
            raise VMDirError(f"invalid accel {self.accel!r}: one of {', '.join(ACCELS)}")
        if self.pid < 0:
            raise VMDirError(f"invalid pid {self.pid}")

    # -- VMHandles ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.paths.name

    @property
    def run_dir(self) -> Path:
        return self.paths.run_dir

    @property
    def dir(self) -> Path:
        return self.paths.dir


    # -- vm.json ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "name": self.name, "pid": self.pid, "memory_bytes": self.memory_bytes, "cpus": self.cpus,
            "reclaim": self.reclaim, "cmd": list(self.cmd), "accel": self.accel,
            "copies": [list(c) for c in self.copies], "image_key": self.image_key,
            "started_at": self.started_at_s, "ram_layout": [r.to_json() for r in self.ram_layout],
            "qemu_argv": list(self.qemu_argv),
        }

    @classmethod
    def from_json(cls, paths: VMPaths, data: Any) -> VMDir:
        """Validate ``data`` (a parsed vm.json) for the VM at ``paths``; VMDirError if invalid.
        Unknown keys are ignored (a newer writer may add some)."""
        if not isinstance(data, dict):
            raise VMDirError(f"{paths.vm_json}: not a JSON object")
        if data.get("name", paths.name) != paths.name:
            raise VMDirError(f"{paths.vm_json}: names VM {data.get('name')!r}, not {paths.name!r}")
        copies = data.get("copies", [])
        if not isinstance(copies, list) or not all(
                isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in copies):
            raise VMDirError(f"{paths.vm_json}: copies must be a list of [host, guest] paths")
        layout = data.get("ram_layout", [])
        if not isinstance(layout, list) or not all(isinstance(r, dict) for r in layout):
            raise VMDirError(f"{paths.vm_json}: ram_layout must be a list of objects")
        started = data.get("started_at", 0.0)
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            raise VMDirError(f"{paths.vm_json}: started_at must be a number")
        try:
            return cls(
                paths=paths, pid=_int(data, "pid", 0, 1 << 22, 0),
                memory_bytes=_int(data, "memory_bytes", 0, 1 << 62),
                cpus=_int(data, "cpus", 1, MAX_CPUS, 1), reclaim=_str(data, "reclaim", "pfn"),
                accel=_str(data, "accel", "tcg"), cmd=_strs(data, "cmd"),
                copies=tuple((h, g) for h, g in copies), image_key=_str(data, "image_key"),
                started_at_s=float(started),
                ram_layout=tuple(RamRangeRecord(_int(r, "gpa", 0, 1 << 62), _int(r, "size", 1, 1 << 62),
                                                _int(r, "offset", 0, 1 << 62)) for r in layout),
                qemu_argv=_strs(data, "qemu_argv"))
        except VMError as err:  # a field's message (VMDirError is a VMError too)
            raise VMDirError(f"{paths.vm_json}: {err}") from err

    @classmethod
    def load(cls, paths: VMPaths) -> VMDir:
        """Read and validate ``vm.json``; VMDirError when it is missing or invalid."""
        try:
            text = paths.vm_json.read_text()
        except OSError as err:
            raise VMDirError(f"cannot read {paths.vm_json}: {err.strerror}") from err
        try:
            data = json.loads(text)
        except ValueError as err:
            raise VMDirError(f"{paths.vm_json} is not JSON: {err}") from err
        return cls.from_json(paths, data)

    def save(self) -> None:
        """Write ``vm.json`` atomically (a reader sees the old or the new file, never half)."""
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        try:  # vm.json.tmp made with O_EXCL|O_NOFOLLOW in the directory's fd, then renamed
            safefs.write_atomic(str(self.paths.dir), self.paths.vm_json.name, data, mode=0o644)
        except safefs.UnsafePath as err:
            raise VMDirError(f"cannot write {self.paths.vm_json}: {err}") from err


def load_all(run_dir_path: str | Path) -> Iterator[VMDir | VMDirError]:
    """Each VM directory's record, or the error that explains why it has none (yet)."""
    for paths in scan(run_dir_path):
        try:
            yield VMDir.load(paths)
        except VMDirError as err:
            yield err
