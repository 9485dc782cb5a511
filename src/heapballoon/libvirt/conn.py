"""libvirt itself: the Python binding, one connection with its events, a domain's QEMU and monitor.

This module owns every call into libvirt's Python binding (Debian's ``python3-libvirt``, the
build that matches the host's libvirt 9.0; see docs/vm.md for why not the PyPI sdist):

* :func:`import_binding` / :func:`open_conn`: the binding and a connection, with libvirt's own
  error printing silenced (errors become :class:`LibvirtError`, one line);
* :class:`EventThread`: libvirt's default event loop in a daemon thread (lifecycle, migration
  and job events, keepalive, the connection's close callback), handing each event to a
  callable (hostd posts it onto its asyncio loop);
* :func:`qemu_pid`: a running domain's QEMU process: libvirt's pid file (root's), else found in
  /proc (through heapballoon.linux) by the ``-uuid`` libvirt puts on QEMU's command line; either
  way it must run as libvirt's QEMU user (the domain's DAC label), so a local user's fake
  ``qemu -uuid <victim>`` is never taken for the domain's QEMU;
* :class:`DomainMonitor`: what the short-pause engine calls ``qmp`` (``execute(cmd)``), done
  through libvirt because libvirt owns QEMU's monitor: ``stop``/``cont`` are
  ``virDomainSuspend``/``virDomainResume``, ``query-status`` is ``virDomainGetState`` plus the
  domain's job (a migration in either direction reads as state ``migrate``, which the engine
  refuses: never punch during a migration), anything else goes to QEMU through
  ``virDomainQemuMonitorCommand`` (``info mtree -f`` once per boot, ``query-cpus-fast``).
"""

from __future__ import annotations

import json
import logging
import pwd
import threading
from typing import Any, Callable

from heapballoon.errors import HeapballoonError, KernelError, ReclaimError
from heapballoon.linux.pidfile import read_root_pid
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.hostd")

DEFAULT_URI = "qemu:///system"
LIBVIRT_QEMU_RUN_DIR = "/run/libvirt/qemu"  # libvirtd's (system) pid files: <domain>.pid
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


class LibvirtError(HeapballoonError):
    """libvirt is missing, does not answer, or refused a call."""


def import_binding():
    """The ``libvirt`` module, or LibvirtError saying how to get it."""
    try:
        import libvirt
    except ImportError as err:
        raise LibvirtError("libvirt's Python binding is not importable: apt-get install python3-libvirt "
                           "(`make venv` links it into .venv)") from err
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no printing to stderr
    return libvirt


def one_line(err: Exception) -> str:
    msg = err.get_error_message() if hasattr(err, "get_error_message") else str(err)
    return " ".join(str(msg or err).split())


def open_conn(uri: str):
    libvirt = import_binding()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise LibvirtError(f"cannot connect to libvirt at {uri}: {one_line(err)}") from err


def lookup(conn, name: str):
    libvirt = import_binding()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        raise LibvirtError(f"no libvirt domain {name!r}: {one_line(err)}") from err


def dac_uid(label: str | None) -> int | None:
    """The uid of libvirt's DAC label (``+64055:+107`` or ``libvirt-qemu:kvm``), None if unknown."""
    user = (label or "").split(":", 1)[0].strip()
    if user.startswith("+") and user[1:].isdigit():
        return int(user[1:])
    if user.isdigit():
        return int(user)
    if not user:
        return None
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _is_domain_qemu(pid: int, uuid: str, qemu_uid: int | None, procfs: ProcFS) -> bool:
    """``pid`` is a live QEMU started for ``uuid`` and runs as libvirt's QEMU user
    (``qemu_uid``, from the domain's DAC label; root only when the label is missing). A process
    that names the uuid but runs as anyone else (a local user's fake ``qemu -uuid <victim>``)
    is refused, logged once."""
    try:
        argv = procfs.cmdline(pid)
    except KernelError:
        return False
    if not argv or "qemu" not in argv[0].rsplit("/", 1)[-1]:
        return False
    if not any(a == "-uuid" and b.lower() == uuid.lower() for a, b in zip(argv, argv[1:])):
        return False
    try:
        uid = procfs.euid_egid(pid)[0]
    except KernelError:
        return False
    want = 0 if qemu_uid is None else qemu_uid
    if uid != want:
        if (pid, uuid) not in _refused:
            if len(_refused) >= MAX_REFUSED_LOGGED:  # bounded: a flood of fakes logs again, no more
                _refused.clear()
            _refused.add((pid, uuid))
            log.warning("process %d claims libvirt domain %s (-uuid) but runs as uid %d, not libvirt's "
                        "QEMU user (uid %d); ignored", pid, uuid, uid, want)
        return False
    return procfs.alive(pid)


