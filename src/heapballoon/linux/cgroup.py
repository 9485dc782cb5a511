"""cgroup v1 memory controller files (``/sys/fs/cgroup/memory/...``): limit and usage of a group.

Which group a process is in comes from ``ProcFS.cgroup_path``; this module reads the group's
files under an overridable root. A limit of ``PAGE_COUNTER_MAX`` (about 2^63) means none.
"""

from __future__ import annotations

import os

from heapballoon.errors import KernelError

DEFAULT_ROOT = "/sys/fs/cgroup/memory"
UNLIMITED_ABOVE = 1 << 60


class MemoryCgroupV1:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def _read_int(self, group: str, name: str) -> int:
        path = os.path.join(self.root, group.lstrip("/"), name)
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as err:
            raise KernelError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err

    def limit_bytes(self, group: str) -> int | None:
        """``memory.limit_in_bytes`` of ``group``; None when unlimited."""
        value = self._read_int(group, "memory.limit_in_bytes")
        return None if value >= UNLIMITED_ABOVE else value

    def usage_bytes(self, group: str) -> int:
        return self._read_int(group, "memory.usage_in_bytes")
