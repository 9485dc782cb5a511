"""Memory limits of cgroups, v1 and v2, read from cgroupfs: what binds a process's memory.

The one place the automatic policy reads cgroup memory limits and usage from (the experiment's
own groups are :mod:`heapballoon.linux.cgroup`). Read directly from the cgroup filesystem,
never from ``/proc/cgroups`` (a kernel built without CONFIG_MEMCG_V1 lists nothing useful there):

* **v1** (``<v1_root>`` = ``/sys/fs/cgroup/memory`` when the memory controller is mounted
  there): ``memory.limit_in_bytes`` and ``memory.usage_in_bytes``. A limit at or above 2^60
  (the kernel's PAGE_COUNTER_MAX reads back as 9223372036854771712) is none.
* **v2** (``<v2_root>`` = ``/sys/fs/cgroup``, when its ``cgroup.controllers`` lists
  ``memory``): ``memory.max`` (the OOM killer's line) and ``memory.high`` (above it the kernel
  throttles and reclaims), ``"max"`` meaning none, and ``memory.current``. The lower of the
  two binds: the policy keeps usage under it. A group whose parent does not enable ``memory``
  in its ``cgroup.subtree_control`` has no memory files: no limit of its own (its ancestors'
  still bind); a group that is not there at all is an error.

Which hierarchy a group path belongs to is the machine's: with the v1 memory controller
mounted, ``/proc/PID/cgroup``'s ``memory`` line is the path (ProcFS.cgroup), else the unified
``0::`` one. The root group is never a limit (it has no limit files on v2, and "none" on v1).
Both roots can be fixture trees (tests/unit/test_cgroupmem.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from heapballoon.errors import KernelError
from heapballoon.linux.cgroup import MEMORY_V1_ROOT as V1_ROOT, UNLIMITED_ABOVE

V2_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class LimitedGroup:
    """One memory cgroup with a limit: its path (as /proc/PID/cgroup names it), the file the
    binding limit came from, that limit and the group's usage now."""

    path: str
    version: int  # 1 or 2
    limit_file: str  # "memory.limit_in_bytes", "memory.max" or "memory.high"
    limit_bytes: int
    usage_bytes: int


class CgroupMemory:
    """Limits and usage of memory cgroups on v1 or v2 (whichever holds the memory controller)."""

    def __init__(self, v1_root: str = V1_ROOT, v2_root: str = V2_ROOT) -> None:
        self.v1_root = v1_root
        self.v2_root = v2_root

    def version(self) -> int:
        """1 when the v1 memory controller is mounted, 2 when the unified hierarchy has it, else 0."""
        if os.path.isfile(os.path.join(self.v1_root, "memory.limit_in_bytes")):
            return 1
        try:
            with open(os.path.join(self.v2_root, "cgroup.controllers")) as f:
                return 2 if "memory" in f.read().split() else 0
        except OSError:
            return 0

    def _dir(self, version: int, group: str) -> str:
        parts = [p for p in group.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise KernelError(f"invalid cgroup path {group!r}")
        return os.path.join(self.v1_root if version == 1 else self.v2_root, *parts)

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as err:
            raise KernelError(f"cannot read {path}: {err.strerror}") from err

    def _number(self, path: str) -> int | None:
        """A limit or usage file: None for "max" or a v1 "unlimited"."""
        text = self._read(path)
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            raise KernelError(f"cannot read {path}: not a number: {text[:40]!r}") from None
        return None if value >= UNLIMITED_ABOVE else value

    def limit(self, group: str, version: int | None = None) -> LimitedGroup | None:
        """``group``'s own binding limit with its usage; None when it has none (or is the root)."""
        version = self.version() if version is None else version
        if version not in (1, 2) or not group.strip("/"):
            return None
        d = self._dir(version, group)
        if version == 1:
            limit = self._number(os.path.join(d, "memory.limit_in_bytes"))
            if limit is None:
                return None
            return LimitedGroup(group, 1, "memory.limit_in_bytes", limit,
                                self._number(os.path.join(d, "memory.usage_in_bytes")) or 0)
        if not os.path.exists(os.path.join(d, "memory.max")) and os.path.isdir(d):
            return None  # the memory controller is not enabled for it (its parent's subtree_control)
        found = [(v, name) for name in ("memory.max", "memory.high")
                 if (v := self._number(os.path.join(d, name))) is not None]
        if not found:
            return None
        limit, name = min(found)
        return LimitedGroup(group, 2, name, limit, self._number(os.path.join(d, "memory.current")) or 0)

    def limits(self, group: str) -> list[LimitedGroup]:
        """Every limited group from ``group`` up to (not including) the root, deepest first. A
        group's usage counts against each ancestor's limit (v1 with ``use_hierarchy``, always
        on since Linux 6.0; v2 by design), so each of them binds its processes."""
        version = self.version()
        parts = [p for p in group.strip("/").split("/") if p]
        out = []
        while parts:
            found = self.limit("/" + "/".join(parts), version)
            if found is not None:
                out.append(found)
            parts.pop()
        return out

    def nearest_limit(self, group: str) -> LimitedGroup | None:
        """The closest of ``group`` and its ancestors with a limit; None if none has one."""
        found = self.limits(group)
        return found[0] if found else None
