"""`heapballoon experiment --mode vm --quick --out DIR` as a user runs it: two real QEMU guests
(TCG here) per cell, each with a CacheService JVM reached through a port forward, the QEMU
processes in a real memory cgroup with a real swap file, hostd for the heapballoon managers.
The output directory is checked (the results.json schema and entries, the report, the plots)
and the machine is checked to be left as it was (no cgroup, no swap file, no QEMU, no hostd).

Throughput is only checked to be present and sane: the machine is shared and noisy.
Takes about 5 minutes (marked ``experiment``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from hbtest import RESULT_KEYS, png_size, require_root
from heapballoon.linux import cgroup, swap

pytestmark = [pytest.mark.experiment, pytest.mark.root, pytest.mark.timeout(600)]

MANAGERS = ("none", "heapballoon", "heapballoon+virtio")
def test_vm_mode_quick_writes_report_results_and_plots(tmp_path, vm_image, vm_accel):
    require_root()
    if not cgroup.v1_available():
        pytest.skip("no cgroup v1 memory controller on this machine (the experiment needs it)")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--mode", "vm", "--quick",
                           "--out", str(out), "--seed", "2"], capture_output=True, text=True, timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out / "report.md")
    print(proc.stderr[-2500:])

    doc = json.loads((out / "results.json").read_text())
    assert doc["seed"] == 2 and "--mode vm" in doc["command"] and doc["machine"]
    runs = doc["runs"]
    assert {(r["manager"], r["overcommit"]) for r in runs} == {(m, 50) for m in MANAGERS}
    assert doc["baseline"]["manager"] == "unconstrained" and doc["baseline"]["data_errors"] == 0
    for r in runs:
        assert RESULT_KEYS <= r.keys(), r
        assert r["mode"] == "vm" and r["guests"] == 2
        assert r["throughput_ratio"] is not None and 0 < r["throughput_ratio"] < 10, r
        assert r["latency_p99_ms"] is not None and r["latency_p99_ms"] > 0, r
        assert isinstance(r["oom_events"], int) and r["oom_events"] >= 0
        assert isinstance(r["swap_out_pages"], int) and r["swap_out_pages"] >= 0
        assert r["data_checks"] > 0, r           # the guest services really checked their data sets
        assert r["memory_given_bytes"] < 2 * r["guest_memory_bytes"] + 2 * doc["config"]["qemu_allowance_bytes"]
    for name in ("heapballoon", "heapballoon+virtio"):
        hb = next(r for r in runs if r["manager"] == name)
        assert hb["data_errors"] == 0, hb        # a data error is a bug, not noise
        assert hb["reclaimed_bytes_peak"] > 0, f"{name} reclaimed nothing at 50% overcommit"
        assert hb["oom_events"] == 0, hb

    report = (out / "report.md").read_text()
    assert "## 50% overcommit" in report and "## Where heapballoon loses" in report
    for name in MANAGERS:
        assert f"- **{name}**:" in report
    for name in ("memory.csv", "host.csv", "requests.csv"):
        assert len((out / name).read_text().splitlines()) > 10, name
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        width, height = png_size(png)
        assert width >= 400 and height >= 300 and png.stat().st_size > 20_000, png

    # nothing left behind: this run's swap file and cgroup (named by its pid: other runs may be on
    # the machine at the same time), its QEMUs and hostd
    pid = re.search(r"heapballoon-experiment-(\d+)\.swap", proc.stderr).group(1)
    assert not [p for p in swap.active_swaps() if f"heapballoon-experiment-{pid}." in p]
    assert not os.path.exists(f"/var/tmp/heapballoon-experiment-{pid}.swap")
    assert not [d for d in os.listdir(cgroup.MEMORY_V1_ROOT) if d.startswith(f"heapballoon-experiment-{pid}")]
    left = subprocess.run(["pgrep", "-f", "process=hb-hbx[0-9]"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"QEMU left running: {left.stdout}"
    left = subprocess.run(["pgrep", "-f", "heapballoon hostd --socket /tmp/hbv-"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"hostd left running: {left.stdout}"
