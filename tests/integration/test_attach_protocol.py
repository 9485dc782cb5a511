"""Attach protocol against a fake JVM: a fixture /proc tree plus a Python Unix-socket listener.

No JVM and no signals: ``os.kill`` is replaced wherever the code would send SIGQUIT.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from heapballoon.agent import attach as attach_mod
from heapballoon.agent.attach import _parse_load_reply, attach_agent
from heapballoon.errors import AttachError, NotAJVM
from heapballoon.linux.procfs import ProcFS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
PID = 4242  # fixture: a JVM in a container, NSpid "4242 1"
JAR = "/agents/heapballoon-agent.jar"


class FakeJVM:
    """A fixture /proc tree for PID 4242 owned by us, and an attach listener on demand."""

    def __init__(self, sigcgt: str | None = None) -> None:
        # Short base path: Unix socket paths are limited to 107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="hb-attach-"))
        proc = self.base / "proc"
        shutil.copytree(FIXTURES, proc)
        status = (proc / str(PID) / "status").read_text().splitlines()
        ids = {"Uid": os.geteuid(), "Gid": os.getegid()}
        out = []
        for line in status:
            key = line.split(":", 1)[0]
            if key in ids:
                line = f"{key}:\t" + "\t".join([str(ids[key])] * 4)
            if key == "SigCgt" and sigcgt is not None:
                line = f"SigCgt:\t{sigcgt}"
            out.append(line)
        (proc / str(PID) / "status").write_text("\n".join(out) + "\n")
        self.pid_dir = proc / str(PID)
        (self.pid_dir / "root" / "tmp").mkdir(parents=True)
        (self.pid_dir / "cwd").mkdir()
        jar = self.pid_dir / "root" / JAR.lstrip("/")
        jar.parent.mkdir(parents=True)
        jar.write_bytes(b"PK")
        self.procfs = ProcFS(str(proc))
        self.socket_path = str(self.pid_dir / "root" / "tmp" / ".java_pid1")
        self.requests: list[bytes] = []
        self.reply = b"0\nreturn code: 0\n"
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def listen(self) -> None:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.socket_path)
        self._server.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while data.count(b"\0") < 5:  # version, command, 3 arguments
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def jvm():
    fake = FakeJVM()
    yield fake
    fake.close()


@pytest.fixture
def no_kill(monkeypatch):
    sent = []
    monkeypatch.setattr(attach_mod.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def test_sends_protocol_v1_load_instrument_request(jvm, no_kill):
    jvm.listen()
    out = attach_agent(PID, JAR, "socket=/run/hb.sock,name=orders", procfs=jvm.procfs)
    assert out == "return code: 0\n"
    assert jvm.requests == [b"1\0load\0instrument\0false\0" + JAR.encode() + b"=socket=/run/hb.sock,name=orders\0"]
    assert no_kill == []  # socket already there: no signal


def test_empty_options_still_sends_three_arguments(jvm, no_kill):
    jvm.listen()
    attach_agent(PID, JAR, procfs=jvm.procfs)
    assert jvm.requests[0] == b"1\0load\0instrument\0false\0" + JAR.encode() + b"=\0"


def test_starts_listener_with_trigger_file_and_sigquit(jvm, monkeypatch):
    seen = {}

    def fake_kill(pid, sig):
        trigger = jvm.pid_dir / "cwd" / ".attach_pid1"  # named after the innermost NSpid
        seen["trigger_existed"] = trigger.exists()
        seen["signal"] = (pid, sig)
        jvm.listen()

    monkeypatch.setattr(attach_mod.os, "kill", fake_kill)
    attach_agent(PID, JAR, "x", timeout_s=5, procfs=jvm.procfs)
    assert seen == {"trigger_existed": True, "signal": (PID, signal.SIGQUIT)}
    assert not (jvm.pid_dir / "cwd" / ".attach_pid1").exists()  # cleaned up
    assert len(jvm.requests) == 1


def test_trigger_file_falls_back_to_target_tmp(jvm, monkeypatch):
    (jvm.pid_dir / "cwd").rmdir()  # cwd not reachable
    seen = {}

    def fake_kill(pid, sig):
        seen["tmp_trigger"] = (jvm.pid_dir / "root" / "tmp" / ".attach_pid1").exists()
        jvm.listen()

    monkeypatch.setattr(attach_mod.os, "kill", fake_kill)
    attach_agent(PID, JAR, procfs=jvm.procfs)
    assert seen == {"tmp_trigger": True}
    assert not (jvm.pid_dir / "root" / "tmp" / ".attach_pid1").exists()


def test_stale_socket_of_a_dead_jvm_is_replaced(jvm, monkeypatch):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(jvm.socket_path)  # bound, never listening: connect() gets ECONNREFUSED
    stale.close()
    sent = []

    def fake_kill(pid, sig):
        sent.append(sig)
        jvm.listen()  # would fail with EADDRINUSE had the stale file been left in place

    monkeypatch.setattr(attach_mod.os, "kill", fake_kill)
    assert attach_agent(PID, JAR, procfs=jvm.procfs) == "return code: 0\n"
    assert sent == [signal.SIGQUIT] and len(jvm.requests) == 1


def test_listener_that_never_starts_times_out(jvm, no_kill):
    with pytest.raises(AttachError, match="did not start its attach listener within 0.3 s"):
        attach_agent(PID, JAR, timeout_s=0.3, procfs=jvm.procfs)
    assert no_kill == [(PID, signal.SIGQUIT)]
    assert not (jvm.pid_dir / "cwd" / ".attach_pid1").exists()


def test_never_sigquits_a_jvm_without_handler(no_kill):
    fake = FakeJVM(sigcgt="0000000000000000")  # -Xrs, or still starting
    try:
        with pytest.raises(AttachError, match="does not handle SIGQUIT"):
            attach_agent(PID, JAR, timeout_s=0.2, procfs=fake.procfs)
        assert no_kill == []
    finally:
        fake.close()


def test_agent_load_failure_is_attach_error(jvm, no_kill):
    jvm.reply = b"0\nreturn code: 100\n"
    jvm.listen()
    with pytest.raises(AttachError, match="could not be opened or has no Agent-Class"):
        attach_agent(PID, JAR, procfs=jvm.procfs)


def test_missing_jar_is_reported_before_connecting(jvm, no_kill):
    jvm.listen()
    with pytest.raises(AttachError, match="not visible to PID 4242"):
        attach_agent(PID, "/agents/missing.jar", procfs=jvm.procfs)
    assert jvm.requests == []


def test_not_a_jvm_and_no_such_pid(jvm, no_kill):
    with pytest.raises(NotAJVM, match="^PID 777 is not a Java virtual machine$"):
        attach_agent(777, JAR, procfs=jvm.procfs)
    with pytest.raises(NotAJVM, match="^no process with PID 99999$"):
        attach_agent(99999, JAR, procfs=jvm.procfs)
    with pytest.raises(NotAJVM):
        attach_agent(0, JAR, procfs=jvm.procfs)
    assert no_kill == []


@pytest.mark.parametrize("reply,expected", [
    (b"0\nreturn code: 0\n", "return code: 0\n"),
    (b"0\n0\n", "0\n"),  # JDK 8: bare number
])
def test_parse_ok_replies(reply, expected):
    assert _parse_load_reply(1, reply) == expected


@pytest.mark.parametrize("reply,match", [
    (b"", "closed the attach connection without a reply"),
    (b"101\nOperation not supported\nmore\n", r"refused to load the agent \(status 101\): Operation not supported \| more"),
    (b"0\nreturn code: 102\n", "agentmain failed"),
    (b"0\nreturn code: -1\n", "Agent_OnAttach returned -1"),
    (b"0\nCould not find agent library instrument on the library path\n", "could not load the agent: Could not find"),
    (b"garbage", "unexpected attach reply"),
])
def test_parse_error_replies_are_one_line(reply, match):
    with pytest.raises(AttachError, match=match) as info:
        _parse_load_reply(1, reply)
    assert "\n" not in str(info.value)
