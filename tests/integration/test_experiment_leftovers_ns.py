"""`heapballoon experiment --clean` and a live run in another pid namespace (issue 14 row 15).

A real second pid namespace (``unshare --pid --fork --mount-proc``): a process that is PID 1
there plays a run, ``heapballoon-experiment-1``, in a real v1 memory cgroup, with its owner
marker (or without one, as an older heapballoon's run). In our namespace PID 1 is alive and is
not heapballoon, so the old clean took the run for a dead one and SIGKILLed it. The cgroups
live under a test-only parent cgroup, so the machine's own experiment cgroups are never looked at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hbtest import require_root, wait_for
from heapballoon.experiment import leftovers
from heapballoon.linux import cgroup
from heapballoon.linux.cgroup import MemoryCgroup

pytestmark = [pytest.mark.root]

RUN = """
import os, sys, time
from heapballoon.experiment import leftovers
from heapballoon.linux.cgroup import MemoryCgroup
root, swap_dir, marker = sys.argv[1:]
if marker == "yes":
    leftovers.write_marker(swap_dir)
g = MemoryCgroup(f"heapballoon-experiment-{os.getpid()}", root).create()
g.add_pid(os.getpid())
print("ready", os.getpid(), flush=True)
time.sleep(60)
"""


@pytest.fixture
def test_root():
    require_root()
    if not cgroup.v1_available() or shutil.which("unshare") is None:
        pytest.skip("needs a cgroup v1 memory controller and unshare(1)")
    parent = MemoryCgroup(f"hb-test-leftovers-{os.getpid()}").create()
    yield parent
    for g in parent.children():
        leftovers.kill_cgroup(g, timeout_s=10)
    parent.remove()


@pytest.mark.parametrize("marker", ["yes", "no"])
def test_a_live_run_of_another_pid_namespace_is_not_killed(test_root, tmp_path, marker):
    swap_dir, tmp = tmp_path / "swap", tmp_path / "tmp"
    swap_dir.mkdir()
    tmp.mkdir()
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                             sys.executable, "-c", RUN, test_root.path, str(swap_dir), marker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.split() == ["ready", "1"], proc.stderr.read()[-2000:] if proc.poll() is not None else line
        run = MemoryCgroup("heapballoon-experiment-1", test_root.path)
        inside = wait_for(run.pids, 5, 0.01, what="the namespaced run in its cgroup")
        done = leftovers.clean(str(swap_dir), test_root.path, tmp_dir=str(tmp))
        assert run.exists() and run.pids() == inside, done  # not killed, not removed
        assert proc.poll() is None
        assert len(done) == 1 and done[0].startswith(leftovers.NOTE) and "another pid namespace" in done[0], done
        assert (swap_dir / leftovers.marker_name(1)).exists() == (marker == "yes")
    finally:
        proc.kill()
        proc.communicate(timeout=10)
