"""`heapballoon attach` into JVMs that cannot read our agent: another user's, and a container's
(issue 18). Real JVMs run as ``nobody``; the agent jar and native library are in the session's
cache under pytest's root-only (0700) tmp, like root's ``~/.cache/heapballoon``; a real driver
runs with ``--socket-mode 666`` in a root-owned 0755 directory outside /tmp.

The "container" is plain namespaces: ``unshare --pid --mount --fork --mount-proc`` with a tmpfs
on /tmp inside (private /tmp), the JVM PID 1 there, run as nobody with ``setpriv``. The host's
other directories stay visible (the JDK, the test classes in /var/tmp, the driver in /run).
podman is not used: it is not installed here, and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from hbtest import SLEEPER, pod_cgroup, run_cli, wait_for

pytestmark = [pytest.mark.jvm, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run JVMs as nobody and namespaces")]

NOBODY = 65534
JAVA_FLAGS = ["-Xmx32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@pytest.fixture(scope="module")
def classes(java):
    """Sleeper.class in /var/tmp (a container with a private /tmp still sees it), readable by all."""
    d = Path(tempfile.mkdtemp(prefix="hb-attach-stage-", dir="/var/tmp"))
    d.chmod(0o755)
    (d / "Sleeper.java").write_text(SLEEPER)
    subprocess.run(["javac", "-d", str(d), str(d / "Sleeper.java")], check=True, timeout=60, capture_output=True)
    for p in d.iterdir():
        p.chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run_dir():
    """A root-owned 0755 directory outside /tmp for the driver's socket."""
    d = Path(tempfile.mkdtemp(prefix="hb-test-stage-", dir="/run"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def root_only(artifacts):
    """The agent's artifacts, checked to be out of nobody's reach (the case under test)."""
    jar, native, _ = artifacts
    here = Path(jar).resolve()
    assert any(not p.stat().st_mode & stat.S_IXOTH for p in here.parents), f"{jar} is readable by nobody"
    return jar, native


class NobodyJVM:
    def __init__(self, classes: Path, container: bool = False, host_path: Path | None = None) -> None:
        """``host_path``: the container gets a /run of its own, with only ``host_path`` (a
        directory under /run) bind-mounted in at the same path, as a Kubernetes hostPath volume."""
        java = [shutil.which("java"), *JAVA_FLAGS, "-cp", str(classes), "Sleeper"]
        if container:
            if not (shutil.which("unshare") and shutil.which("setpriv")):
                pytest.skip("needs unshare(1) and setpriv(1) (util-linux)")
            mounts = "mount -t tmpfs -o mode=1777 tmpfs /tmp"
            if host_path is not None:
                assert host_path.parent == Path("/run")
                mounts += (f" && mkdir /tmp/.hostpath && mount --bind {host_path} /tmp/.hostpath"
                           f" && mount -t tmpfs -o mode=755 tmpfs /run && mkdir {host_path}"
                           f" && mount --move /tmp/.hostpath {host_path} && rmdir /tmp/.hostpath")
            inner = f"{mounts} && exec setpriv --reuid=65534 --regid=65534 --clear-groups " + " ".join(java)
            cmd, ids = ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inner], {}
        else:
            cmd, ids = java, dict(user=NOBODY, group=NOBODY, extra_groups=[])
        self.proc = subprocess.Popen(cmd, cwd=classes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **ids)
        line = self.proc.stdout.readline()  # main() runs: signal handlers are installed by now
        assert line.strip() == "ready", f"JVM did not start: {self.proc.stderr.read()[-500:]}"
        self.pid = self.proc.pid
        if container:  # the JVM is unshare's child (PID 1 in its namespace)
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            assert len(kids) == 1, kids
            self.pid = int(kids[0])

    def stop(self) -> None:
        # The JVM itself: setpriv's uid change cleared the parent-death signal unshare set.
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.kill()
        self.proc.communicate(timeout=10)
        wait_for(lambda: not os.path.exists(f"/proc/{self.pid}"), 10, 0.05, what="the JVM gone")


@pytest.fixture
def jvm_factory():
    started = []

    def start(classes, container=False, host_path=None):
        j = NobodyJVM(classes, container, host_path)
        started.append(j)
        return j

    yield start
    for j in started:
        j.stop()


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return [pid]


def joined(d, pid: int, name: str):
    rec = wait_for(lambda: d.jvm(pid), 20, 0.2, what=f"JVM {pid} in the driver's status")
    assert rec["name"] == name
    return rec


def test_attach_into_nobodys_jvm_with_the_agent_in_a_root_only_cache(root_only, classes, run_dir, daemons,
                                                                     request, jvm_factory):
    existed = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("heapballoon-agent-")}
    d = daemons.start("--socket-mode", "666", sock=str(run_dir / "hb.sock"))
    j = jvm_factory(classes)
    out = run_cli("attach", j.pid, "--name", "nobodys", sock=d.sock)
    assert out.returncode == 0, out.stderr
    assert "a copy it can read" in out.stdout, out.stdout
    joined(d, j.pid, "nobodys")
    staged = Path(out.stdout.split("(from ", 1)[1].split(",", 1)[0])
    if staged.name not in existed:  # the copies stay for the JVM's life: ours to clean up after it
        request.addfinalizer(lambda: shutil.rmtree(staged, ignore_errors=True))
    s = staged.lstat()
    assert stat.S_ISDIR(s.st_mode) and (s.st_uid, stat.S_IMODE(s.st_mode)) == (0, 0o755)
    again = run_cli("attach", j.pid, "--name", "nobodys", sock=d.sock)  # the copy is reused as it is
    assert again.returncode == 0 and f"(from {staged}," in again.stdout, again.stdout + again.stderr


