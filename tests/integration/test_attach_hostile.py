"""`heapballoon attach` as root against a JVM whose user plants files where attach works
(issue 14 row 1): real JVMs run as ``nobody``, real symlinks and sockets in their cwd and /tmp.

What must hold: a root-only file that a planted ``.attach_pid<PID>`` symlink points at stays
root's (mode and owner unchanged), and the attach still works or says why in one line; a
``.java_pid<PID>`` socket that is not the JVM's own is never talked to.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

from heapballoon.agent.attach import attach_agent
from heapballoon.errors import AttachError
from hbtest import SLEEPER, wait_for

pytestmark = [pytest.mark.jvm, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a JVM as nobody")]

NOBODY = 65534
AGENT = """
import java.nio.file.*;
public class TestAgent {
    public static void agentmain(String args) throws Exception {
        Files.writeString(Path.of(args), "attached");
    }
}
"""
JAVA_FLAGS = ["-Xmx32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@pytest.fixture(scope="module")
def classes():
    if not (shutil.which("java") and shutil.which("javac")):
        pytest.skip("needs a JDK (java and javac on PATH)")
    d = Path(tempfile.mkdtemp(prefix="hb-attach-hostile-"))
    d.chmod(0o755)  # root's, readable by nobody
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


@pytest.fixture
def home(classes):
    """A directory of nobody's (the JVM's cwd, where nobody may plant files), and a root-only
    secret file next to it (0600, in a root-only directory)."""
    d = Path(tempfile.mkdtemp(prefix="hb-nobody-", dir=classes))
    os.chown(d, NOBODY, NOBODY)
    d.chmod(0o755)
    vault = Path(tempfile.mkdtemp(prefix="hb-vault-"))
    secret = vault / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    yield d, secret
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(vault, ignore_errors=True)


class JVM:
    def __init__(self, classes: Path, cwd: Path, as_nobody: bool = True) -> None:
        ids = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if as_nobody else {}
        self.proc = subprocess.Popen(["java", *JAVA_FLAGS, "-cp", str(classes), "Sleeper"], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **ids)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()  # main() runs: signal handlers are installed by now
        assert line.strip() == "ready", f"JVM did not start: {self.proc.stderr.read()[-500:]}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        for name in (f".java_pid{self.pid}", f".attach_pid{self.pid}"):
            Path("/tmp", name).unlink(missing_ok=True)


def plant_symlink(path: Path, target: Path) -> None:
    """What nobody would do: a symlink of its own at ``path``."""
    path.unlink(missing_ok=True)
    os.symlink(target, path)
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def still_roots(secret: Path) -> bool:
    st = secret.stat()
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600) and secret.read_text() == "root only\n"


def test_planted_attach_pid_symlink_in_cwd_does_not_give_nobody_a_root_file(classes, home):
    cwd, secret = home
    j = JVM(classes, cwd)
    try:
        plant_symlink(cwd / f".attach_pid{j.pid}", secret)
        marker = cwd / "marker"
        try:
            attach_agent(j.pid, str(classes / "agent.jar"), str(marker), timeout_s=10)
            attached = wait_for(marker.exists, 5, 0.01, what="the agent's marker")
        except AttachError as err:  # saying why, in one line, is the other allowed outcome
            assert "\n" not in str(err)
            attached = False
        assert still_roots(secret), "root's file was handed to nobody through the planted symlink"
        assert attached, "attach should still work: the planted symlink is replaced by a real trigger file"
        assert not os.path.lexists(cwd / f".attach_pid{j.pid}")  # our trigger file removed again
    finally:
        j.stop()


def test_planted_attach_pid_symlink_in_tmp_does_not_give_nobody_a_root_file(classes, home):
    cwd, secret = home
    j = JVM(classes, cwd)
    # nobody blocks the name in its cwd with a directory, so the trigger file goes to /tmp,
    # where nobody planted a symlink too
    (cwd / f".attach_pid{j.pid}").mkdir()
    os.chown(cwd / f".attach_pid{j.pid}", NOBODY, NOBODY)
    planted = Path(f"/tmp/.attach_pid{j.pid}")
    try:
        plant_symlink(planted, secret)
        marker = Path(tempfile.mkdtemp(prefix="hb-nobody-out-"))
        os.chown(marker, NOBODY, NOBODY)
        try:
            attach_agent(j.pid, str(classes / "agent.jar"), str(marker / "m"), timeout_s=10)
            assert wait_for((marker / "m").exists, 5, 0.01, what="the agent's marker")
        finally:
            shutil.rmtree(marker, ignore_errors=True)
        assert still_roots(secret)
        assert not os.path.lexists(planted)  # the planted symlink removed (not followed), our trigger too
    finally:
        planted.unlink(missing_ok=True)
        j.stop()


def test_trigger_file_is_not_put_into_a_root_owned_cwd_of_another_users_jvm(classes):
    j = JVM(classes, classes)  # nobody's JVM started in root's directory
    seen = []
    try:
        marker = Path(tempfile.mkdtemp(prefix="hb-nobody-out-"))
        os.chown(marker, NOBODY, NOBODY)
        stop = threading.Event()

        def watch():  # the trigger file lives only while attach waits: look for it meanwhile
            while not stop.is_set():
                if os.path.lexists(classes / f".attach_pid{j.pid}"):
                    seen.append(True)
                stop.wait(0.001)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            attach_agent(j.pid, str(classes / "agent.jar"), str(marker / "m"), timeout_s=10)
            assert wait_for((marker / "m").exists, 5, 0.01, what="the agent's marker")
        finally:
            stop.set()
            t.join(5)
            shutil.rmtree(marker, ignore_errors=True)
        assert seen == []  # made in /tmp instead: nothing of nobody's in a root-owned directory
    finally:
        j.stop()


def test_planted_java_pid_socket_of_another_user_is_not_trusted(classes, tmp_path):
    """A socket at /tmp/.java_pid<PID> that is not owned by the JVM's user is not its listener:
    a fake one that answers "loaded" must not be believed; the real listener is started."""
    j = JVM(classes, classes, as_nobody=False)  # root's JVM; nobody got its socket name in first
    path = Path(f"/tmp/.java_pid{j.pid}")
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    talked = []

    def serve():
        while True:
            try:
                conn, _ = fake.accept()
            except OSError:
                return
            talked.append(True)
            conn.recv(65536)
            conn.sendall(b"0\nreturn code: 0\n")
            conn.close()

    try:
        path.unlink(missing_ok=True)
        fake.bind(str(path))
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        fake.listen(4)
        threading.Thread(target=serve, daemon=True).start()
        marker = tmp_path / "marker"
        attach_agent(j.pid, str(classes / "agent.jar"), str(marker), timeout_s=10)
        assert wait_for(marker.exists, 5, 0.01, what="the agent's marker (the real JVM answered)")
        assert talked == []
        assert path.stat().st_uid == 0  # the JVM's own listener socket now
    finally:
        fake.close()
        j.stop()
