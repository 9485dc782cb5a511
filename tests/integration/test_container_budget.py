"""Issue 18's first "Done when", tried as a new user would: a JVM in a container near its memory
limit, attached after it started, whose idle heap gives way when a sidecar fills the container's
tmpfs: no OOM kill, the write succeeds, the JVM's data intact.

The container is plain namespaces: ``unshare --pid --mount --fork --mount-proc`` with tmpfs
mounts on /tmp and ~/.cache inside (private), in a v1 memory cgroup laid out as the kubelet's
with a 1150 MiB limit on the container. The JVM: ``-Xms1g -Xmx1g -XX:+AlwaysPreTouch``, the
ChurnApp with 150 MiB live and no churn (idle), started without the agent. The node daemon runs
``--policy auto`` with no budget (the host has gigabytes free: only the container's own limit
can ask anything). The sidecar joins the JVM's mount and pid namespaces (nsenter) and its
cgroup, and writes 250 MiB into the container's /tmp at 20 MiB/s.

``neighbour``: the same with an idle JVM outside the container on the node. The two share no
limited cgroup, so only a per-container budget (policy/groups.py) protects the container.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from containerbudget import (CID, LIMIT_BYTES, LIVE_MIB, MIB, MIN_FREE_BYTES, POD_UID, SIDECAR, SIDECAR_TIMEOUT_S,
                             Outcome, assert_gave_way, container_init)
from hbtest import JVM, PY, pod_cgroup, run_cli, wait_for

# serial: a memory cgroup near its limit and a sidecar writing at a set rate (cgroups, timing).
pytestmark = [pytest.mark.jvm, pytest.mark.root, pytest.mark.serial,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and memory cgroups")]

# The sidecar's Python, as the container sees it: the interpreter itself, not the venv's link to
# it (a checkout under /tmp, as CI's clone is, puts the venv inside the container's private /tmp).
SIDECAR_PY = os.path.realpath(PY)


@pytest.fixture
def demo_dir(artifacts):
    """The ChurnApp jar where the container sees it (/var/tmp: its /tmp and ~/.cache are its own)."""
    d = Path(tempfile.mkdtemp(prefix="hb-test-pods-", dir="/var/tmp"))
    d.chmod(0o755)
    shutil.copy(artifacts[2], d / "demo.jar")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def container_cgroup():
    """/hb-test-pods-PID/kubepods/burstable/pod<uid>/<container id>, the container limited."""
    with pod_cgroup("hb-test-pods", POD_UID, CID, LIMIT_BYTES) as g:
        yield g


@pytest.fixture
def container(demo_dir, container_cgroup):
    """Start the container's JVM (``start()``); killed with its namespace at teardown."""
    started: list[JVM] = []

    def start() -> tuple[JVM, int]:
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            pytest.skip("needs unshare(1) and nsenter(1) (util-linux)")
        inner = container_init(shutil.which("java"), f"{demo_dir}/demo.jar", str(Path.home() / ".cache"))
        proc = subprocess.Popen(
            ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inner],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=lambda: container_cgroup.add_pid(os.getpid()))
        j = JVM(proc)
        started.append(j)
        kids = wait_for(lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split(), 10,
                        what="the container's PID 1")
        return j, int(kids[0])

    yield start
    for j in started:
        j.stop()  # unshare dies: --kill-child takes the JVM with it
    wait_for(lambda: not container_cgroup.pids(), 20, 0.1, what="the container's cgroup empty")


def ready(j: JVM, live_mib: int) -> dict:
    return wait_for(lambda: next((x for x in j.lines if x.get("live_mib") == live_mib), None), 60, 0.2,
                    what=f"ChurnApp with {live_mib} MiB live (stdout {j.stdout_lines[-3:]}, "
                         f"stderr {j.stderr()[-300:]})")


