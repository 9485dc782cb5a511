"""Issue 18's first "Done when" with a podman container (test_container_budget.py has it with
plain namespaces, and the checks: :func:`gives_way`).

The container's root is the guest image's root disk (built from Debian packages and a jlinked
JRE by ``heapballoon.vm.image``, the same image the VM tests boot), copied out with debugfs and
run with ``podman run --rootfs DIR:O``: nothing is pulled from a registry. ``--memory 1150m``,
a tmpfs on /tmp, the driver's socket directory mounted at the same path, no network. The JVM
is the container's command (PID 1), started without the agent; ``heapballoon attach`` gets its
node pid from ``podman inspect``; the sidecar is ``podman exec ... python3`` (the image's).

This machine's specifics, in the podman command line: runc (crun refuses this machine's hybrid
cgroup layout), the cgroupfs manager (no systemd), and a containers.conf without podman's
default ulimits (root here lacks CAP_SYS_RESOURCE, and raising RLIMIT_NPROC fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from containerbudget import APP, JAVA, LIMIT_BYTES, SIDECAR
from hbtest import JVM, run_cli, wait_for
from test_container_budget import gives_way, ready

# serial: as test_container_budget.py, in podman (cgroups, timing).
pytestmark = [pytest.mark.jvm, pytest.mark.root, pytest.mark.serial,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for podman with memory limits")]

MIB = 1 << 20
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory):
    missing = [t for t in ("podman", "runc", "debugfs") if shutil.which(t) is None]
    if missing:
        print(f"SKIP reason: {', '.join(missing)} not installed")
        pytest.skip(f"needs {', '.join(missing)} (apt-get install podman runc e2fsprogs)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def rootfs(podman_env):
    """The guest image's root disk as a directory (under /var/tmp, removed after)."""
    from heapballoon.vm.image import build_image

    image = build_image(progress=False)
    d = Path(tempfile.mkdtemp(prefix="hb-test-podman-root-", dir="/var/tmp"))
    subprocess.run(["debugfs", "-R", f"rdump / {d}", str(image.rootdisk_path)], check=True, capture_output=True,
                   timeout=120)
    assert (d / "usr" / "bin" / "java").is_symlink() and (d / "usr" / "bin" / "python3").exists()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def podman_jvm(podman_env, rootfs, artifacts):
    """Start the container (``start(run_dir)``): JVM(podman run), node pid, container id."""
    name = f"hb-test-pods-{os.getpid()}"
    app = Path(tempfile.mkdtemp(prefix="hb-test-podman-app-", dir="/var/tmp"))
    shutil.copy(artifacts[2], app / "demo.jar")
    started: list[JVM] = []

    def start(run_dir: Path) -> tuple[JVM, int, str]:
        proc = subprocess.Popen(
            [*PODMAN, "run", "-i", "--rm", "--name", name, "--network", "none", "--memory", f"{LIMIT_BYTES // MIB}m",
             "--tmpfs", "/tmp:rw,mode=1777", "-v", f"{app}:/app:ro", "-v", f"{run_dir}:{run_dir}",
             "--rootfs", f"{rootfs}:O", "/usr/bin/java", *JAVA, "-jar", "/app/demo.jar", *APP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env=podman_env)
        j = JVM(proc)
        started.append(j)

        def inspect():
            out = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.Pid}} {{.Id}}", name],
                                 capture_output=True, text=True, env=podman_env, timeout=30)
            pid, _, cid = out.stdout.strip().partition(" ")
            return (int(pid), cid) if out.returncode == 0 and pid.isdigit() and int(pid) > 0 else None

        pid, cid = wait_for(inspect, 60, 0.5, what=f"podman container {name} running (stderr {j.stderr()[-300:]})")
        return j, pid, cid

    yield start
    subprocess.run([*PODMAN, "rm", "-f", "-t", "0", name], capture_output=True, env=podman_env, timeout=60)
    for j in started:
        j.proc.wait(30)
    shutil.rmtree(app, ignore_errors=True)
    gone = subprocess.run([*PODMAN, "ps", "-a", "-q", "--filter", f"name={name}"], capture_output=True, text=True,
                          env=podman_env, timeout=30)
    assert gone.stdout.strip() == "", f"container {name} left behind"


def test_an_idle_jvms_heap_gives_way_in_a_podman_container(podman_env, podman_jvm, daemons):
    from heapballoon.linux.cgroup import MemoryCgroup

    run_dir = Path(tempfile.mkdtemp(prefix="hb-test-pods-", dir="/run"))
    try:
        d = daemons.start("--policy", "auto", sock=str(run_dir / "hb.sock"))
        j, pid, cid = podman_jvm(run_dir)
        ready(j, 150)
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino

        out = run_cli("attach", pid, "--name", "boxed", sock=d.sock)
        assert out.returncode == 0, out.stderr
        rec = wait_for(lambda: d.jvm(pid), 30, 0.2, what="the attached JVM in status")
        assert (rec["name"], rec["container_id"]) == ("boxed", cid)
        cg = MemoryCgroup(rec["cgroup"].lstrip("/"))
        assert cg.limit_bytes() == LIMIT_BYTES  # the status names the limited cgroup podman made

        gives_way(d, j, pid, cg, [*PODMAN, "exec", "-i", f"hb-test-pods-{os.getpid()}", "python3", "-c", SIDECAR],
                  env=podman_env)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
