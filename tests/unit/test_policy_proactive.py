"""Issue 16: the proactive mode (policy/proactive.py) and JVM self-sizing (uncommitted heap)."""

from dataclasses import replace

import pytest

from heapballoon.policy import (
    HostObservation, Observations, PolicyConfig, PolicyConfigError, PolicyState, SourceObservation,
    WorkloadObservation, parse_config, tick,
)

MIB = 1 << 20
GIB = 1 << 30
HOST = HostObservation(mem_total_bytes=24 * GIB, mem_available_bytes=16 * GIB)
ON = PolicyConfig(proactive=True)


def jvm(key, unballooned, active, held=0, target=0, reclaimable=790 * MIB, gc_cost=None, uncommitted=0):
    return WorkloadObservation(key=key, name=key, kind="jvm", resident_bytes=unballooned - held,
                               sources=(SourceObservation("heap", reclaimable, held, target),),
                               active_fraction=active, gc_cost=gc_cost, uncommitted_bytes=uncommitted)


def test_the_file_turns_it_on_and_checks_its_keys():
    cfg = parse_config('proactive = true\nproactive_step = "64M"\nproactive_psi_some = 0.2\nproactive_gc_cost = 3\n')
    assert cfg.proactive and cfg.proactive_step_bytes == 64 * MIB
    assert cfg.proactive_psi_some == 0.2 and cfg.proactive_gc_cost == 3.0
    assert not PolicyConfig().proactive
    with pytest.raises(PolicyConfigError, match=r"line 1: proactive must be true or false, got 'yes'"):
        parse_config('proactive = "yes"\n')


def test_without_pressure_it_takes_half_the_idle_heap_left_a_tick_idle_first():
    """Issue 16 with real JVMs: at 32 MiB a tick the balloons held 32 MiB when the next JVM's
    pre-touch, 3 s later, hit the cgroup limit. Half of what is left a tick has most of it in
    a few ticks, and never more than the agents' room."""
    room = 2 * 790 * MIB
    obs = Observations(HOST, (jvm("busy", 1100 * MIB, 1.0, gc_cost=0.0), jvm("idle", 1100 * MIB, 0.0, gc_cost=0.0)))
    s, d = tick(ON, PolicyState(), obs, 0.0)
    assert d.constraint == "proactive" and d.state == "high"
    assert d.want_bytes == room // 2
    assert d.by_key()["idle"].target_bytes > d.by_key()["busy"].target_bytes
    totals = [d.target_bytes]
    for t in range(1, 6):
        held = {w.key: w.target_bytes for w in d.workloads}
        obs = Observations(HOST, tuple(replace(w, sources=(replace(w.sources[0], held_bytes=held[w.key],
                                                                   target_bytes=held[w.key]),))
                                       for w in obs.workloads))
        s, d = tick(ON, s, obs, float(t))
        totals.append(d.target_bytes)
    assert totals == sorted(totals) and totals[-1] <= room
    assert totals[4] >= 0.9 * room, totals  # most of it by the fifth tick (the first ones are step-bounded)
    # off (the default): no budget and a roomy host hold nothing
    assert tick(PolicyConfig(), PolicyState(), obs, 0.0)[1].target_bytes == 0


def test_it_slows_near_the_target_holds_in_the_band_and_gives_back_past_it():
    prev = PolicyState(state="high", targets={"idle": {"heap": 400 * MIB}})
    def at(psi_pct):
        obs = Observations(replace(HOST, psi_some_avg10=psi_pct),
                           (jvm("idle", 1100 * MIB, 0.0, held=400 * MIB, target=400 * MIB),))
        return tick(ON, prev, obs, 0.0)[1].target_bytes
    left = 790 * MIB - 400 * MIB
    assert at(0.25) == 400 * MIB + left // 2 // 2  # half the target: half of half the idle heap left
    assert at(0.5) == at(0.9) == 400 * MIB  # the band: hold
    assert at(1.0) == 400 * MIB - 32 * MIB  # twice the target: a step back


def test_a_jvm_whose_gc_cost_is_past_its_target_takes_no_more():
    prev = PolicyState(state="high", targets={"a": {"heap": 300 * MIB}, "b": {"heap": 300 * MIB}})
    obs = Observations(HOST, (jvm("a", 1100 * MIB, 0.0, held=300 * MIB, target=300 * MIB, gc_cost=0.06),
                              jvm("b", 1100 * MIB, 0.0, held=300 * MIB, target=300 * MIB, gc_cost=0.12)))
    _, d = tick(ON, prev, obs, 0.0)
    assert d.by_key()["a"].target_bytes <= 300 * MIB  # over its target: no more
    assert d.by_key()["b"].target_bytes == 300 * MIB - 32 * MIB  # over twice: a step back


