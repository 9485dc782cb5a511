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


def test_acceptance_line():
    run = {"manager": "heapballoon", "overcommit": 50, "throughput_ratio": 0.95, "oom_events": 0, "data_errors": 0}
    assert "**met**" in report.acceptance([run])
    assert "**not met**" in report.acceptance([{**run, "oom_events": 1}])
    assert "Not measured" in report.acceptance([])
