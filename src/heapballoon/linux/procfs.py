"""The one adapter for ``/proc``: every read of a process's procfs files goes through here.

Controllers never open ``/proc`` themselves; they take a :class:`ProcFS` and tests hand them one
whose ``root`` points at a directory of fixture text (``tests/fixtures/proc``). The model is
psutil's ``_pslinux.py``: small parsers over the kernel's text formats, failures turned into
one-line :class:`~heapballoon.errors.KernelError` messages, a vanished process into
:class:`ProcessGone`.

Kernel differences handled here:

* ``NSpid:`` in ``/proc/PID/status`` exists since Linux 4.1; older kernels get ``[pid]``.
* Reading a file of a process that exits mid-read fails with ``ESRCH`` rather than ``ENOENT``;
  both mean :class:`ProcessGone`.
* A ``libjvm.so`` replaced by a package upgrade shows as ``libjvm.so (deleted)`` in maps.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import BinaryIO, Union

from heapballoon.errors import KernelError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Pid = Union[int, str]  # an int, or "self" (not `int | str`: evaluated at run time, and the guest runs 3.9)


class ProcessGone(KernelError):
    """The process does not exist (any more)."""


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


def _one_line(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


class ProcFS:
    """``/proc`` (or a fixture tree laid out like it) at ``root``."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"ProcFS({self.root!r})"

    # -- raw access -------------------------------------------------------------------------

    def path(self, *parts: object) -> str:
        """``path(1234, "root", "tmp")`` → ``/proc/1234/root/tmp`` (for sockets, magic links)."""
        return os.path.join(self.root, *(str(p) for p in parts))

    def _error(self, relpath: str, exc: OSError) -> KernelError:
        first = relpath.split("/", 1)[0]
        if isinstance(exc, (FileNotFoundError, ProcessLookupError)) and (first.isdigit() or first == "self"):
            return ProcessGone(f"no process with PID {first}")
        return KernelError(f"cannot read {self.path(relpath)}: {_one_line(exc)}")

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo in bytes (``MemAvailable`` needs Linux 3.14+)."""
        out = {}
        for line in self.read_text("meminfo").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        return out

    def read_text(self, relpath: str) -> str:
        """The whole text of ``root/relpath``; ProcessGone / KernelError on failure."""
        try:
            with open(self.path(relpath), "rb") as f:
                return f.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise self._error(relpath, exc) from exc

    def exists(self, pid: Pid) -> bool:
        return os.path.isdir(self.path(pid))

    # -- per-process parsers ----------------------------------------------------------------

    def status(self, pid: Pid) -> dict[str, str]:
        """``/proc/PID/status`` as ``{"VmRSS": "1234 kB", "Uid": "0\\t0\\t0\\t0", ...}``."""
        out: dict[str, str] = {}
        for line in self.read_text(f"{pid}/status").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value.strip()
        return out

    def rss_bytes(self, pid: Pid) -> int:
        """Resident set size (the kernel's ``VmRSS``, in bytes); 0 for kernel threads.

        Read from ``/proc/PID/statm`` (its second field, in pages): the same counter as
        ``status``'s VmRSS, without the rest of ``status`` (for a JVM ``status`` took 0.4 ms,
        which the policy paid for each JVM every tick)."""
        fields = self.read_text(f"{pid}/statm").split()
        if len(fields) < 2:
            raise KernelError(f"/proc/{pid}/statm: unexpected {' '.join(fields)!r}")
        return int(fields[1]) * PAGE_SIZE

    def cmdline(self, pid: Pid) -> list[str]:
        text = self.read_text(f"{pid}/cmdline")
        parts = text.split("\0")
        if parts and parts[-1] == "":
            parts.pop()
        return parts

    def maps(self, pid: Pid) -> list[Mapping]:
        """``/proc/PID/maps``; ``path`` is "" for anonymous mappings, ``[heap]`` etc. kept."""
        out = []
        for line in self.read_text(f"{pid}/maps").splitlines():
            fields = line.split(None, 5)
            if len(fields) < 5:
                continue
            start, _, end = fields[0].partition("-")
            out.append(Mapping(
                start=int(start, 16),
                end=int(end, 16),
                perms=fields[1],
                offset=int(fields[2], 16),
                path=fields[5] if len(fields) > 5 else "",
            ))
        return out

    def is_jvm(self, pid: Pid) -> bool:
        """True when the process maps HotSpot's ``libjvm.so`` (a HotSpot JVM)."""
        for m in self.maps(pid):
            path = m.path.removesuffix(" (deleted)")
            if path.rsplit("/", 1)[-1] == "libjvm.so":
                return True
        return False

    def nspid(self, pid: Pid) -> list[int]:
        """The PID in each nested pid namespace, outermost first (``NSpid``, Linux 4.1+)."""
        st = self.status(pid)
        value = st.get("NSpid")
        if not value:  # kernel < 4.1: no pid namespace information
            return [int(st.get("Pid", pid))]
        return [int(x) for x in value.split()]

    def euid_egid(self, pid: Pid) -> tuple[int, int]:
        """Effective uid and gid (second field of ``Uid:`` / ``Gid:``)."""
        st = self.status(pid)
        try:
            return int(st["Uid"].split()[1]), int(st["Gid"].split()[1])
        except (KeyError, IndexError, ValueError) as err:
            raise KernelError(f"cannot parse Uid/Gid in {self.path(pid, 'status')}") from err

    def groups(self, pid: Pid) -> list[int]:
        """Supplementary group ids (``Groups:``), as this namespace sees them."""
        try:
            return [int(x) for x in self.status(pid).get("Groups", "").split()]
        except ValueError as err:
            raise KernelError(f"cannot parse Groups in {self.path(pid, 'status')}") from err

    def namespace(self, pid: Pid, kind: str) -> int:
        """The inode of ``pid``'s ``kind`` namespace (``/proc/PID/ns/mnt``, ``user``, ...): equal
        for two processes exactly when they share that namespace."""
        relpath = f"{pid}/ns/{kind}"
        try:
            return os.stat(self.path(relpath)).st_ino
        except OSError as exc:
            raise self._error(relpath, exc) from exc

    def catches_signal(self, pid: Pid, signum: int) -> bool:
        """Whether the process has a handler installed for ``signum`` (``SigCgt`` mask)."""
        mask = int(self.status(pid).get("SigCgt", "0"), 16)
        return bool(mask >> (signum - 1) & 1)

    def starttime(self, pid: Pid) -> int:
        """Start time in clock ticks after boot (``stat`` field 22): (pid, starttime) is unique."""
        text = self.read_text(f"{pid}/stat")
        # comm (field 2) may contain spaces and parentheses: split after the last ')'.
        rest = text[text.rfind(")") + 2:].split()
        try:
            return int(rest[19])  # rest[0] is field 3 (state)
        except (IndexError, ValueError) as err:
            raise KernelError(f"cannot parse {self.path(pid, 'stat')}") from err

    def state(self, pid: Pid) -> str:
        """The one-letter state of ``stat`` field 3 (``R``, ``S``, ``Z`` zombie, ``X`` dead, ...)."""
        text = self.read_text(f"{pid}/stat")
        try:
            return text[text.rindex(")") + 2]
        except (ValueError, IndexError) as err:
            raise KernelError(f"cannot parse {self.path(pid, 'stat')}") from err

    def pids(self) -> list[int]:
        """Every process id listed in the proc root, sorted."""
        try:
            return sorted(int(n) for n in os.listdir(self.root) if n.isdigit())
        except OSError as exc:
            raise KernelError(f"cannot list {self.root}: {_one_line(exc)}") from exc

    def alive(self, pid: Pid) -> bool:
        """True when ``pid`` exists and is neither a zombie nor dead (no exception: gone is False)."""
        if isinstance(pid, int) and pid <= 0:
            return False
        try:
            return self.state(pid) not in "ZX"
        except KernelError:
            return False

    # -- open files (/proc/PID/fd) -----------------------------------------------------------

    def exe(self, pid: Pid) -> str:
        """The path of ``pid``'s executable (``/proc/PID/exe``)."""
        try:
            return os.readlink(self.path(pid, "exe"))
        except OSError as exc:
            raise self._error(f"{pid}/exe", exc) from exc

    def fds(self, pid: Pid) -> list[int]:
        """The open file descriptor numbers of ``pid`` (needs ptrace access: same user or root)."""
        relpath = f"{pid}/fd"
        try:
            names = os.listdir(self.path(relpath))
        except OSError as exc:
            if isinstance(exc, PermissionError):
                raise KernelError(f"cannot read {self.path(relpath)}: permission denied "
                                  "(need the same user as the process, or root)") from exc
            raise self._error(relpath, exc) from exc
        return sorted(int(n) for n in names if n.isdigit())

    def fd_target(self, pid: Pid, fd: int) -> str:
        """What descriptor ``fd`` of ``pid`` refers to (``/memfd:ram0 (deleted)``, a path, ...)."""
        relpath = f"{pid}/fd/{fd}"
        try:
            return os.readlink(self.path(relpath))
        except OSError as exc:
            raise self._error(relpath, exc) from exc

    def fd_stat(self, pid: Pid, fd: int) -> os.stat_result:
        """``stat`` of the file behind descriptor ``fd`` of ``pid`` (size, device, inode)."""
        relpath = f"{pid}/fd/{fd}"
        try:
            return os.stat(self.path(relpath))
        except OSError as exc:
            raise self._error(relpath, exc) from exc

    def open_fd(self, pid: Pid, fd: int, flags: int) -> int:
        """A new file description on the file behind ``fd`` of ``pid`` (the caller closes it)."""
        relpath = f"{pid}/fd/{fd}"
        try:
            return os.open(self.path(relpath), flags | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"cannot open {self.path(relpath)}: {_one_line(exc)}") from exc

    def tasks(self, pid: Pid) -> list[int]:
        """Thread ids of ``pid`` (``/proc/PID/task``), ascending."""
        relpath = f"{pid}/task"
        try:
            return sorted(int(t) for t in os.listdir(self.path(relpath)) if t.isdigit())
        except OSError as exc:
            raise self._error(relpath, exc) from None

    def autogroup(self, pid: Pid) -> tuple[str, int] | None:
        """(name, nice) of the scheduler autogroup of ``pid`` (``/proc/PID/autogroup``:
        "/autogroup-4 nice 0"); None where the kernel has no autogroups. With autogroups on,
        a thread's nice only weighs against threads of its own group (session)."""
        try:
            name, _, nice = self.read_text(f"{pid}/autogroup").split()[:3]
            return name, int(nice)
        except (KernelError, ValueError):
            return None

    def set_autogroup_nice(self, pid: Pid, nice: int) -> None:
        """Set the nice of ``pid``'s autogroup (lowering it needs CAP_SYS_NICE)."""
        relpath = f"{pid}/autogroup"
        try:
            with open(self.path(relpath), "w") as f:
                f.write(str(nice))
        except OSError as exc:
            raise self._error(relpath, exc) from None

    def open_pagemap(self, pid: Pid) -> BinaryIO:
        """``/proc/PID/pagemap`` opened unbuffered for ``os.pread``; the caller closes it."""
        relpath = f"{pid}/pagemap"
        try:
            return open(self.path(relpath), "rb", buffering=0)
        except OSError as exc:
            if isinstance(exc, PermissionError):
                raise KernelError(
                    f"cannot open {self.path(relpath)}: permission denied (needs ptrace access to PID {pid})"
                ) from exc
            raise self._error(relpath, exc) from exc

    # -- system-wide ------------------------------------------------------------------------

    def vmstat(self) -> dict[str, int]:
        """``/proc/vmstat`` counters (``pswpin``, ``pswpout``, ``pgmajfault``, ...)."""
        out = {}
        for line in self.read_text("vmstat").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
        return out

    def cpu_seconds(self, pid: Pid) -> float:
        """User plus system CPU time of ``pid`` (``stat`` fields 14 and 15) in seconds."""
        text = self.read_text(f"{pid}/stat")
        rest = text[text.rfind(")") + 2:].split()
        try:
            return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
        except (IndexError, ValueError) as err:
            raise KernelError(f"cannot parse {self.path(pid, 'stat')}") from err

    def pressure(self, resource: str = "memory") -> dict[str, dict[str, float]]:
        """``/proc/pressure/RESOURCE`` (PSI) as ``{"some": {"avg10": 1.5, ...}, "full": {...}}``;
        KernelError where the kernel has no PSI (``psi=0``, before 4.20)."""
        out: dict[str, dict[str, float]] = {}
        for line in self.read_text(f"pressure/{resource}").splitlines():
            kind, _, rest = line.partition(" ")
            try:
                out[kind] = {k: float(v) for k, v in (field.split("=", 1) for field in rest.split())}
            except ValueError as err:
                raise KernelError(f"unexpected line in {self.path('pressure', resource)}: {line!r}") from err
        return out

    def cgroup_path(self, pid: Pid, controller: str = "memory") -> str | None:
        """The cgroup v1 path of ``pid`` for ``controller`` (``/proc/PID/cgroup``), None if
        that controller is not mounted as v1."""
        for line in self.read_text(f"{pid}/cgroup").splitlines():
            _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
            if controller in controllers.split(","):
                return path
        return None

    def cgroup(self, pid: Pid) -> str:
        """The cgroup that holds ``pid``'s memory: its v1 ``memory`` path, else its v2 (unified,
        ``0::``) path; "" when neither is listed."""
        unified = ""
        for line in self.read_text(f"{pid}/cgroup").splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if "memory" in controllers.split(","):
                return path
            if hierarchy == "0" and controllers == "":
                unified = path
        return unified

    def uptime_s(self) -> float:
        return float(self.read_text("uptime").split()[0])

    def pid_namespace(self, pid: Pid) -> int:
        """The inode of ``pid``'s pid namespace (``/proc/PID/ns/pid``): equal for two processes
        exactly when they are in the same pid namespace."""
        relpath = f"{pid}/ns/pid"
        try:
            return os.stat(self.path(relpath)).st_ino
        except OSError as exc:
            raise self._error(relpath, exc) from exc

    def boot_id(self) -> str:
        """This boot's random id (``sys/kernel/random/boot_id``): new on every (re)boot."""
        return self.read_text("sys/kernel/random/boot_id").strip()


def _kb_to_bytes(value: str) -> int:
    number, _, unit = value.partition(" ")
    scale = {"kB": 1024, "": 1}.get(unit.strip())
    if scale is None:
        raise KernelError(f"unexpected unit in {value!r}")
    return int(number) * scale
