"""Dynamic attach against real JVMs (OpenJDK 17 here): a sleeping class, a tiny test agent.

The agent's ``agentmain(args)`` writes "attached" to the file named by ``args`` (or throws when
``args`` starts with "fail"), so a marker file proves the agent really ran inside the JVM.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from heapballoon.agent import attach as attach_mod
from heapballoon.agent.attach import attach_agent
from heapballoon.errors import AttachError, NotAJVM
from hbtest import SLEEPER, hold_for, wait_for

pytestmark = pytest.mark.jvm

AGENT = """
import java.nio.file.*;
public class TestAgent {
    public static void agentmain(String args) throws Exception {
        if (args.startsWith("fail")) throw new IllegalStateException("requested failure");
        Files.writeString(Path.of(args), "attached");
    }
}
"""
JAVA_FLAGS = ["-Xmx32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@pytest.fixture(scope="module")
def workdir():
    if not (shutil.which("java") and shutil.which("javac")):
        pytest.skip("needs a JDK (java and javac on PATH)")
    # Not under pytest's tmp_path: that is 0700, and one JVM runs as nobody.
    d = Path(tempfile.mkdtemp(prefix="hb-attach-it-"))
    d.chmod(0o777)
    (d / "Sleeper.java").write_text(SLEEPER)
    (d / "TestAgent.java").write_text(AGENT)
    subprocess.run(["javac", "-d", str(d), str(d / "Sleeper.java"), str(d / "TestAgent.java")],
                   check=True, timeout=60, capture_output=True)
    with zipfile.ZipFile(d / "agent.jar", "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nAgent-Class: TestAgent\n")
        z.write(d / "TestAgent.class", "TestAgent.class")
    for p in d.iterdir():
        p.chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class JVM:
    def __init__(self, workdir: Path, extra=(), **popen_kwargs) -> None:
        self.proc = subprocess.Popen(["java", *JAVA_FLAGS, *extra, "-cp", str(workdir), "Sleeper"],
                                     cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     **popen_kwargs)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()  # main() runs: signal handlers are installed by now
        assert line.strip() == "ready", f"JVM did not start: {self.proc.stderr.read()[-500:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        # SIGTERM: an orderly exit removes /tmp/.java_pid<pid>; SIGKILL would leave it behind.
        self.proc.terminate()
        try:
            out, _err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _err = self.proc.communicate(timeout=10)
        Path(f"/tmp/.java_pid{self.pid}").unlink(missing_ok=True)
        return out


@pytest.fixture(scope="module")
def jvm(workdir):
    j = JVM(workdir)
    yield j
    j.stop()


def appeared(path: Path, timeout_s: float = 5.0) -> bool:
    return wait_for(path.exists, timeout_s, 0.01, what=f"{path} to appear")


def test_attach_runs_agentmain_in_the_jvm(jvm, workdir):
    marker = workdir / f"marker-{jvm.pid}"
    t0 = time.monotonic()
    out = attach_agent(jvm.pid, str(workdir / "agent.jar"), str(marker), timeout_s=10)
    elapsed = time.monotonic() - t0
    print(f"first attach (SIGQUIT + listener start + load) took {elapsed * 1000:.0f} ms")
    assert out.startswith("return code: 0")
    assert appeared(marker) and marker.read_text() == "attached"
    assert not (workdir / f".attach_pid{jvm.pid}").exists()  # trigger file cleaned up
    assert jvm.alive()


def test_second_attach_reuses_the_listener(jvm, workdir, monkeypatch):
    attach_agent(jvm.pid, str(workdir / "agent.jar"), str(workdir / "warmup"))
    sent = []
    monkeypatch.setattr(attach_mod.os, "kill", lambda pid, sig: sent.append(sig))
    marker = workdir / "marker-again"
    attach_agent(jvm.pid, str(workdir / "agent.jar"), str(marker))
    assert appeared(marker)
    assert sent == []  # socket already present: no second SIGQUIT


def test_failing_agent_is_attach_error(jvm, workdir):
    with pytest.raises(AttachError, match="agentmain failed") as info:
        attach_agent(jvm.pid, str(workdir / "agent.jar"), "fail please")
    assert "\n" not in str(info.value)
    assert jvm.alive()


def test_not_a_jar_is_attach_error(jvm, workdir):
    with pytest.raises(AttachError, match="could not be opened or has no Agent-Class"):
        attach_agent(jvm.pid, str(workdir / "Sleeper.java"), "x")


def test_missing_jar_is_attach_error(jvm, workdir):
    with pytest.raises(AttachError, match="not visible"):
        attach_agent(jvm.pid, str(workdir / "nope.jar"), "x")


def test_sigquit_did_not_dump_threads(workdir):
    j = JVM(workdir)
    try:
        attach_agent(j.pid, str(workdir / "agent.jar"), str(workdir / "marker-fresh"))
        assert appeared(workdir / "marker-fresh")
    finally:
        out = j.stop()
    assert "Full thread dump" not in out  # the JVM took SIGQUIT as an attach request


def test_non_jvm_pid_is_not_a_jvm_and_is_not_signalled():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(NotAJVM, match=f"^PID {sleeper.pid} is not a Java virtual machine$"):
            attach_agent(sleeper.pid, "/nonexistent.jar")
        hold_for(lambda: sleeper.poll() is None, 0.5, 0.05, what="the non-JVM alive (SIGQUIT would kill it)")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nonexistent_pid_is_not_a_jvm():
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    with pytest.raises(NotAJVM, match=f"^no process with PID {pid}$"):
        attach_agent(pid, "/nonexistent.jar")


def test_jvm_with_xrs_is_refused_without_killing_it(workdir):
    # -Xrs: no SIGQUIT handler (the signal would terminate it). Such a JVM starts its attach
    # listener at startup instead; remove the socket so attach would need the signal.
    j = JVM(workdir, extra=["-Xrs"])
    try:
        socket_path = Path(f"/tmp/.java_pid{j.pid}")
        assert appeared(socket_path)
        socket_path.unlink()
        with pytest.raises(AttachError, match="does not handle SIGQUIT"):
            attach_agent(j.pid, str(workdir / "agent.jar"), "x", timeout_s=0.5)
        assert j.alive()
    finally:
        j.stop()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a JVM as another user")


@root_only
def test_root_attaches_to_a_jvm_of_another_user(workdir):
    j = JVM(workdir, user=65534, group=65534, extra_groups=[])
    try:
        marker = workdir / "marker-nobody"
        attach_agent(j.pid, str(workdir / "agent.jar"), str(marker))
        assert appeared(marker)
        assert marker.stat().st_uid == 65534  # written by the JVM's agent, as nobody
    finally:
        j.stop()


@root_only
def test_connect_as_presents_the_target_credentials():
    """The forked connect shows the JVM's uid/gid in SO_PEERCRED (what HotSpot checks)."""
    d = Path(tempfile.mkdtemp(prefix="hb-cred-"))
    d.chmod(0o777)
    path = str(d / "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(1)
    creds = {}

    def accept():
        conn, _ = server.accept()
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        creds.update(uid=uid, gid=gid)
        conn.sendall(b"hello")
        conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        sock = attach_mod._connect(path, 1, 65534, 65534, time.monotonic() + 5)
        # The passed descriptor arrives O_NONBLOCK (the child's timeout); with no timeout of its
        # own the socket would raise EAGAIN from recv() whenever it ran ahead of the server.
        assert sock.gettimeout() is not None and sock.gettimeout() > 0
        assert sock.recv(5) == b"hello"  # the parent owns the connected socket
        sock.close()
        t.join(5)
        assert creds == {"uid": 65534, "gid": 65534}
        assert os.geteuid() == 0 and os.getegid() == 0  # our own credentials untouched
    finally:
        server.close()
        shutil.rmtree(d, ignore_errors=True)


@root_only
def test_connect_as_failure_is_one_line():
    with pytest.raises(AttachError, match="as uid 65534: .*(No such file|not found)") as info:
        attach_mod._connect("/nonexistent/sock", 1, 65534, 65534, time.monotonic() + 2)
    assert "\n" not in str(info.value)
