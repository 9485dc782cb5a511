"""What a killed experiment leaves behind, found and removed: a run killed with SIGKILL cannot clean
up, so it leaves its memory cgroups ``heapballoon-experiment-PID`` (the services, maybe still
running) and ``heapballoon-experiment-PID-managers`` (a daemon), its swap file
``heapballoon-experiment-PID.swap`` still swapped on, and its private directory ``hbx-PID-*``.

Each run records its owner next to its swap file, ``heapballoon-experiment-PID.owner``
(:func:`write_marker`, written by the sandbox): its pid, the pid's start time, its pid
namespace and the boot id. :func:`clean` removes a run's leftovers only when that owner is
provably gone: another boot, or the same pid namespace as ours and that pid dead or started
at another time. A run of another pid namespace (a container's, whose PID N is not ours) is
left alone, with one line saying so. Without a marker (a run of an older heapballoon, or one
whose swap dir we cannot see), a run with a process of another pid namespace in its cgroups is
left alone too; otherwise its PID must be dead, or reused by a process that is not heapballoon.
Only markers owned by us (root) are believed: a planted one is ignored.

For each run found gone it SIGKILLs the processes in its cgroups, waits for them, removes the
cgroups, turns the swap file off and deletes it, removes its run directory (only a real one of
ours) and its marker. It returns one line per thing cleaned (and per run left alone, starting
with :data:`NOTE`). Every /proc, cgroupfs and swap call goes through ``heapballoon.linux``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import tempfile
from dataclasses import asdict, dataclass

from heapballoon.errors import KernelError
from heapballoon.linux import cgroup, safefs, swap
from heapballoon.linux.cgroup import MemoryCgroup
from heapballoon.linux.procfs import ProcFS
from heapballoon.poll import Timeout, wait_until

PREFIX = "heapballoon-experiment-"
MANAGERS_SUFFIX = "-managers"
MARKER_SUFFIX = ".owner"
RUN_DIR_PREFIX = "hbx-"
NOTE = "left alone: "
_CGROUP_RE = re.compile(rf"^{PREFIX}(\d+)(?:{MANAGERS_SUFFIX})?$")
_SWAP_RE = re.compile(rf"^{PREFIX}(\d+)\.swap$")
_MARKER_RE = re.compile(rf"^{PREFIX}(\d+)\.owner$")
_RUN_DIR_RE = re.compile(rf"^{RUN_DIR_PREFIX}(\d+)-")
_MAX_MARKER_BYTES = 4096


@dataclass(frozen=True)
class Owner:
    """Who owns a run: a pid, named unambiguously (start time, pid namespace, boot)."""

    pid: int
    starttime: int
    pidns: int
    boot_id: str

    @classmethod
    def of(cls, pid: int, procfs: ProcFS) -> "Owner":
        return cls(pid, procfs.starttime(pid), procfs.pid_namespace(pid), procfs.boot_id())

    @classmethod
    def from_json(cls, data: object) -> "Owner":
        if not isinstance(data, dict):
            raise ValueError("not an object")
        pid, start, ns, boot = data.get("pid"), data.get("starttime"), data.get("pidns"), data.get("boot_id")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (pid, start, ns)) \
                or not isinstance(boot, str):
            raise ValueError("fields pid, starttime, pidns (integers) and boot_id (text) expected")
        return cls(pid, start, ns, boot)


def marker_name(pid: int) -> str:
    return f"{PREFIX}{pid}{MARKER_SUFFIX}"


def write_marker(swap_dir: str, procfs: ProcFS | None = None) -> Owner:
    """Record this process as the owner of its run (``swap_dir/heapballoon-experiment-PID.owner``)."""
    owner = Owner.of(os.getpid(), procfs or ProcFS())
    safefs.write_new(swap_dir, marker_name(owner.pid), json.dumps(asdict(owner)).encode(), 0o644)
    return owner


def remove_marker(swap_dir: str, pid: int | None = None) -> None:
    try:
        fd = safefs.open_dir(swap_dir, follow=True)
    except safefs.UnsafePath:
        return
    try:
        safefs.remove_at(fd, marker_name(os.getpid() if pid is None else pid))
    finally:
        os.close(fd)


def read_marker(swap_dir: str, pid: int) -> Owner | None:
    """The owner recorded for run ``pid``; None when there is none we believe (missing, not a
    plain file of ours, unreadable, or not naming ``pid``)."""
    try:
        data = safefs.read_small(os.path.join(swap_dir, marker_name(pid)), _MAX_MARKER_BYTES, owner=os.geteuid())
        owner = Owner.from_json(json.loads(data))
    except (OSError, KernelError, ValueError):
        return None
    return owner if owner.pid == pid else None


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
    """Without a marker: the run's PID is not alive, or now belongs to a process that is not
    heapballoon (the PID was reused). When in doubt (cmdline unreadable): alive."""
    if pid == me:
        return False
    if not procfs.alive(pid):
        return True
    try:
        return not any("heapballoon" in arg for arg in procfs.cmdline(pid))
    except KernelError:
        return False


def _other_namespace(pids: list[int], procfs: ProcFS, my_ns: int) -> int | None:
    """The pid namespace of the first process in ``pids`` that is not in ours, if any."""
    for p in pids:
        try:
            ns = procfs.pid_namespace(p)
        except KernelError:
            continue  # exited meanwhile
        if ns != my_ns:
            return ns
    return None


class _Judge:
    """Whether the run of PID N is gone (clean it), alive, or of another pid namespace."""

    def __init__(self, procfs: ProcFS, swap_dir: str, groups: list[MemoryCgroup]) -> None:
        self.procfs = procfs
        self.swap_dir = swap_dir
        self.groups = groups
        self.me = Owner.of(os.getpid(), procfs)
        self.verdicts: dict[int, str] = {}
        self.notes: list[str] = []

    def gone(self, pid: int) -> bool:
        if pid not in self.verdicts:
            verdict, why = self._judge(pid)
            self.verdicts[pid] = verdict
            if verdict == "foreign":
                self.notes.append(f"{NOTE}the run of PID {pid} ({PREFIX}{pid}): {why}")
        return self.verdicts[pid] == "gone"

    def _judge(self, pid: int) -> tuple[str, str]:
        me, procfs = self.me, self.procfs
        owner = read_marker(self.swap_dir, pid)
        if owner is not None:
            if owner.boot_id != me.boot_id:
                return "gone", "started before this boot"
            if owner.pidns != me.pidns:
                return "foreign", (f"it belongs to another pid namespace (pid:[{owner.pidns}]); "
                                   "run --clean there to remove it")
            if pid == me.pid:
                return ("alive", "ours") if owner.starttime == me.starttime else ("gone", "an earlier process")
            try:
                same = procfs.alive(pid) and procfs.starttime(pid) == owner.starttime
            except KernelError:
                same = False  # exited meanwhile
            return ("alive", "running") if same else ("gone", "its owner exited")
        pids = [p for g in self.groups if (m := _CGROUP_RE.match(g.name)) and int(m.group(1)) == pid
                for p in _group_pids(g)]
        ns = _other_namespace(pids, procfs, me.pidns)
        if ns is not None:
            return "foreign", f"its processes are in another pid namespace (pid:[{ns}]) and it has no owner marker"
        return ("gone", "dead") if _dead(pid, procfs, me.pid) else ("alive", "running")


def _group_pids(group: MemoryCgroup) -> list[int]:
    try:
        return group.all_pids()
    except KernelError:
        return []


def _our_dir(path: str) -> bool:
    """A real directory (not a symlink) of ours: the only kind of run directory removed."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def clean(swap_dir: str = "/var/tmp", cgroup_root: str = cgroup.MEMORY_V1_ROOT, procfs: ProcFS | None = None,
          tmp_dir: str | None = None, proc_root: str | None = None) -> list[str]:
    """Remove the leftovers of experiment runs whose owner is gone; one line per thing cleaned,
    and one per run left alone (starting with :data:`NOTE`). Raises KernelError when something
    cannot be removed (what was cleaned before stays cleaned)."""
    procfs = procfs or ProcFS(*([proc_root] if proc_root else []))
    proc_root = proc_root or procfs.root
    done: list[str] = []
    all_groups = [g for g in cgroup.groups(PREFIX, cgroup_root) if _CGROUP_RE.match(g.name)]
    judge = _Judge(procfs, swap_dir, all_groups)
    groups = [g for g in all_groups if judge.gone(int(_CGROUP_RE.match(g.name).group(1)))]
    for g in groups:  # processes first (a JVM holds swapped pages), then the cgroups
        n = kill_cgroup(g)
        if n:
            done.append(f"killed {n} process{'es' if n != 1 else ''} left in cgroup {g.path}")
    for g in groups:
        g.remove()
        done.append(f"removed cgroup {g.path}")
    swaps = set(swap.active_swaps(proc_root))
    names = os.listdir(swap_dir) if os.path.isdir(swap_dir) else []
    files = {os.path.join(swap_dir, n) for n in names if _SWAP_RE.match(n)}
    for path in sorted(files | {p for p in swaps if _SWAP_RE.match(os.path.basename(p))}):
        if not judge.gone(int(_SWAP_RE.match(os.path.basename(path)).group(1))):
            continue
        active = path in swaps
        swap.remove_swapfile(path, proc_root)
        done.append(f"{'swapped off and ' if active else ''}deleted swap file {path}")
    tmp = tmp_dir or tempfile.gettempdir()
    for name in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []:
        m = _RUN_DIR_RE.match(name)
        if m and _our_dir(os.path.join(tmp, name)) and judge.gone(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            done.append(f"removed run directory {os.path.join(tmp, name)}")
    for name in names:  # markers last: a run half cleaned keeps its owner on record
        m = _MARKER_RE.match(name)
        if m and judge.gone(int(m.group(1))):
            remove_marker(swap_dir, int(m.group(1)))
    return done + judge.notes