def test_a_closed_loop_settles_where_gc_cost_reaches_its_target():
    """A JVM whose GC cost grows as the balloon eats its free heap (cost ∝ 1 / free heap): the
    mode takes until the cost is at its target, then holds, without ringing."""
    heap, live = 1024 * MIB, 200 * MIB
    held, state, totals = 0, PolicyState(), []
    for t in range(200):
        free_heap = heap - live - held
        cost = 0.01 * (heap - live) / max(free_heap, 1)  # 1 % with the whole heap free
        obs = Observations(HOST, (jvm("a", 1100 * MIB, 0.0, held=held, target=held, reclaimable=heap - live - 64 * MIB,
                                      gc_cost=cost),))
        state, d = tick(ON, state, obs, float(t))
        held = d.target_bytes  # the plant follows at once
        totals.append((held, cost))
    final_cost = totals[-1][1]
    assert 0.05 <= final_cost < 0.10, totals[-5:]  # in the band: at or just past its target
    late = [h for h, _ in totals[150:]]
    assert max(late) - min(late) <= 32 * MIB, late


def test_uncommitted_heap_is_memory_found():
    """Issue 16, JVM self-sizing: a heap that shrinks lowers the demand at once. Read as pages
    coming back (sticky demand), it kept the balloons at their size, or took more."""
    cfg = PolicyConfig()
    budget = replace(HOST, memory_budget_bytes=2150 * MIB)  # minFree 43 MiB
    obs = Observations(budget, (jvm("a", 1100 * MIB, 0.0, held=100 * MIB, target=100 * MIB),
                                jvm("b", 1100 * MIB, 0.0, held=100 * MIB, target=100 * MIB)))
    prev = PolicyState(state="clear", targets={"a": {"heap": 100 * MIB}, "b": {"heap": 100 * MIB}})
    s, d = tick(cfg, prev, obs, 0.0)
    assert d.state == "clear" and d.target_bytes == 200 * MIB
    shrunk = Observations(budget, (jvm("a", 800 * MIB, 0.0, held=100 * MIB, target=100 * MIB, uncommitted=300 * MIB),
                                   obs.workloads[1]))
    s, d = tick(cfg, s, shrunk, 1.0)
    assert d.state == "high" and d.target_bytes < 200 * MIB
    assert s.demand["a"] == 1100 * MIB  # sticky over resident + held + uncommitted: unchanged


def test_a_jvm_not_measured_yet_gives_when_the_others_are_at_their_floors():
    """Issue 16's consolidation run (daemon log, 2 of 3 JVMs up): the node was "clear" under its
    budget, the first JVM at its floor, and the second, just registered, held 0 because its
    activity was not measured yet: "155 MiB unmet" until the third JVM's pre-touch killed both.
    In the proactive mode it gives too, after the measured ones (counted as fully active)."""
    # the experiment's cgroup: 912 MiB, 760 MiB in use (page cache too): free 2.8 × minFree, clear
    obs = Observations(replace(HOST, memory_budget_bytes=912 * MIB, cgroup_limit_bytes=912 * MIB,
                               cgroup_usage_bytes=760 * MIB),
                       (jvm("svc0", 450 * MIB, 0.0, held=186 * MIB, target=186 * MIB, reclaimable=186 * MIB,
                            gc_cost=0.0),
                        jvm("svc1", 450 * MIB, None, reclaimable=190 * MIB)))
    prev = PolicyState(state="clear", targets={"svc0": {"heap": 186 * MIB}}, activity={"svc0": 0.0})
    _, d = tick(ON, prev, obs, 0.0)
    assert d.state == "clear" and d.constraint == "proactive"
    assert d.by_key()["svc1"].target_bytes > 0 and "not measured" not in d.by_key()["svc1"].reason
    assert d.by_key()["svc0"].target_bytes == 186 * MIB  # at its floor: no more
    # off, the same node holds the new JVM at 0 until its activity is known (test_policy_law.py)
    _, d = tick(PolicyConfig(), prev, obs, 0.0)
    assert d.by_key()["svc1"].target_bytes == 0 and "not measured" in d.by_key()["svc1"].reason


def test_a_jvm_not_measured_yet_gives_after_the_measured_idle_ones():
    obs = Observations(HOST, (jvm("idle", 1100 * MIB, 0.0, gc_cost=0.0), jvm("new", 1100 * MIB, None)))
    _, d = tick(ON, PolicyState(state="high"), obs, 0.0)
    assert d.by_key()["idle"].target_bytes > d.by_key()["new"].target_bytes
