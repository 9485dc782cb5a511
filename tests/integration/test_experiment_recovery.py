"""A run killed with SIGKILL cannot clean up: its memory cgroups (with JVMs still running in
them), heapballoon's daemon and its swap file stay. `heapballoon experiment --clean` (and the
start of the next run) finds them, since their owner is dead, and removes them. Real JVMs, a
real cgroup, a real swap file; takes about a minute (marked ``experiment``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hbtest import require_java, require_root
from heapballoon.linux import cgroup, swap
from heapballoon.linux.procfs import ProcFS
from heapballoon.poll import wait_until

pytestmark = [pytest.mark.experiment, pytest.mark.jvm, pytest.mark.root, pytest.mark.timeout(300)]


def _groups(pid: int) -> list[cgroup.MemoryCgroup]:
    return [g for g in cgroup.groups(f"heapballoon-experiment-{pid}") if g.name.split("-")[2] == str(pid)]


def test_clean_removes_what_a_sigkilled_run_left(tmp_path):
    require_java()
    require_root()
    if not cgroup.v1_available():
        pytest.skip("no cgroup v1 memory controller on this machine (the experiment needs it)")
    procfs = ProcFS()
    proc = subprocess.Popen([sys.executable, "-m", "heapballoon", "experiment", "--out", str(tmp_path / "out"),
                             "--managers", "heapballoon", "--levels", "50", "--rounds", "1", "--cell-s", "60"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "w"))
    pid = proc.pid
    parent = cgroup.MemoryCgroup(f"heapballoon-experiment-{pid}")
    managers = cgroup.MemoryCgroup(f"heapballoon-experiment-{pid}-managers")
    swap_path = f"/var/tmp/heapballoon-experiment-{pid}.swap"
    left: list[int] = []
    try:
        # the heapballoon cell (after the unconstrained one): daemon and JVMs up
        def heapballoon_cell_up() -> bool:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            jvms = [p for p in parent.all_pids() if procfs.alive(p) and "java" in " ".join(procfs.cmdline(p))]
            return len(jvms) >= 3 and bool(managers.pids())

        wait_until(heapballoon_cell_up, 200, "the heapballoon cell's JVMs and daemon", interval_s=0.5)
        os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        left = parent.all_pids() + managers.pids()
        assert parent.exists() and managers.exists() and len(left) >= 4, left   # JVMs (and wrappers), daemon
        assert swap_path in swap.active_swaps()

        out = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--clean"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert f"removed cgroup {parent.path}" in text and f"removed cgroup {managers.path}" in text, text
        assert f"swapped off and deleted swap file {swap_path}" in text, text
        assert "killed" in text, text
        assert not _groups(pid)
        assert swap_path not in swap.active_swaps() and not os.path.exists(swap_path)
        assert not [p for p in left if procfs.alive(p)], "processes of the killed run still alive"

        again = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--clean"], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.strip() == "nothing to clean", again.stdout
    finally:  # whatever failed above: leave the machine as it was
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from heapballoon.experiment import leftovers

        leftovers.clean()
