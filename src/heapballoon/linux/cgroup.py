"""cgroup v1 memory controller: make, limit, read and remove memory cgroups (the experiment,
``heapballoon.experiment``). The automatic policy reads limits, v1 and v2, through
:mod:`heapballoon.linux.cgroupmem`.

The one place that touches ``/sys/fs/cgroup/memory`` (or a fixture tree at ``root``). Which
group a process is in comes from ``ProcFS.cgroup_path``. A limit of ``PAGE_COUNTER_MAX``
(about 2^63) means none. Only v1 is handled (``memory.limit_in_bytes``; v1 has no
``memory.high``): :func:`v1_available` says whether this machine has it.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from heapballoon.errors import KernelError

MEMORY_V1_ROOT = "/sys/fs/cgroup/memory"
UNLIMITED_ABOVE = 1 << 60
UNLIMITED = 1 << 63  # anything at or above the kernel's PAGE_COUNTER_MAX reads back as 9223372036854771712


def v1_available(root: str = MEMORY_V1_ROOT) -> bool:
    return os.path.isfile(os.path.join(root, "memory.limit_in_bytes"))


def groups(prefix: str, root: str = MEMORY_V1_ROOT) -> list["MemoryCgroup"]:
    """The top-level memory cgroups whose names start with ``prefix`` (none without a v1 tree)."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name.startswith(prefix))
    except OSError:
        return []
    return [MemoryCgroup(n, root) for n in names]


@dataclass(frozen=True)
class OomControl:
    """``memory.oom_control``: whether the OOM killer is off, a task is under OOM, kills so far."""

    oom_kill_disable: bool
    under_oom: bool
    oom_kill: int


class MemoryCgroup:
    """One v1 memory cgroup at ``<root>/<name>`` (``name`` may hold ``/`` for children)."""

    def __init__(self, name: str, root: str = MEMORY_V1_ROOT) -> None:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise KernelError(f"invalid cgroup name {name!r}")
        self.name = name
        self.root = root
        self.path = os.path.join(root, name)

    def __repr__(self) -> str:
        return f"MemoryCgroup({self.path!r})"

    def _file(self, key: str) -> str:
        return os.path.join(self.path, key)

    def _read(self, key: str) -> str:
        try:
            with open(self._file(key)) as f:
                return f.read()
        except OSError as err:
            raise KernelError(f"cannot read {self._file(key)}: {err.strerror}") from err

    def _write(self, key: str, value: str) -> None:
        try:
            with open(self._file(key), "w") as f:
                f.write(value)
        except OSError as err:
            raise KernelError(f"cannot write {value!r} to {self._file(key)}: {err.strerror}") from err

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self) -> "MemoryCgroup":
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            raise KernelError(f"cannot create cgroup {self.path}: {err.strerror}") from err
        return self

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def child(self, name: str) -> "MemoryCgroup":
        return MemoryCgroup(f"{self.name}/{name}", self.root)

    def children(self) -> list["MemoryCgroup"]:
        try:
            names = sorted(e.name for e in os.scandir(self.path) if e.is_dir())
        except OSError:
            return []
        return [self.child(n) for n in names]

    def remove(self, timeout_s: float = 10.0) -> None:
        """Remove this cgroup and its children (their tasks must have exited; waits for stragglers)."""
        for c in self.children():
            c.remove(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.exists():
            try:
                os.rmdir(self.path)
            except FileNotFoundError:
                return
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise KernelError(f"cannot remove cgroup {self.path}: {err.strerror}") from err
                time.sleep(0.1)

    # -- membership ------------------------------------------------------------------------------

    def add_pid(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into this cgroup (call from a child before exec to start there)."""
        self._write("cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self._read("cgroup.procs").split()]
        except KernelError:
            return []

    def all_pids(self) -> list[int]:
        """The processes in this cgroup and all its descendants."""
        return self.pids() + [p for c in self.children() for p in c.all_pids()]

    # -- knobs and counters ----------------------------------------------------------------------

    def set_limit_bytes(self, limit_bytes: int) -> None:
        """``memory.limit_in_bytes``; lowering it below usage makes the kernel reclaim (to swap) first."""
        self._write("memory.limit_in_bytes", str(min(int(limit_bytes), UNLIMITED)))

    def limit_bytes(self) -> int:
        return int(self._read("memory.limit_in_bytes"))

    def set_swappiness(self, swappiness: int) -> None:
        """``memory.swappiness``; 0 keeps reclaim in this group off anonymous memory (no swapping)."""
        self._write("memory.swappiness", str(int(swappiness)))

    def set_soft_limit_bytes(self, limit_bytes: int) -> None:
        self._write("memory.soft_limit_in_bytes", str(min(int(limit_bytes), UNLIMITED)))

    def usage_bytes(self) -> int:
        return int(self._read("memory.usage_in_bytes"))

    def memsw_usage_bytes(self) -> int | None:
        """Memory plus swap (None without swap accounting)."""
        try:
            return int(self._read("memory.memsw.usage_in_bytes"))
        except KernelError:
            return None

    def failcnt(self) -> int:
        """How often usage hit the limit (each time the kernel had to reclaim or fail a charge)."""
        return int(self._read("memory.failcnt"))

    def oom_control(self) -> OomControl:
        fields = {}
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                fields[key] = int(value)
        return OomControl(bool(fields.get("oom_kill_disable", 0)), bool(fields.get("under_oom", 0)),
                          fields.get("oom_kill", 0))

    def stat(self) -> dict[str, int]:
        """``memory.stat`` (bytes for sizes, counts for events such as ``pgmajfault``)."""
        out = {}
        for line in self._read("memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
        return out