MAX_REFUSED_LOGGED = 1024
_refused: set[tuple[int, str]] = set()  # (pid, uuid) already logged


def qemu_pid(uuid: str, procfs: ProcFS | None = None, *, name: str = "", qemu_uid: int | None = None,
             pid_dir: str = LIBVIRT_QEMU_RUN_DIR) -> int:
    """The pid of the live QEMU process that runs the domain with ``uuid`` (0 if none).

    The pid comes from libvirt's own pid file ``<pid_dir>/<name>.pid`` when there is one (root's,
    in a root-only directory: see linux.pidfile); only without it is /proc scanned for a QEMU
    naming the uuid. Either way the process must name ``-uuid <uuid>`` and run as libvirt's QEMU
    user ``qemu_uid`` (:func:`dac_uid` of the live XML's DAC label): anyone can start a process
    called ``qemu`` with someone else's uuid, and hostd would open that process's memory file
    and renice its threads."""
    procfs = procfs or ProcFS()
    if name:
        try:
            pid = read_root_pid(pid_dir, f"{name}.pid")
        except KernelError:
            pid = 0  # no pid file (libvirt elsewhere, or an unprivileged one): scan below
        if pid:
            return pid if _is_domain_qemu(pid, uuid, qemu_uid, procfs) else 0
    try:
        pids = procfs.pids()
    except KernelError:
        return 0
    return next((pid for pid in pids if _is_domain_qemu(pid, uuid, qemu_uid, procfs)), 0)


class EventThread:
    """libvirt's default event loop in one daemon thread; ``on_event(kind, domain_name, detail)``
    is called from that thread for every event (``kind``: ``lifecycle``, ``migration``, ``job``,
    ``closed``). Register before opening the connections it should serve."""

    _started = False
    _lock = threading.Lock()

    @classmethod
    def ensure(cls) -> None:
        libvirt = import_binding()
        with cls._lock:
            if cls._started:
                return
            libvirt.virEventRegisterDefaultImpl()

            def run() -> None:
                while True:
                    libvirt.virEventRunDefaultImpl()

            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            cls._started = True


def watch(conn, on_event: Callable[[str, str, str], None]) -> list[int]:
    """Register lifecycle/migration/job events and the close callback on ``conn`` (after
    :meth:`EventThread.ensure`); the callback ids."""
    libvirt = import_binding()
    ids = [
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    lambda _c, dom, ev, det, _o: on_event("lifecycle", dom.name(), f"{ev}:{det}"), None),
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
                                    lambda _c, dom, it, _o: on_event("migration", dom.name(), str(it)), None),
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                    lambda _c, dom, _p, _o: on_event("job", dom.name(), "completed"), None),
    ]
    conn.registerCloseCallback(lambda _c, reason, _o: on_event("closed", "", str(reason)), None)
    conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return ids


def lifecycle_name(detail: str) -> str:
    """``"5:0"`` (event:detail numbers) → ``stopped``, ``started``... for logs."""
    names = ("defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown",
             "pmsuspended", "crashed")
    try:
        return names[int(detail.split(":")[0])]
    except (ValueError, IndexError):
        return detail


def migrating(dom) -> bool:
    """True while a migration job runs on ``dom`` (in either direction)."""
    libvirt = import_binding()
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        return False
    op = stats.get("operation")
    return stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE and op in (
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN, libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)


