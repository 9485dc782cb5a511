"""The experiment's pure parts: sizes, the interleaved plan, the phase shift, summaries, the
report's loss sentences; and the cgroup v1 adapter on a fixture tree."""

from __future__ import annotations

from heapballoon.experiment import config, metrics, report
from heapballoon.linux.cgroup import MemoryCgroup

MIB = 1 << 20


def test_memory_given_makes_the_heaps_exceed_it_by_the_level():
    cfg = config.quick("/tmp/x")
    heaps = cfg.services * cfg.heap_bytes
    allowance = cfg.services * cfg.nonheap_allowance_bytes
    assert cfg.given_bytes(0) == heaps + allowance
    assert abs(heaps / (cfg.given_bytes(50) - allowance) - 1.5) < 1e-6
    assert cfg.excess_bytes(0) == 0 and cfg.excess_bytes(50) == heaps // 3


def test_plan_starts_unconstrained_and_rotates_managers_per_level():
    cells = config.plan(config.quick("/tmp/x"))
    assert cells[0].manager == "unconstrained"
    assert [c.manager for c in cells[1:4]] == ["none", "cgroup-step", "heapballoon"]
    assert [c.manager for c in cells[4:7]] == ["cgroup-step", "heapballoon", "none"]
    assert [c.index for c in cells] == list(range(7))


def test_one_service_busy_at_a_time():
    cfg = config.quick("/tmp/x")
    for t in range(0, int(cfg.cell_s)):
        loads = [cfg.load(i, t + 0.5) for i in range(cfg.services)]
        assert loads.count(1.0) == 1, (t, loads)


def test_reaction_from_pressure_to_pages_freed():
    def rows(freed):
        return [{"t_s": t, "cgroup_limit_bytes": 100, "cgroup_bytes": b, "reclaimed_bytes": r}
                for t, b, r in zip(range(4), [50, 96, 95, 89], freed)]

    assert metrics.reaction_s(rows([0, 0, 0, 40 << 20])) == 2       # pressure at 1 s, 32 MiB freed at 3 s
    assert metrics.reaction_s(rows([40 << 20] * 4)) == 0            # freed before the pressure came
    assert metrics.reaction_s(rows([0, 0, 0, 0])) is None           # never freed (none)
    assert metrics.reaction_s([{**r, "cgroup_bytes": 10} for r in rows([40 << 20] * 4)]) is None  # no pressure


def test_losses_are_stated():
    base = {"overcommit": 50, "latency_p99_ms": 10, "oom_events": 0, "data_errors": 0, "manager_cpu_s": 0}
    runs = [{**base, "manager": "none", "throughput_ratio": 0.9},
            {**base, "manager": "heapballoon", "throughput_ratio": 0.8, "latency_p99_ms": 20}]
    lost = report.losses(runs)
    assert any("throughput" in s and "none" in s for s in lost)
    assert any("p99" in s for s in lost)
    assert report.losses([{**r, "throughput_ratio": 1, "latency_p99_ms": 10} for r in runs]) == []


