"""Helpers for tests that run real JVMs with the agent: a fake driver and a JVM process wrapper.

``FakeDriver`` owns a Unix socket server in a thread: it accepts agent connections, decodes
every line with ``heapballoon.protocol.decode`` (so a malformed agent message fails the test),
records hellos, states and events, and can send ``target`` messages.
JVMs are hbtest's (``jvms`` fixture: a JVMFactory), and polling is hbtest's ``wait_for``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heapballoon import protocol
from heapballoon.protocol import Event, Hello, State
from hbtest import JVMFactory, wait_for

MiB = 1 << 20


class FakeDriver:
    """A minimal driver: one listening socket, any number of agent connections, all recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.hellos: list[Hello] = []
        self.states: list[State] = []
        self.events: list[Event] = []
        self.bad_lines: list[str] = []
        self.conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.start()

    def start(self) -> None:
        if self.path.exists():
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(8)
        self._server = server
        t = threading.Thread(target=self._accept, args=(server,), daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Close the listener and every connection (a driver restart's first half)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = protocol.decode(line)
                except Exception:  # recorded; tests assert there are none
                    with self.lock:
                        self.bad_lines.append(line.decode(errors="replace")[:300])
                    continue
                with self.lock:
                    if isinstance(msg, Hello):
                        self.hellos.append(msg)
                    elif isinstance(msg, State):
                        self.states.append(msg)
                    elif isinstance(msg, Event):
                        self.events.append(msg)

    def send_target(self, target_bytes: int, reclaim: str = "ksm", headroom_bytes: int = 0) -> None:
        msg = protocol.encode(protocol.Target(target_bytes, reclaim, headroom_bytes))
        with self.lock:
            conns = list(self.conns)
        assert conns, "no agent connected"
        for c in conns:
            c.sendall(msg)

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.sendall(data)

    def last_state(self) -> State | None:
        """The newest full state (a hello carries one too)."""
        with self.lock:
            return self.states[-1] if self.states else (self.hellos[-1].state if self.hellos else None)

    def event_kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]

    def wait_state(self, predicate: Callable[[State], bool], timeout_s: float, what: str) -> State:
        def check():
            s = self.last_state()
            return s if s is not None and predicate(s) else None

        return wait_for(check, timeout_s, 0.05, what=what)


@pytest.fixture(scope="session")
def java() -> str:
    found = shutil.which("java")
    if not found or not shutil.which("javac"):
        print("SKIP reason: java/javac not on PATH")
        pytest.skip("java/javac not on PATH: the agent tests need a JDK 17+")
    return found


@pytest.fixture(scope="session")
def artifacts(java, tmp_path_factory):
    """(agent jar, native lib or None, demo jar), built once per session into a fresh cache."""
    from heapballoon.agent import build

    saved = os.environ.get("HEAPBALLOON_CACHE")
    os.environ["HEAPBALLOON_CACHE"] = str(tmp_path_factory.mktemp("hbcache"))
    try:
        yield build.agent_jar(), build.native_lib(), build.demo_jar()
    finally:
        if saved is None:
            os.environ.pop("HEAPBALLOON_CACHE", None)
        else:
            os.environ["HEAPBALLOON_CACHE"] = saved


@pytest.fixture
def driver(tmp_path):
    d = FakeDriver(tmp_path / "hb.sock")
    yield d
    d.stop()


@pytest.fixture
def jvms():
    """Start JVMs with ``jvms.start(args)``; all are stopped at teardown."""
    factory = JVMFactory()
    yield factory
    factory.teardown()


RAM_PAGES = 4096


@pytest.fixture
def ram():
    """A 16 MiB memfd as guest RAM, seen through the host's GuestRam (closed at teardown)."""
    from heapballoon.host.guestram import PAGE_BYTES, GuestRam

    fd = os.memfd_create("hb-test-ram")
    os.ftruncate(fd, RAM_PAGES * PAGE_BYTES)
    r = GuestRam(fd, RAM_PAGES * PAGE_BYTES)
    yield r
    r.close()
