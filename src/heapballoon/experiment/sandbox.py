"""Real memory pressure: a swap file and the memory cgroups the services run in.

:class:`Sandbox` makes a swap file (``fallocate`` + ``mkswap`` + ``swapon``, through
``heapballoon.linux.swap``) and a parent v1 memory cgroup ``heapballoon-experiment-PID``; each
cell gets the parent's ``memory.limit_in_bytes`` set to the memory given at its overcommit
level and one child cgroup per service (so a manager can limit services one by one). A sibling
``heapballoon-experiment-PID-managers`` (no limit) holds what managers start (heapballoon's
daemon), so that the leftovers of a SIGKILLed run can be found (``leftovers``).
:meth:`Sandbox.close` ends any process still in those cgroups and removes the cgroups and the
swap file, whatever happened before.

Without swap (``swap=False``, ``--swap off``, the Kubernetes default) no swap file is made and
every cgroup's ``memory.swappiness`` is 0, so reclaim in them never swaps (even if the machine
has swap of its own): overcommit the managers do not absorb ends in cgroup OOM kills.
"""

from __future__ import annotations

import logging
import os

from heapballoon.errors import HeapballoonError, KernelError
from heapballoon.linux import cgroup, swap
from heapballoon.linux.cgroup import MemoryCgroup

log = logging.getLogger("heapballoon.experiment")


class SandboxError(HeapballoonError):
    """The machine cannot host the experiment (no cgroup v1 memory controller, not root, ...)."""


class Sandbox:
    def __init__(self, swap_bytes: int, swap_dir: str, cgroup_root: str = cgroup.MEMORY_V1_ROOT,
                 swap_on: bool = True) -> None:
        self.swap_bytes = swap_bytes
        self.swap_on = swap_on
        self.swap_path = os.path.join(swap_dir, f"heapballoon-experiment-{os.getpid()}.swap")
        self.parent = MemoryCgroup(f"heapballoon-experiment-{os.getpid()}", cgroup_root)
        self.managers = MemoryCgroup(f"heapballoon-experiment-{os.getpid()}-managers", cgroup_root)
        self.cgroup_root = cgroup_root
        self.swap_dir = swap_dir
        self.swap_made = False

    def open(self) -> "Sandbox":
        if os.geteuid() != 0:
            raise SandboxError("the experiment needs root (memory cgroups, swapon)")
        if not cgroup.v1_available(self.cgroup_root):
            raise SandboxError(f"no cgroup v1 memory controller at {self.cgroup_root} "
                               "(cgroup v2 hosts are not supported yet)")
        from heapballoon.experiment import leftovers

        try:
            leftovers.write_marker(self.swap_dir)  # who owns this run, for a later --clean
            if self.swap_on:
                swap.make_swapfile(self.swap_path, self.swap_bytes)
                self.swap_made = True
            self.parent.create()
            if not self.swap_on:
                self.parent.set_swappiness(0)
            self.managers.create()
        except KernelError as err:
            self.close()
            raise SandboxError(f"cannot set up memory pressure: {err}") from err
        return self

    def cell_cgroups(self, services: int, limit_bytes: int | None) -> list[MemoryCgroup]:
        """Fresh children ``svc0..`` under the parent, whose limit becomes ``limit_bytes`` (None: none)."""
        for c in self.parent.children():
            c.remove()
        self.parent.set_limit_bytes(limit_bytes if limit_bytes is not None else cgroup.UNLIMITED)
        children = [self.parent.child(f"svc{i}").create() for i in range(services)]
        if not self.swap_on:
            for c in children:
                c.set_swappiness(0)
        return children

    def oom_kills(self) -> int:
        """cgroup OOM kills so far in the parent and its children (cgroup v1 counts a kill only in
        the victim's own group, not its ancestors)."""
        total = self.parent.oom_control().oom_kill
        for c in self.parent.children():
            try:
                total += c.oom_control().oom_kill
            except KernelError:
                pass
        return total

    def close(self) -> list[str]:
        """Remove the cgroups and the swap file; the problems met (already logged), if any."""
        from heapballoon.experiment.leftovers import kill_cgroup, remove_marker

        problems = []
        for group in (self.parent, self.managers):
            try:
                if group.exists():
                    kill_cgroup(group)
                    group.remove()
            except KernelError as err:
                problems.append(str(err))
        if self.swap_made or os.path.exists(self.swap_path):
            try:
                swap.remove_swapfile(self.swap_path)
                self.swap_made = False
            except KernelError as err:
                problems.append(str(err))
        for p in problems:
            log.error("cleanup: %s", p)
        if not problems:
            remove_marker(self.swap_dir)
        return problems