CID = "0123456789abcdef" * 4
POD_UID = "1a2b3c4d-5e6f-4a0b-9c8d-7e6f5a4b3c2d"


@pytest.fixture
def kubelet_cgroup():
    """A v1 memory cgroup laid out as the kubelet's (cgroupfs driver) under a test-only parent."""
    with pod_cgroup("hb-test-stage", POD_UID, CID) as g:
        yield g


@pytest.mark.parametrize("run", ["the host's /run", "its own /run, the socket's directory bind-mounted"])
def test_attach_into_a_container_with_its_own_pid_and_mount_namespace(root_only, classes, run_dir, daemons,
                                                                       kubelet_cgroup, jvm_factory, monkeypatch, run):
    d = daemons.start("--socket-mode", "666", sock=str(run_dir / "hb.sock"))
    c = jvm_factory(classes, container=True, host_path=run_dir if "bind" in run else None)
    if "bind" in run:  # the container's /run is not ours: only the socket's directory is the same
        theirs, ours = os.stat(f"/proc/{c.pid}/root/run"), os.stat("/run")
        assert (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)
        assert os.stat(f"/proc/{c.pid}/root{run_dir}").st_ino == run_dir.stat().st_ino
    kubelet_cgroup.add_pid(c.pid)
    assert nspid(c.pid)[-1] == 1 and os.stat(f"/proc/{c.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    out = run_cli("attach", c.pid, "--name", "boxed", sock=d.sock)
    assert out.returncode == 0, out.stderr
    rec = joined(d, c.pid, "boxed")  # the driver knows it by its host pid
    assert (rec["cgroup"], rec["container_id"], rec["pod_uid"]) == (f"/{kubelet_cgroup.name}", CID, POD_UID)
    monkeypatch.setenv("COLUMNS", "160")  # wide enough for the identity columns
    table = run_cli("status", sock=d.sock).stdout
    assert CID[:12] in table and POD_UID[:8] in table, table
    inside = Path(f"/proc/{c.pid}/root/tmp")
    assert stat.S_ISSOCK((inside / ".java_pid1").lstat().st_mode)  # its attach socket, by its namespace pid
    staged = [p for p in inside.iterdir() if p.name.startswith("heapballoon-agent-")]
    assert len(staged) == 1 and staged[0].lstat().st_uid == 0, staged


def test_attach_into_a_container_that_cannot_see_the_driver_socket_says_why(root_only, classes, daemons,
                                                                          jvm_factory):
    host_tmp = Path(tempfile.mkdtemp(prefix="hb-test-stage-sock-"))  # in the host's /tmp: not in the container's
    host_tmp.chmod(0o755)
    try:
        d = daemons.start("--socket-mode", "666", sock=str(host_tmp / "hb.sock"))
        c = jvm_factory(classes, container=True)
        out = run_cli("attach", c.pid, sock=d.sock)
        assert out.returncode != 0
        err = out.stderr.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert f"the driver socket {host_tmp}/hb.sock is not visible to PID {c.pid}" in err, err
        assert "docs/containers.md" in err
        assert [p.name for p in Path(f"/proc/{c.pid}/root/tmp").iterdir()
                if p.name.startswith("heapballoon-agent-")] == []  # nothing copied, nothing loaded
    finally:
        shutil.rmtree(host_tmp, ignore_errors=True)


@pytest.mark.parametrize("planted", ["symlink to a root-only directory", "nobody's directory with the agent in it"])
def test_what_the_jvms_user_planted_at_the_copy_name_is_never_followed(root_only, classes, run_dir, daemons,
                                                                       jvm_factory, planted):
    from heapballoon.agent import stage

    jar, native = root_only
    files = {Path(p).name: Path(p).read_bytes() for p in (jar, native) if p is not None}
    d = daemons.start("--socket-mode", "666", sock=str(run_dir / "hb.sock"))
    c = jvm_factory(classes, container=True)
    vault = Path(tempfile.mkdtemp(prefix="hb-vault-", dir="/var/tmp"))  # root-only, seen from inside too
    try:
        (vault / "secret").write_text("root only\n")
        (vault / "secret").chmod(0o600)
        at = Path(f"/proc/{c.pid}/root/tmp") / stage.stage_name(files)
        if planted.startswith("symlink"):
            os.symlink(vault, at)
            os.chown(at, NOBODY, NOBODY, follow_symlinks=False)
        else:
            at.mkdir()
            for name, data in files.items():
                (at / name).write_bytes(data)
            for p in [at, *at.iterdir()]:
                os.chown(p, NOBODY, NOBODY)
        before = at.lstat()
        out = run_cli("attach", c.pid, "--name", "boxed", sock=d.sock)
        assert out.returncode == 0, out.stderr
        assert f"(from /tmp/{at.name}-" in out.stdout, out.stdout  # a fresh directory of ours
        joined(d, c.pid, "boxed")
        assert sorted(p.name for p in vault.iterdir()) == ["secret"]
        assert (vault / "secret").read_text() == "root only\n"
        assert (vault.stat().st_uid, stat.S_IMODE(vault.stat().st_mode)) == (0, 0o700)
        after = at.lstat()
        assert (after.st_ino, after.st_uid, after.st_mode) == (before.st_ino, before.st_uid, before.st_mode)
    finally:
        shutil.rmtree(vault, ignore_errors=True)