class DomainMonitor:
    """``execute(cmd, arguments)`` for the reclaim engines, through libvirt (see module doc).
    ``migration_flag()``: hostd's own view (migration events seen and not ended)."""

    events = None  # libvirt hands out no QEMU STOP/RESUME timestamps

    def __init__(self, uri: str, uuid: str, migration_flag: Callable[[], bool] = lambda: False) -> None:
        self.uri, self.uuid, self.migration_flag = uri, uuid, migration_flag
        self._conn = None
        self._dom = None
        self._resumes = 0

    def resume_count(self) -> int:
        """For the pause path's look before each punch (host.resumeguard): one more each time
        libvirt does not see the domain paused. libvirt learns of a resume when QEMU answers
        its ``cont`` or sends RESUME, a little after QEMU restarted the vCPUs: a wider window
        than hostd's own QMP socket has (docs/vm.md)."""
        libvirt = import_binding()
        try:
            state, _reason = self._dom.state()
        except libvirt.libvirtError as err:
            raise ReclaimError(f"libvirt state of domain {self.uuid}: {one_line(err)}") from err
        if state != libvirt.VIR_DOMAIN_PAUSED:
            self._resumes += 1
        return self._resumes

    def __enter__(self) -> DomainMonitor:
        libvirt = import_binding()
        self._conn = open_conn(self.uri)
        try:
            self._dom = self._conn.lookupByUUIDString(self.uuid)
        except libvirt.libvirtError as err:
            self.close()
            raise ReclaimError(f"domain {self.uuid} is gone: {one_line(err)}") from err
        return self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a dead connection closes anyway
                pass
            self._conn = self._dom = None

    def __exit__(self, *exc) -> None:
        self.close()

    def balloon(self, set_actual_bytes: int | None, stats_period_s: int | None) -> tuple[dict, dict]:
        """heapballoon.qemu.monitor.Monitor's ``balloon`` through libvirt's API (:func:`balloon_query`)."""
        return balloon_query(self.uri, self.uuid, set_actual_bytes, stats_period_s)

    def _status(self) -> str:
        libvirt = import_binding()
        if self.migration_flag() or migrating(self._dom):
            return "migrate"
        state, reason = self._dom.state()
        if state == libvirt.VIR_DOMAIN_RUNNING:
            return "running"
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return "paused" if reason == libvirt.VIR_DOMAIN_PAUSED_USER else f"paused-{reason}"
        return f"state-{state}"

    def execute(self, cmd: str, arguments: dict | None = None) -> Any:
        libvirt = import_binding()
        try:
            if cmd == "query-status":
                return {"status": self._status()}
            if cmd == "stop":
                self._dom.suspend()
                return {}
            if cmd == "cont":
                self._dom.resume()
                return {}
            import libvirt_qemu

            if cmd == "human-monitor-command":
                return libvirt_qemu.qemuMonitorCommand(self._dom, (arguments or {})["command-line"],
                                                       libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            req = {"execute": cmd, **({"arguments": arguments} if arguments else {})}
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(self._dom, json.dumps(req), 0))
        except libvirt.libvirtError as err:
            raise ReclaimError(f"libvirt {cmd} on domain {self.uuid}: {one_line(err)}") from err
        if "error" in reply:
            raise ReclaimError(f"QEMU {cmd} failed: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")


def balloon_query(uri: str, uuid: str, set_actual_bytes: int | None, stats_period_s: int | None) -> tuple[dict, dict]:
    """A domain's virtio-balloon through libvirt's API (libvirt owns its monitor), answered in
    the shape of QMP's ``query-balloon`` and ``qom-get guest-stats`` so host.virtioballoon parses
    one format. ``stats_period_s``: turn the guest's statistics on first
    (virDomainSetMemoryStatsPeriod); ``set_actual_bytes``: first ask for that guest size
    (virDomainSetMemoryFlags, live). Blocking: hostd calls it in a worker thread."""
    libvirt = import_binding()
    conn = open_conn(uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        if stats_period_s:
            dom.setMemoryStatsPeriod(int(stats_period_s), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if set_actual_bytes is not None:
            dom.setMemoryFlags(max(1, int(set_actual_bytes) >> 10), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        raw = dom.memoryStats()
    except libvirt.libvirtError as err:
        raise ReclaimError(f"libvirt balloon of domain {uuid}: {one_line(err)}") from err
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dead connection closes anyway
            pass
    return stats_as_qmp(raw)


def stats_as_qmp(raw: dict) -> tuple[dict, dict]:
    """virDomainMemoryStats (KiB; ``usable`` is the guest's MemAvailable, ``available`` the RAM
    its kernel manages, ``last_update`` seconds since the epoch) as QMP's answers (bytes, -1 for
    a statistic the guest did not send)."""

    def kib(key: str) -> int:
        v = raw.get(key)
        return v * 1024 if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else -1

    balloon = {"actual": kib("actual")} if kib("actual") >= 0 else {}
    stats = {"stats": {"stat-free-memory": kib("unused"), "stat-available-memory": kib("usable"),
                       "stat-total-memory": kib("available"), "stat-disk-caches": kib("disk_caches")},
             "last-update": raw.get("last_update", 0)}
    return balloon, stats

