"""What a killed experiment leaves behind, found and removed: a run killed with SIGKILL cannot clean
up, so it leaves its memory cgroups ``heapballoon-experiment-PID`` (the services, maybe still
running) and ``heapballoon-experiment-PID-managers`` (a daemon), its swap file
``heapballoon-experiment-PID.swap`` still swapped on, and its private directory ``hbx-PID-*``.

:func:`clean` removes everything whose owning PID is no longer alive, or was reused by a
process that is not heapballoon (a live run's sandbox is never touched): it SIGKILLs the processes in those cgroups, waits for them, removes the cgroups,
turns the swap files off and deletes them. It returns one line per thing cleaned. Every /proc,
cgroupfs and swap call goes through ``heapballoon.linux``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile

from heapballoon.errors import KernelError
from heapballoon.linux import cgroup, swap
from heapballoon.linux.cgroup import MemoryCgroup
from heapballoon.linux.procfs import ProcFS
from heapballoon.poll import Timeout, wait_until

PREFIX = "heapballoon-experiment-"
MANAGERS_SUFFIX = "-managers"
RUN_DIR_PREFIX = "hbx-"
_CGROUP_RE = re.compile(rf"^{PREFIX}(\d+)(?:{MANAGERS_SUFFIX})?$")
_SWAP_RE = re.compile(rf"^{PREFIX}(\d+)\.swap$")
_RUN_DIR_RE = re.compile(rf"^{RUN_DIR_PREFIX}(\d+)-")


def kill_cgroup(group: MemoryCgroup, timeout_s: float = 20.0) -> int:
    """SIGKILL every process in ``group`` (and its children) until it is empty; how many were killed."""
    killed: set[int] = set()

    def empty() -> bool:
        pids = group.all_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        return not pids

    try:
        wait_until(empty, timeout_s, f"the processes in {group.path} to exit", interval_s=0.2)
    except Timeout as err:
        raise KernelError(str(err)) from err
    return len(killed)


def _dead(pid: int, procfs: ProcFS, me: int) -> bool:
    """The run that owned these is gone: its PID is not alive, or now belongs to a process that
    is not heapballoon (the PID was reused). When in doubt (cmdline unreadable): alive."""
    if pid == me:
        return False
    if not procfs.alive(pid):
        return True
    try:
        return not any("heapballoon" in arg for arg in procfs.cmdline(pid))
    except KernelError:
        return False


def clean(swap_dir: str = "/var/tmp", cgroup_root: str = cgroup.MEMORY_V1_ROOT, procfs: ProcFS | None = None,
          tmp_dir: str | None = None, proc_root: str | None = None) -> list[str]:
    """Remove the leftovers of experiment runs whose process is dead; one line per thing cleaned.
    Raises KernelError when something cannot be removed (what was cleaned before stays cleaned)."""
    procfs = procfs or ProcFS(*([proc_root] if proc_root else []))
    proc_root = proc_root or procfs.root
    me = os.getpid()
    done: list[str] = []
    groups = [g for g in cgroup.groups(PREFIX, cgroup_root)
              if (m := _CGROUP_RE.match(g.name)) and _dead(int(m.group(1)), procfs, me)]
    for g in groups:  # processes first (a JVM holds swapped pages), then the cgroups
        n = kill_cgroup(g)
        if n:
            done.append(f"killed {n} process{'es' if n != 1 else ''} left in cgroup {g.path}")
    for g in groups:
        g.remove()
        done.append(f"removed cgroup {g.path}")
    swaps = set(swap.active_swaps(proc_root))
    files = set()
    if os.path.isdir(swap_dir):
        files = {os.path.join(swap_dir, n) for n in os.listdir(swap_dir) if _SWAP_RE.match(n)}
    for path in sorted(files | {p for p in swaps if _SWAP_RE.match(os.path.basename(p))}):
        if not _dead(int(_SWAP_RE.match(os.path.basename(path)).group(1)), procfs, me):
            continue
        active = path in swaps
        swap.remove_swapfile(path, proc_root)
        done.append(f"{'swapped off and ' if active else ''}deleted swap file {path}")
    tmp = tmp_dir or tempfile.gettempdir()
    for name in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []:
        m = _RUN_DIR_RE.match(name)
        if m and _dead(int(m.group(1)), procfs, me) and os.path.isdir(os.path.join(tmp, name)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            done.append(f"removed run directory {os.path.join(tmp, name)}")
    return done
