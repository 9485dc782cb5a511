"""The consolidation sweep (N services in a fixed memory, per manager until it fails the SLO),
swap off (no swap file, swappiness 0, OOM kills counted in every child cgroup), the heap
configurations and the new options, without JVMs or root."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from heapballoon.errors import UsageError
from heapballoon.experiment import cli, config, consolidation, managers, report, runner, workload
from heapballoon.experiment.sandbox import Sandbox

MIB = 1 << 20


def test_fixed_memory_holds_two_services_and_more_services_mean_more_overcommit():
    cfg = config.full("/tmp/x")
    assert cfg.fixed_memory_bytes() == 2 * (cfg.heap_bytes + cfg.nonheap_allowance_bytes)
    levels = [config.consolidation_level_pct(cfg, n) for n in config.consolidation_counts(cfg)]
    assert levels[0] == 0 and levels == sorted(levels) and len(set(levels)) == len(levels)
    four = config.consolidation_cfg(cfg, 4)
    assert four.services == 4 and four.given_bytes(levels[2]) == cfg.fixed_memory_bytes()
    # each heap's share of the fixed memory, and the excess heapballoon's manual stand-in would take
    assert four.heap_share_bytes(0) == (cfg.fixed_memory_bytes() - 4 * cfg.nonheap_allowance_bytes) // 4
    assert four.excess_bytes(0) == 4 * cfg.heap_bytes - (cfg.fixed_memory_bytes() - 4 * cfg.nonheap_allowance_bytes)


def _entry(p99, oom=0, errors=0):
    return {"latency_p99_ms": p99, "oom_events": oom, "data_errors": errors}


def test_slo_is_p99_within_twice_the_baseline_no_oom_no_data_errors():
    assert consolidation.judge(_entry(20.0), 10.0).held
    v = consolidation.judge(_entry(20.1), 10.0)
    assert not v.held and "p99 20.1 ms > 2 × 10 ms" in v.reason
    assert "1 OOM event" in consolidation.judge(_entry(5.0, oom=1), 10.0).reason
    assert "3 data errors" in consolidation.judge(_entry(5.0, errors=3), 10.0).reason
    assert "no request served" in consolidation.judge(_entry(None), 10.0).reason


def test_sweep_stops_each_manager_at_its_first_failure_with_a_baseline_per_n():
    cfg = dataclasses.replace(config.full("/tmp/x"), managers=("none", "heapballoon", "self-sizing"))
    fails_at = {"none": 3, "heapballoon": 5, "self-sizing": 99}
    seen = []

    def measure(cell):
        seen.append(cell)
        if cell.manager == "unconstrained":
            return {"manager": cell.manager, "services": cell.services, "latency_p99_ms": 10.0, "round": cell.round}
        oom = 1 if cell.services >= fails_at[cell.manager] else 0
        return {"manager": cell.manager, "services": cell.services, "round": cell.round, **_entry(12.0, oom=oom)}

    entries, held = consolidation.sweep(cfg, 0, 100, measure)
    assert held == {"none": 2, "heapballoon": 4, "self-sizing": 5}
    assert [c.index for c in seen] == list(range(100, 100 + len(seen)))
    for n in (2, 3, 4, 5):  # each N starts with its own unconstrained baseline
        at = [c for c in seen if c.services == n]
        assert at[0].manager == "unconstrained"
    assert not [c for c in seen if c.manager == "none" and c.services > 3]  # left the sweep at 3
    failed = [e for e in entries if e.get("slo_met") is False]
    assert {e["manager"] for e in failed} == {"none", "heapballoon"} and all(e["baseline_p99_ms"] == 10.0 for e in failed)
    # round 2 starts another manager first
    seen.clear()
    consolidation.sweep(cfg, 1, 0, measure)
    assert seen[1].manager == "heapballoon"

    cons = consolidation.summarize(cfg, [held, {**held, "heapballoon": 3}, held], entries)
    assert cons["managers"]["heapballoon"]["held_services"] == 4 and cons["managers"]["heapballoon"]["range"] == [3, 4]
    assert cons["managers"]["heapballoon"]["vs_none"] == 2.0 and cons["managers"]["none"]["vs_none"] == 1.0
    assert cons["managers"]["none"]["failed_at"][0].startswith("3 services: 1 OOM event")
    text = "\n".join(report.consolidation_lines({"consolidation": cons}))
    assert "| self-sizing | 5 | 5, 5, 5 | 2.5× | held every N tried |" in text
    assert "Most services held: **self-sizing** (5)" in text and "none holds 2" in text
    assert "Not measured" in "\n".join(report.consolidation_lines({"consolidation": None}))
    tie = consolidation.summarize(cfg, [{m: 2 for m in cfg.managers}], entries)
    assert "Every manager held 2" in "\n".join(report.consolidation_lines({"consolidation": tie}))


def test_wins_and_losses_name_the_best_and_the_failing():
    runs = [{"manager": "none", "overcommit": 50, "latency_p99_ms": 30.0, "swap_out_pages": 500, "oom_events": 2,
             "data_errors": 0},
            {"manager": "heapballoon", "overcommit": 50, "latency_p99_ms": 10.0, "swap_out_pages": 100, "oom_events": 0,
             "data_errors": 0}]
    lines = report.wins_and_losses(runs)
    assert "At 50%: best p99 **heapballoon** (10.0 ms), worst heapballoon (10.0 ms), of those with 0 OOM events." in lines
    assert "At 50%: least swap-out **heapballoon** (100 pages)." in lines
    assert any("none (2 OOM events" in s for s in lines)
    everyone = report.wins_and_losses([dict(r, oom_events=1, cgroup_swap_peak_bytes=0) for r in runs])
    assert "At 50%: every manager had OOM events; p99 ranks none of them." in everyone
    assert not any("swap-out" in s for s in everyone)  # no swap in the services' cgroup: nothing to rank


def test_swap_off_makes_no_swap_file_and_sets_swappiness_zero(tmp_path):
    cg = tmp_path / "cg"
    cg.mkdir()
    box = Sandbox(1 << 30, str(tmp_path), cgroup_root=str(cg), swap_on=False)
    box.parent.create()
    box.parent.set_swappiness(0)
    children = box.cell_cgroups(3, 900 * MIB)
    assert [(cg / c.name / "memory.swappiness").read_text() for c in children] == ["0"] * 3
    assert (cg / box.parent.name / "memory.limit_in_bytes").read_text() == str(900 * MIB)
    # v1 counts an OOM kill only in the victim's own group: the children are summed
    (cg / box.parent.name / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    for i, kills in enumerate((0, 2, 1)):
        (cg / children[i].name / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
    assert box.oom_kills() == 3
    cg_on = tmp_path / "cg-on"
    cg_on.mkdir()
    with_swap = Sandbox(1 << 30, str(tmp_path), cgroup_root=str(cg_on))
    with_swap.parent.create()
    assert not [p for p in with_swap.cell_cgroups(1, None) if (cg_on / p.name / "memory.swappiness").exists()]


def test_heaps_production_pretouched_or_burst_and_self_sizing_labelled():
    cfg = config.quick("/tmp/x")
    cmd = workload.java_command(cfg, 0, "x.jar")
    assert "-XX:+AlwaysPreTouch" in cmd and cmd[cmd.index("--warmup-ms") + 1] == "0"
    assert "-Xms384m" in cmd and "-Xmx384m" in cmd and cmd[cmd.index("--touch-kib") + 1] == "256"
    burst = workload.java_command(dataclasses.replace(cfg, heaps="burst"), 0, "x.jar")
    assert "-XX:-AlwaysPreTouch" in burst and burst[burst.index("--warmup-ms") + 1] == "4000"
    assert runner.heap_config(cfg, "none") == "-Xms = -Xmx, pre-touched"
    assert "small -Xms (64m" in runner.heap_config(cfg, "self-sizing")
    both = managers.make("heapballoon+self-sizing", "/tmp", "auto", "/tmp/log")
    assert both.with_agent and "-Xms64m" in both.jvm_args(cfg, 50) and "self-sizing" in both.settings
    assert managers.make("heapballoon", "/tmp", "auto", "/tmp/log").jvm_args(cfg, 50) == []


def _args(**kw):
    base = dict(seed=1, mode="process", quick=True, out="/tmp/x", levels=None, managers=None, rounds=None,
                cell_s=None, policy="auto", swap="on", heaps="pretouch", consolidation=None)
    return argparse.Namespace(**{**base, **kw})


def test_options_swap_heaps_consolidation_and_vm_rounds():
    cfg = cli.config_of(_args(swap="off", heaps="burst", consolidation="on"), "c")
    assert not cfg.swap and cfg.heaps == "burst" and cfg.consolidation
    assert not cli.config_of(_args(), "c").consolidation
    assert cli.config_of(_args(quick=False), "c").consolidation
    vm = cli.config_of(_args(mode="vm", rounds=3, swap="off"), "c")
    assert vm.rounds == 3 and not vm.swap
    with pytest.raises(UsageError, match="process mode only"):
        cli.config_of(_args(mode="vm", consolidation="on"), "c")
    with pytest.raises(UsageError, match="--rounds"):
        cli.config_of(_args(mode="vm", rounds=0), "c")
    assert cli.config_of(_args(settle_s=5.0), "c").settle_s == 5.0
    with pytest.raises(UsageError, match="--settle-s"):
        cli.config_of(_args(settle_s=-1.0), "c")
    with pytest.raises(UsageError, match="--cell-s"):  # five services need five 3 s slots
        cli.config_of(_args(consolidation="on", cell_s=12), "c")


def test_vm_mode_rounds_report_medians_per_manager_and_level():
    from heapballoon.experiment import vmconfig, vmmode

    cfg = dataclasses.replace(vmconfig.quick("/tmp/x"), rounds=3)
    cells = vmconfig.plan(cfg)
    assert len(cells) == 3 * (1 + len(cfg.managers)) and {c.round for c in cells} == {0, 1, 2}

    def entry(manager, r, p99):
        return {"manager": manager, "mode": "vm", "overcommit": 0 if manager == "unconstrained" else 50, "round": r,
                "order": r, "throughput_ratio": 1.0, "latency_p99_ms": p99, "oom_events": 0, "data_errors": 0}

    entries = [entry(m, r, p99) for r, p99s in enumerate(((10.0, 40.0), (30.0, 20.0), (20.0, 60.0)))
               for m, p99 in zip(("unconstrained", "heapballoon"), p99s)]
    doc = vmmode.results_doc(cfg, 0.0, entries)
    assert doc["rounds_run"] == 3 and len(doc["baselines"]) == 3 and len(doc["rounds"]) == 3
    assert doc["runs"][0]["latency_p99_ms"] == 40.0 and doc["runs"][0]["range"]["latency_p99_ms"] == [20.0, 60.0]
    assert doc["baseline"]["latency_p99_ms"] == 20.0
