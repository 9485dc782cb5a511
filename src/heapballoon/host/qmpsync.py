"""A small synchronous QMP client for the pause path (one thread, one socket, no event loop).

This module owns the *blocking* QMP connection hostd's reclaim worker uses between ``stop``
and ``cont``: a plain Unix socket, JSON lines, ``qmp_capabilities`` once, then one command at
a time. Events QEMU sends meanwhile (``STOP``, ``RESUME``, ...) are kept in :attr:`SyncQMP.events`
(the last few, with QEMU's own timestamps: the pause as the guest saw it), and every ``RESUME``
(or ``WAKEUP``) is counted: :meth:`SyncQMP.resume_count` reads what QEMU has sent without
blocking, so the pause path sees another client's ``cont`` before it punches (QEMU writes the
RESUME event to every monitor before it restarts the vCPUs and devices). A command that timed
out closes the connection (a late answer would be taken for the next command's). With it the pause
path never waits on an asyncio loop that may be busy with other VMs, guest messages or
status requests. ``qemu.qmp`` (asyncio) stays in use everywhere else.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Any

from heapballoon.errors import ReclaimError

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


class SyncQMP:
    """``with SyncQMP(path) as q: q.execute("stop")``. Not thread safe: one user at a time."""

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)  # {"event": "STOP", "timestamp": ...}
        self.resumes = 0  # RESUME/WAKEUP events read on this connection
        self.stops = 0    # STOP events: a stop that found the VM running sends one before its answer

    def connect(self) -> SyncQMP:
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

    def __enter__(self) -> SyncQMP:
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