@pytest.mark.parametrize("neighbour", [False, True], ids=["alone", "with an idle JVM outside on the node"])
def test_an_idle_jvms_heap_gives_way_to_a_sidecar_filling_the_containers_tmpfs(
        artifacts, container, container_cgroup, daemons, apps, neighbour):
    run_dir = Path(tempfile.mkdtemp(prefix="hb-test-pods-", dir="/run"))  # the host's /run: the container sees it
    try:
        d = daemons.start("--policy", "auto", sock=str(run_dir / "hb.sock"))
        if neighbour:
            other = apps.run(d, heap="512m", live_mib=50, churn_mib_per_s=0, name="neighbour")
            wait_for(lambda: d.jvm(other.pid), 30, 0.2, what="the neighbour JVM in status")
        j, pid = container()
        ready(j, LIVE_MIB)
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        assert not Path(f"/proc/{pid}/root{artifacts[0]}").exists()  # the agent jar is not in its namespace

        out = run_cli("attach", pid, "--name", "boxed", sock=d.sock)
        assert out.returncode == 0, out.stderr
        rec = wait_for(lambda: d.jvm(pid), 30, 0.2, what="the attached JVM in status")
        assert (rec["name"], rec["cgroup"]) == ("boxed", f"/{container_cgroup.name}")
        assert (rec["container_id"], rec["pod_uid"]) == (CID, POD_UID)

        gives_way(d, j, pid, container_cgroup,
                  ["nsenter", "--target", str(pid), "--mount", "--pid", "--", SIDECAR_PY, "-c", SIDECAR],
                  preexec_fn=lambda: container_cgroup.add_pid(os.getpid()))
        if neighbour:
            assert d.jvm(other.pid)["target_bytes"] == 0  # the node has room: the neighbour keeps its heap
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def gives_way(d, j: JVM, pid: int, cg, sidecar: list[str], **popen) -> None:
    """The issue's check, once the JVM joined: the policy takes the container under its limit
    minus minFree; ``sidecar`` (a command in the container and its cgroup) writes 250 MiB into
    its /tmp at 20 MiB/s; then :func:`containerbudget.assert_gave_way`."""
    # The policy keeps the container under its limit minus the margin before anything else runs.
    wait_for(lambda: cg.usage_bytes() <= LIMIT_BYTES - MIN_FREE_BYTES, 60, 0.5,
             what=f"container usage under limit − minFree (usage {cg.usage_bytes() // MIB} MiB)")

    fails_before = cg.failcnt()  # start-up (page cache, pre-touch) may have hit it
    side = subprocess.run(sidecar, capture_output=True, text=True, timeout=SIDECAR_TIMEOUT_S, **popen)
    written = Path(f"/proc/{pid}/root/tmp/sidecar.bin")
    h = hashlib.sha256()
    if written.exists():
        with open(written, "rb") as f:
            while block := f.read(MIB):
                h.update(block)

    oom = cg.oom_control()
    alive = j.proc.poll() is None and os.path.exists(f"/proc/{pid}")
    checks = j.last().get("checks", 0)
    if alive:
        j.send("check")
    after = wait_for(lambda: next((x for x in reversed(j.lines) if x.get("checks", 0) > checks), None), 60, 0.2,
                     what=f"a fresh check of the JVM's live data (stdout {j.stdout_lines[-4:]}, "
                          f"stderr {j.stderr()[-400:]!r})") if alive else {}
    held = d.jvm(pid)["reclaimed_bytes"] if alive else 0
    print(f"container usage {cg.usage_bytes() // MIB} MiB of {LIMIT_BYTES // MIB} MiB, "
          f"failcnt {fails_before} before the sidecar, {cg.failcnt()} after, "
          f"balloon reclaimed {held // MIB} MiB, "
          f"status {json.dumps({k: d.jvm(pid)[k] for k in ('target_bytes', 'target_reason')}) if alive else '-'}")
    assert_gave_way(Outcome(side.returncode, side.stderr, side.stdout, written.stat().st_size if written.exists()
                            else -1, h.hexdigest(), oom.oom_kill, oom.under_oom, alive, after, j.errors(), held))
    # memory.failcnt (usage hit the limit: the kernel had to reclaim) is reported, not
    # asserted: ~4300 in 2 of 17 runs on a loaded machine before free was taken ahead of the
    # group's growth (policy/groups.py), 0 in 14 of 14 since (docs/containers.md)
