"""heapballoon's one QMP client: the :class:`Monitor` interface, a blocking face and an asyncio face.

This module owns every conversation with a QEMU monitor socket. :class:`Monitor` is what hostd
needs of a VM's monitor — ``execute`` (stop, cont, query-status ...), ``resume_count`` /
``stop_count``, ``events``, and :meth:`Monitor.balloon` (the virtio-balloon: statistics on,
size, reading) — answered by :class:`QMPMonitor` on QEMU's socket and by libvirt's
``DomainMonitor`` (heapballoon.libvirt.conn) for domains whose monitor libvirt owns. The asyncio
face (:func:`connect_async`, :func:`execute_once`, qemu.qmp) serves the batch engine, the
VM launcher and the CLI.

:class:`QMPMonitor` is the *blocking* connection hostd's reclaim worker uses between ``stop``
and ``cont``: a plain Unix socket, JSON lines, ``qmp_capabilities`` once, then one command at
a time. Events QEMU sends meanwhile (``STOP``, ``RESUME``, ...) are kept in :attr:`QMPMonitor.events`
(the last few, with QEMU's own timestamps: the pause as the guest saw it), and every ``RESUME``
(or ``WAKEUP``) is counted: :meth:`QMPMonitor.resume_count` reads what QEMU has sent without
blocking, so the pause path sees another client's ``cont`` before it punches (QEMU writes the
RESUME event to every monitor before it restarts the vCPUs and devices). A command that timed
out closes the connection (a late answer would be taken for the next command's). With it the pause
path never waits on an asyncio loop that may be busy with other VMs, guest messages or
status requests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Protocol

from heapballoon.errors import ReclaimError, VMError

RECV_BYTES = 1 << 16
EVENTS_KEPT = 32
RESUME_EVENTS = ("RESUME", "WAKEUP")  # the VM runs again (cont by anyone; wake from S3)
MAX_BUFFERED_BYTES = 1 << 20  # a line longer than this from QEMU: the connection is dropped


def event_time_s(event: dict) -> float | None:
    """QEMU's timestamp of an event (its wall clock), in seconds."""
    ts = event.get("timestamp") or {}
    try:
        return int(ts["seconds"]) + int(ts["microseconds"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return None


BALLOON_DEVICE_PATH = "/machine/peripheral/balloon0"  # the virtio-balloon vm/launcher.py gives every guest


class Monitor(Protocol):
    """A VM's monitor as hostd uses it (``with vm.monitor(timeout_s) as m: ...``)."""

    events: Any  # QEMU's recent events with timestamps, or None (libvirt gives none)

    def __enter__(self) -> Monitor: ...

    def __exit__(self, *exc) -> None: ...

    def execute(self, cmd: str, arguments: dict | None = None) -> Any: ...

    def resume_count(self) -> int: ...

    def balloon(self, set_actual_bytes: int | None, stats_period_s: int | None) -> tuple[object, object]:
        """The virtio-balloon: statistics on every ``stats_period_s`` first (if given), ask for
        ``set_actual_bytes`` (if given), then ``(query-balloon, qom-get guest-stats)`` answers."""


class QMPMonitor:
    """``with QMPMonitor(path) as q: q.execute("stop")``. Not thread safe: one user at a time."""

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)  # {"event": "STOP", "timestamp": ...}
        self.resumes = 0  # RESUME/WAKEUP events read on this connection
        self.stops = 0    # STOP events: a stop that found the VM running sends one before its answer

    def connect(self) -> QMPMonitor:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            s.connect(self.path)
        except OSError as err:
            s.close()
            raise ReclaimError(f"cannot connect to QMP at {self.path}: {err.strerror or err}") from err
        self._sock = s
        self._buf = b""
        try:
            greeting = self._read_message()
            if "QMP" not in greeting:
                raise ReclaimError(f"QMP at {self.path}: unexpected greeting {greeting!r:.200}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> QMPMonitor:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_message(self) -> dict:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout_s
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                self.close()  # the answer may still come: it must not pass for the next one's
                raise ReclaimError(f"QMP at {self.path}: no answer in {self.timeout_s} s")
            try:
                chunk = self._sock.recv(RECV_BYTES)
            except OSError as err:  # socket.timeout is an OSError too
                self.close()
                raise ReclaimError(f"QMP at {self.path}: {type(err).__name__}: {err}") from err
            self._take(chunk)
        return self._next_line()

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            self.close()
            raise ReclaimError(f"QMP at {self.path}: connection closed by QEMU")
        self._buf += chunk
        nl = self._buf.find(b"\n")
        if (nl if nl >= 0 else len(self._buf)) > MAX_BUFFERED_BYTES:
            self.close()
            raise ReclaimError(f"QMP at {self.path}: a line over {MAX_BUFFERED_BYTES} bytes")

    def _next_line(self) -> dict:
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError as err:
            raise ReclaimError(f"QMP at {self.path}: not JSON: {line[:200]!r}") from err
        if not isinstance(msg, dict):
            raise ReclaimError(f"QMP at {self.path}: not an object: {line[:200]!r}")
        if "event" in msg:
            self.events.append(msg)
            if msg.get("event") in RESUME_EVENTS:
                self.resumes += 1
            elif msg.get("event") == "STOP":
                self.stops += 1
        return msg

    def stop_count(self) -> int:
        """STOP events so far (read with the answers: QEMU sends STOP before answering ``stop``)."""
        return self.stops

    def resume_count(self) -> int:
        """RESUME/WAKEUP events so far, after reading (without blocking) all QEMU has sent.
        Between commands QEMU sends events only; anything else is a ReclaimError."""
        if self._sock is None:
            raise ReclaimError(f"QMP at {self.path}: not connected")
        sock = self._sock
        sock.settimeout(0.0)  # with a timeout set, Python would wait for data before recv
        try:
            while True:
                try:
                    chunk = sock.recv(RECV_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as err:
                    self.close()
                    raise ReclaimError(f"QMP at {self.path}: {type(err).__name__}: {err}") from err
                self._take(chunk)
        finally:
            if self._sock is sock:  # not closed meanwhile
                sock.settimeout(self.timeout_s)
        while b"\n" in self._buf:
            if "event" not in self._next_line():
                self.close()
                raise ReclaimError(f"QMP at {self.path}: an answer to no command")
        return self.resumes

    def execute(self, cmd: str, arguments: dict | None = None) -> Any:
        """Run ``cmd``; its ``return`` value, or ReclaimError (QMP error, closed, timeout)."""
        if self._sock is None:
            raise ReclaimError(f"QMP at {self.path}: not connected")
        req: dict = {"execute": cmd}
        if arguments:
            req["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as err:
            raise ReclaimError(f"QMP {cmd} at {self.path}: {type(err).__name__}: {err}") from err
        while True:
            msg = self._read_message()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                e = msg["error"]
                raise ReclaimError(f"QMP {cmd} failed: {e.get('class', '?')}: {e.get('desc', e)}")
            # anything else is an event (STOP, RESUME, ...): kept by _next_line, not an answer

    def balloon(self, set_actual_bytes: int | None, stats_period_s: int | None) -> tuple[object, object]:
        """:meth:`Monitor.balloon` through QMP (``qom-set``, ``balloon``, ``query-balloon``, ``qom-get``)."""
        if stats_period_s:
            self.execute("qom-set", {"path": BALLOON_DEVICE_PATH, "property": "guest-stats-polling-interval",
                                     "value": int(stats_period_s)})
        if set_actual_bytes is not None:
            self.execute("balloon", {"value": int(set_actual_bytes)})
        return (self.execute("query-balloon"),
                self.execute("qom-get", {"path": BALLOON_DEVICE_PATH, "property": "guest-stats"}))


# ------------------------------------------------------------ the asyncio face (qemu.qmp)

async def connect_async(path: str | Path, name: str, timeout_s: float = 5.0):
    """A connected qemu.qmp ``QMPClient`` on ``path``; ReclaimError if it cannot connect."""
    from qemu.qmp import QMPClient  # heavy import, only when a VM needs it

    qmp = QMPClient(name)
    try:
        await asyncio.wait_for(qmp.connect(str(path)), timeout_s)
    except Exception as err:  # noqa: BLE001 - any failure to connect is the same to us
        await disconnect_async(qmp, timeout_s)
        raise ReclaimError(f"cannot connect to QMP at {path}: {type(err).__name__}: {err}") from err
    return qmp


async def disconnect_async(qmp, timeout_s: float = 5.0) -> None:
    try:
        await asyncio.wait_for(qmp.disconnect(), timeout_s)
    except Exception:  # noqa: BLE001 - a dead connection is gone anyway
        pass


async def execute_once(socket_path: str | Path, cmd: str, args: Mapping[str, object] | None = None,
                       timeout_s: float = 5.0) -> Any:
    """Connect to a QMP unix socket, run one command, disconnect. VMError on any failure.

    ``quit`` is special: QEMU may drop the connection before or right after answering,
    which counts as success.
    """
    from qemu.qmp import QMPError

    try:
        client = await connect_async(socket_path, "heapballoon", timeout_s)
    except ReclaimError as e:
        raise VMError(f"QMP connect to {socket_path} failed: {e}") from e
    try:
        return await asyncio.wait_for(client.execute(cmd, args), timeout_s)
    except (OSError, QMPError, asyncio.TimeoutError, EOFError) as e:
        if cmd == "quit":
            return {}
        raise VMError(f"QMP {cmd} failed: {e or type(e).__name__}") from e
    finally:
        await disconnect_async(client, timeout_s)


def execute_sync(socket_path: str | Path, cmd: str, args: Mapping[str, object] | None = None,
                 timeout_s: float = 5.0) -> Any:
    """Synchronous :func:`execute_once`; safe to call from inside a running event loop."""
    import concurrent.futures

    coro = execute_once(socket_path, cmd, args, timeout_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def hmp(socket_path: str | Path, command_line: str, timeout_s: float = 5.0) -> str:
    """A human-monitor command through QMP (``info mtree -f`` and friends)."""
    return str(execute_sync(socket_path, "human-monitor-command", {"command-line": command_line}, timeout_s))