def test_cgroup_adapter_on_a_fixture_tree(tmp_path):
    cg = MemoryCgroup("exp", str(tmp_path)).create()
    (tmp_path / "exp" / "memory.stat").write_text("rss 10\nswap 4096\npgmajfault 7\n")
    (tmp_path / "exp" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "exp" / "memory.usage_in_bytes").write_text("123\n")
    cg.set_limit_bytes(64 * MIB)
    assert (tmp_path / "exp" / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert cg.stat()["swap"] == 4096 and cg.oom_control().oom_kill == 2 and cg.usage_bytes() == 123
    child = cg.child("svc0").create()
    assert [c.name for c in cg.children()] == ["exp/svc0"] and child.exists()


def test_active_swaps_on_a_fixture_tree(tmp_path):
    from heapballoon.linux import swap

    (tmp_path / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/var/tmp/x.swap file 1024 0 -2\n")
    assert swap.active_swaps(str(tmp_path)) == ["/var/tmp/x.swap"]


def test_acceptance_line_is_issue_16s_bar():
    run = {"manager": "heapballoon", "overcommit": 50, "throughput_ratio": 0.95, "oom_events": 0, "data_errors": 0,
           "latency_p99_ms": 10.0, "swap_out_pages": 100}
    none = {**run, "manager": "none", "latency_p99_ms": 10.0, "swap_out_pages": 200, "oom_events": 0}
    assert "**met**" in report.acceptance([run, none])
    assert "**not met**" in report.acceptance([{**run, "oom_events": 1}, none])
    assert "**not met**" in report.acceptance([{**run, "latency_p99_ms": 11.5}, none])   # p99 > 1.1 x none's
    assert "**not met**" in report.acceptance([{**run, "swap_out_pages": 101}, none])    # more than half none's swap
    assert "**not met**" in report.acceptance([{**run, "throughput_ratio": 0.94}, none])
    assert "Not measured" in report.acceptance([]) and "Not measured" in report.acceptance([run])
    # without swap: heapballoon's OOM events decide, none's are shown
    off = report.acceptance([run, {**none, "oom_events": 2}], swap=False)
    assert "**met**" in off and "none has 2 OOM events" in off
    assert "**not met**" in report.acceptance([{**run, "oom_events": 1}, none], swap=False)


def test_plan_repeats_rounds_each_with_its_baseline_and_rotates_per_round():
    import dataclasses

    cfg = dataclasses.replace(config.quick("/tmp/x"), rounds=3)
    cells = config.plan(cfg)
    assert len(cells) == 3 * 7 and [c.index for c in cells] == list(range(21))
    for r in range(3):
        rc = [c for c in cells if c.round == r]
        assert rc[0].manager == "unconstrained" and len(rc) == 7
        assert {(c.manager, c.level_pct) for c in rc[1:]} == {(m, lv) for m in cfg.managers for lv in (0, 50)}
    firsts = [[c.manager for c in cells if c.round == r][1] for r in range(3)]
    assert len(set(firsts)) == 3, firsts  # each round starts level 0 with another manager


def test_full_run_fits_its_budget_and_defaults():
    cfg = config.full("/tmp/x")
    assert cfg.rounds == 3 and cfg.levels_pct == (0, 50, 100) and "self-sizing" in cfg.managers
    assert "heapballoon+self-sizing" in cfg.managers and cfg.consolidation
    assert len(config.plan(cfg)) == 3 * (1 + 3 * 5)
    assert config.estimated_s(cfg) <= config.FULL_BUDGET_S and cfg.cell_s % 3 == 0
    q = config.quick("/tmp/x")
    assert q.rounds == 1 and q.managers == config.QUICK_MANAGERS and config.estimated_s(q) < 300
    assert not q.consolidation and q.swap


def test_levels_and_managers_options_are_parsed_or_refused_in_one_line():
    import pytest

    from heapballoon.errors import UsageError

    assert config.parse_levels("0,50") == (0, 50)
    assert config.parse_managers("none,heapballoon") == ("none", "heapballoon")
    for bad in ("", "0,x", "-5", "0,0", "1000"):
        with pytest.raises(UsageError):
            config.parse_levels(bad)
    for bad in ("none,foo", "none,none"):
        with pytest.raises(UsageError):
            config.parse_managers(bad)


def test_rounds_aggregate_to_medians_with_per_round_values_and_range():
    from heapballoon.experiment import rounds

    def entry(manager, r, ratio, p99, oom, errors=0):
        return {"manager": manager, "mode": "process", "overcommit": 50, "order": 10 * r, "round": r,
                "throughput_ratio": ratio, "latency_p99_ms": p99, "oom_events": oom, "swap_out_pages": 100 * r,
                "data_errors": errors, "reaction_s": None, "manager_settings": "s", "manager_cpu_s": 0.1}

    entries = [entry("heapballoon", 0, 0.8, 30.0, 0), entry("none", 0, 0.5, 90.0, 1),  # noqa: E501
               entry("heapballoon", 1, 0.95, 10.0, 0, errors=2), entry("none", 1, 0.7, 50.0, 0),
               entry("heapballoon", 2, 0.9, 20.0, 1), entry("none", 2, 0.6, 70.0, 0)]
    runs = rounds.aggregate(entries)
    assert [r["manager"] for r in runs] == ["heapballoon", "none"]  # one entry per manager x level
    hb = runs[0]
    assert hb["throughput_ratio"] == 0.9 and hb["latency_p99_ms"] == 20.0 and hb["oom_events"] == 0
    assert hb["per_round"]["throughput_ratio"] == [0.8, 0.95, 0.9]
    assert hb["range"]["throughput_ratio"] == [0.8, 0.95] and hb["range"]["oom_events"] == [0, 1]
    assert hb["rounds_measured"] == 3 and hb["order"] == 0 and "round" not in hb and hb["reaction_s"] is None
    assert isinstance(hb["swap_out_pages"], int) and hb["swap_out_pages"] == 100
    # an even number of rounds: counts take the higher middle value, ratios the mean of the two
    two = rounds.aggregate(entries[:4])
    assert two[0]["throughput_ratio"] == 0.875 and two[0]["data_errors"] == 2
    # the bar: median throughput, but OOM events and data errors in every round
    assert "**not met**" in report.acceptance(runs)
    assert "medians of 3 rounds" in report.acceptance(runs)
    lost = report.losses(runs)
    assert not any("throughput" in s for s in lost)  # 0.9 against none's median 0.6


def test_report_shows_medians_with_ranges_and_says_when_heapballoon_lost_to_no_baseline(tmp_path):
    import dataclasses

    from heapballoon.experiment import rounds

    cfg = dataclasses.replace(config.quick(str(tmp_path)), rounds=3)

    def entry(manager, r, ratio, p99):
        return {"manager": manager, "mode": "process", "overcommit": 50, "order": r, "round": r,
                "throughput_ratio": ratio, "latency_p99_ms": p99, "oom_events": 0, "data_errors": 0,
                "swap_out_pages": 10 if manager == "heapballoon" else 100,
                "manager_cpu_s": 0.1, "memory_given_bytes": 984 * MIB, "manager_settings": f"{manager} settings"}

    entries = [entry(m, r, ratio, p99) for r in range(3)
               for m, ratio, p99 in (("none", 0.7 + r / 10, 50.0), ("heapballoon", 0.96 + r / 100, 20.0))]
    base = {"throughput_rps": 300.0, "latency_p99_ms": 5.0, "committed_heap_bytes": 1152 * MIB}
    doc = {"command": "c", "seed": 1, "machine": "m", "started": "s", "duration_s": 1, "rounds_run": 3,
           "runs": rounds.aggregate(entries), "baseline": base}
    text = report.write(cfg, doc, [])
    assert "| heapballoon | 0.97 (0.96–0.98) |" in text and "| none | 0.8 (0.7–0.9) |" in text
    assert "- heapballoon lost to no baseline." in text and "**met**" in text
    entries += [entry("heapballoon", 3, 0.1, 99.0)]  # a 4th round would not change the median much...
    slow = [dict(e, latency_p99_ms=80.0) if e["manager"] == "heapballoon" else e for e in entries[:6]]
    text = report.write(cfg, {**doc, "runs": rounds.aggregate(slow)}, [])
    assert "At 50% overcommit heapballoon's p99 latency (80.0 ms) is worse than none's (50.0 ms)." in text


def test_leftovers_of_a_dead_run_are_found_and_a_live_runs_are_kept(tmp_path):
    from heapballoon.experiment import leftovers

    class Procs:  # unit-level fake: 222 is a live run, 333 a PID reused by another program
        def alive(self, pid):
            return pid in (222, 333)

        def cmdline(self, pid):
            return ["python3", "-m", "heapballoon", "experiment"] if pid == 222 else ["sleep", "100"]

        def starttime(self, pid):
            return 1

        def pid_namespace(self, pid):
            return 1

        def boot_id(self):
            return "boot"

    cg_root, proc_root, swap_dir, tmp = (tmp_path / n for n in ("cg", "proc", "swapdir", "tmp"))
    for d in (cg_root, proc_root, swap_dir, tmp):
        d.mkdir()
    for name in ("heapballoon-experiment-111", "heapballoon-experiment-111-managers", "heapballoon-experiment-222",
                 "heapballoon-experiment-333", "other"):
        (cg_root / name / "svc0").mkdir(parents=True)
    (swap_dir / "heapballoon-experiment-111.swap").write_text("")
    (swap_dir / "heapballoon-experiment-222.swap").write_text("")
    (proc_root / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    (tmp / "hbx-111-abc").mkdir()
    (tmp / "hbx-222-abc").mkdir()
    done = leftovers.clean(str(swap_dir), str(cg_root), Procs(), str(tmp), str(proc_root))
    assert sorted(p.name for p in cg_root.iterdir()) == ["heapballoon-experiment-222", "other"]
    assert [p.name for p in swap_dir.iterdir()] == ["heapballoon-experiment-222.swap"]
    assert [p.name for p in tmp.iterdir()] == ["hbx-222-abc"]
    assert len(done) == 5 and all("111" in line or "333" in line for line in done)
    assert leftovers.clean(str(swap_dir), str(cg_root), Procs(), str(tmp), str(proc_root)) == []


def test_self_sizing_lets_g1_shrink_and_names_every_flag():
    from heapballoon.experiment import managers, workload

    cfg = config.full("/tmp/x")
    m = managers.make("self-sizing", "/tmp", "auto", "/tmp/log")
    args = m.jvm_args(cfg, 50)
    assert "-XX:SoftMaxHeapSize=256m" in args and "-XX:G1PeriodicGCInterval=2000" in args
    for a in args:
        flag = a.split("=")[0].lstrip("-").replace("XX:+", "").replace("XX:", "")
        assert flag.split("m")[0] in m.settings or flag[:3] in m.settings, (a, m.settings)
    cmd = workload.java_command(cfg, 0, "x.jar", args)
    assert cmd.index("-XX:InitialHeapSize=384m") < cmd.index("-jar")
    assert cmd.index("-Xms64m") > cmd.index("-Xms384m")  # later options win
    assert managers.make("none", "/tmp", "auto", "/tmp/log").jvm_args(cfg, 50) == []


def test_heapballoon_runs_the_proactive_policy_by_default(tmp_path):
    """Issue 16, swap off: with the budget alone the policy took nothing until the third JVM's
    pre-touch hit the limit (an OOM kill at 50 %); the experiment's default is what a user
    should run, the proactive mode."""
    from heapballoon.experiment import managers

    cfg = config.quick(str(tmp_path))
    assert cfg.policy == "proactive"
    m = managers.make("heapballoon", str(tmp_path), cfg.policy, str(tmp_path / "log"))
    cmd = m.daemon_command(cfg, 50)
    assert cmd[cmd.index("--memory-budget") + 1] == str(cfg.given_bytes(50))
    policy_file = cmd[cmd.index("--policy-file") + 1]
    from heapballoon.policy import load_config

    loaded = load_config(policy_file)
    assert loaded.proactive and loaded.interval_s == 0.5
    assert "proactive = true" in m.settings
    budget_only = managers.make("heapballoon", str(tmp_path / "b"), "auto", str(tmp_path / "log")).daemon_command(cfg, 50)
    assert "--policy-file" not in budget_only and "--memory-budget" in budget_only
