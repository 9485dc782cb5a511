"""Helpers for tests that run real JVMs with the agent: a fake driver and a JVM process wrapper.

``FakeDriver`` owns a Unix socket server in a thread: it accepts agent connections, decodes
every line with ``heapballoon.protocol.decode`` (so a malformed agent message fails the test),
records hellos, states and events, and can send ``target`` messages.
``Jvm`` owns one JVM child process: start with the agent, read /proc figures, stop.
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

MiB = 1 << 20


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


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

        return wait_for(check, timeout_s, what)


class Jvm:
    """One JVM child process with the agent, plus the /proc views the tests need."""

    def __init__(self, args: list[str], stdin: bool = False) -> None:
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout_lines), (self.proc.stderr, self.stderr_lines)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def maps(self) -> list[tuple[int, int, str, str]]:
        """(start, end, perms, path) of every mapping."""
        out = []
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            fields = line.split(None, 5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, fields[1], fields[5] if len(fields) > 5 else ""))
        return out

    def read_mem(self, addr: int, size: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(addr)
            return f.read(size)

    def diagnostics(self) -> str:
        return ("\n--- JVM stderr ---\n" + "\n".join(self.stderr_lines[-30:])
                + "\n--- JVM stdout ---\n" + "\n".join(self.stdout_lines[-10:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


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
    """Start JVMs through this list's ``start``; all are stopped at teardown."""
    started: list[Jvm] = []

    class Starter:
        def start(self, args: list[str], stdin: bool = False) -> Jvm:
            jvm = Jvm(args, stdin)
            started.append(jvm)
            return jvm

    yield Starter()
    for jvm in started:
        jvm.stop()
