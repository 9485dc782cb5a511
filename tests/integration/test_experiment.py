"""`heapballoon experiment --quick --out DIR` as a user runs it: real JVMs, a real memory cgroup,
a real swap file; the output directory is checked (files, the results.json schema, the plots)
and the machine is checked to be left as it was (no cgroup, no swap file, no JVM left).

The throughput figure is only checked to be present and sane: the machine is shared and noisy.
Takes about 4 minutes, the swap-off run (none and heapballoon) 1.5 more (marked ``experiment``; `make test` runs them as
their own phase).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hbtest import RESULT_KEYS, png_size, require_java, require_root
from heapballoon.linux import cgroup, swap

pytestmark = [pytest.mark.experiment, pytest.mark.jvm, pytest.mark.root, pytest.mark.timeout(600)]

def test_quick_experiment_writes_report_results_and_plots(tmp_path):
    require_java()
    require_root()
    if not cgroup.v1_available():
        pytest.skip("no cgroup v1 memory controller on this machine (the experiment needs it)")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "heapballoon", "experiment", "--quick", "--out", str(out),
                             "--seed", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=590)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = proc.pid  # the run's cgroups and swap file are named after it (other runs may share the machine)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip() == str(out / "report.md")

    doc = json.loads((out / "results.json").read_text())
    assert doc["seed"] == 3 and "--quick" in doc["command"] and doc["machine"]
    runs = doc["runs"]
    assert {(r["manager"], r["overcommit"]) for r in runs} == {
        (m, level) for m in ("none", "cgroup-step", "heapballoon") for level in (0, 50)}
    for r in runs:
        assert RESULT_KEYS <= r.keys(), r
        assert r["mode"] == "process"
        assert r["throughput_ratio"] is not None and 0 < r["throughput_ratio"] < 10, r
        assert r["latency_p99_ms"] is not None and r["latency_p99_ms"] > 0, r
        assert isinstance(r["oom_events"], int) and r["oom_events"] >= 0
        assert isinstance(r["swap_out_pages"], int) and r["swap_out_pages"] >= 0
        assert r["data_errors"] == 0, r          # a data error is a bug, not noise
        assert r["data_checks"] > 0, r           # the services really checked their data sets
    assert doc["rounds_run"] == 1 and len(doc["rounds"]) == len(runs) and len(doc["baselines"]) == 1
    for r in runs:
        assert r["rounds_measured"] == 1 and r["per_round"]["throughput_ratio"] == [r["throughput_ratio"]]
        assert r["heap_committed_end_bytes"] == 3 * 384 << 20, r  # -Xms = -Xmx: nothing shrinks the heaps
        assert r["services"] == 3 and r["heap_config"] == "-Xms = -Xmx, pre-touched", r
    hb50 = next(r for r in runs if r["manager"] == "heapballoon" and r["overcommit"] == 50)
    assert hb50["reclaimed_bytes_peak"] > 0, "heapballoon reclaimed nothing at 50% overcommit"

    assert doc["consolidation"] is None  # --quick leaves the sweep out (its time)
    report = (out / "report.md").read_text()
    assert report.index("## Consolidation") < report.index("## Where each manager wins and loses") < \
        report.index("## 0% overcommit")
    assert "## 0% overcommit" in report and "## 50% overcommit" in report
    assert "## Where heapballoon loses" in report
    assert ("is **met**" in report) != ("is **not met**" in report)
    for name in ("memory.csv", "host.csv", "requests.csv"):
        lines = (out / name).read_text().splitlines()
        assert len(lines) > 10, name
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        width, height = png_size(png)
        assert width >= 400 and height >= 300 and png.stat().st_size > 20_000, png

    # nothing of this run left behind (a cgroup that is gone held no process: its JVMs are gone)
    assert not [p for p in swap.active_swaps() if f"heapballoon-experiment-{run}." in p]
    assert not os.path.exists(f"/var/tmp/heapballoon-experiment-{run}.swap")
    assert not [d for d in os.listdir(cgroup.MEMORY_V1_ROOT) if d in (f"heapballoon-experiment-{run}",
                                                                       f"heapballoon-experiment-{run}-managers")]
    left = subprocess.run(["pgrep", "-f", "cacheservice.jar .*--seed 300[0-9] "], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"this run's JVMs left running: {left.stdout}"


def test_swap_off_counts_cgroup_oom_kills_and_the_run_goes_on(tmp_path):
    """Without swap, three pre-touched 384 MiB heaps cannot fit in the memory given at 50 %: under
    none the cgroup OOM-kills a JVM (v1 counts it in the victim's child group only); the cell is
    measured all the same, the report shows the kill, and nothing is left behind. heapballoon
    (its default, proactive policy) keeps all three: issue 16's swap-off bar. With the budget
    alone it took nothing until the third JVM's pre-touch hit the limit, and a JVM was killed."""
    require_java()
    require_root()
    if not cgroup.v1_available():
        pytest.skip("no cgroup v1 memory controller on this machine (the experiment needs it)")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "heapballoon", "experiment", "--levels", "50", "--managers", "none,heapballoon",
                             "--rounds", "1", "--cell-s", "9", "--swap", "off", "--consolidation", "off",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    by_manager = {r["manager"]: r for r in doc["runs"]}
    none, hb = by_manager["none"], by_manager["heapballoon"]
    assert none["overcommit"] == hb["overcommit"] == 50
    assert none["cgroup_oom_kills"] >= 1 and none["oom_events"] >= none["cgroup_oom_kills"], none
    assert none["swap_out_pages"] >= 0 and doc["config"]["swap"] is False
    assert doc["baseline"]["oom_events"] == 0  # unconstrained: nothing killed
    assert hb["oom_events"] == 0 and hb["services_died"] == 0 and hb["data_errors"] == 0, hb
    assert hb["reclaimed_bytes_peak"] > 0, hb  # its balloons made the room
    report = (out / "report.md").read_text()
    assert "swap: **off**" in report and "| none |" in report
    row = next(line for line in report.splitlines() if line.startswith("| none |"))
    assert f"| {none['oom_events']} | {none['cgroup_oom_kills']} |" in row
    assert not os.path.exists(f"/var/tmp/heapballoon-experiment-{proc.pid}.swap")  # none made, none left
    assert not [d for d in os.listdir(cgroup.MEMORY_V1_ROOT) if d.startswith(f"heapballoon-experiment-{proc.pid}")]


def test_bad_arguments_are_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--quick"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--out", str(tmp_path), "--seed", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "seed" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "heapballoon", "experiment", "--out", str(blocker / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "output directory" in proc.stderr
