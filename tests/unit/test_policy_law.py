"""The pure policy law (heapballoon.policy): examples, then properties with hypothesis, then a
closed loop against a simulated plant."""

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from heapballoon.policy import (
    HostObservation, Observations, PolicyConfig, PolicyState, SourceObservation, WorkloadObservation,
    esxi_min_free_bytes, explain_text, parse_config, summary_line, tick,
)

MIB = 1 << 20
GIB = 1 << 30
HOST = HostObservation(mem_total_bytes=24 * GIB, mem_available_bytes=16 * GIB)


def jvm(key, unballooned, active, held=0, target=0, reclaimable=790 * MIB, pinned=None, name=None):
    return WorkloadObservation(key=key, name=name or key, kind="jvm", resident_bytes=unballooned - held,
                               sources=(SourceObservation("heap", reclaimable, held, target),),
                               active_fraction=active, pinned_target_bytes=pinned)


def vm(key, unballooned, guest_free, heap, held_free=0, held_heap=0):
    return WorkloadObservation(key=key, name=key, kind="vm", resident_bytes=unballooned - held_free - held_heap,
                               sources=(SourceObservation("guest_free", guest_free, held_free),
                                        SourceObservation("heap", heap, held_heap)), active_fraction=0.0)


def budget(size):
    return replace(HOST, memory_budget_bytes=size)


def test_esxi_min_free_is_899_mib_for_28_gib():
    assert abs(esxi_min_free_bytes(28 * GIB) - 899 * 10**6 * 1.024 ** 2) < 20 * MIB


def test_idle_jvms_give_first_and_the_busy_one_is_spared():
    obs = Observations(budget(1800 * MIB), (jvm("busy", 1100 * MIB, 1.0), jvm("idle1", 1100 * MIB, 0.0),
                                            jvm("idle2", 1100 * MIB, 0.02)))
    state, d = tick(PolicyConfig(), PolicyState(), obs, 0.0)
    t = {w.key: w.target_bytes for w in d.workloads}
    assert d.state == "low" and d.constraint == "budget"
    assert t["idle1"] > t["busy"] and t["idle2"] > t["busy"]
    assert sum(t.values()) >= 3300 * MIB - 1800 * MIB
    assert "spared" in d.by_key()["busy"].reason
    assert "budget" in summary_line(d) and "who gives" in explain_text(d)


def test_the_busy_jvm_gives_once_idle_floors_are_reached():
    obs = Observations(budget(1800 * MIB), (jvm("busy", 1100 * MIB, 1.0), jvm("idle1", 1100 * MIB, 0.0),
                                            jvm("idle2", 1100 * MIB, 0.0, reclaimable=240 * MIB)))
    _, d = tick(PolicyConfig(), PolicyState(), obs, 0.0)
    t = {w.key: w.target_bytes for w in d.workloads}
    assert t["idle2"] == 240 * MIB and t["idle1"] == 790 * MIB
    assert t["busy"] > 400 * MIB
    assert "floor" in d.by_key()["idle2"].reason


def test_guest_free_memory_goes_before_any_heap():
    obs = Observations(budget(1600 * MIB), (vm("a", 1100 * MIB, 300 * MIB, 500 * MIB),
                                            vm("b", 1100 * MIB, 100 * MIB, 500 * MIB)))
    _, d = tick(PolicyConfig(max_step_bytes=GIB), PolicyState(), obs, 0.0)
    by = d.by_key()
    assert by["a"].target_of("guest_free") == 300 * MIB and by["b"].target_of("guest_free") == 100 * MIB
    assert by["a"].target_of("heap") + by["b"].target_of("heap") == d.want_bytes - 400 * MIB


def test_no_pressure_means_no_balloon_and_pressure_cleared_gives_back_at_once():
    obs = Observations(HOST, (jvm("a", 1100 * MIB, 0.0, held=500 * MIB, target=500 * MIB),))
    state = PolicyState(state="soft", targets={"a": {"heap": 500 * MIB}})
    _, d = tick(PolicyConfig(), state, obs, 0.0)
    assert d.state == "high" and d.workloads[0].target_bytes == 0


def test_clear_state_holds_targets():
    obs = Observations(budget(1060 * MIB), (jvm("a", 1100 * MIB, 0.0, held=100 * MIB, target=100 * MIB),))
    state = PolicyState(state="clear", targets={"a": {"heap": 100 * MIB}})
    _, d = tick(PolicyConfig(), state, obs, 0.0)  # free = 60 MiB: clear (1..4 x 21 MiB)
    assert d.state == "clear" and d.workloads[0].target_bytes == 100 * MIB


def test_a_live_set_rise_is_given_back_at_once_and_taken_from_others():
    cfg = PolicyConfig()
    prev = PolicyState(state="clear", targets={"a": {"heap": 700 * MIB}, "b": {"heap": 300 * MIB}})
    obs = Observations(budget(1800 * MIB), (jvm("a", 1400 * MIB, 0.0, held=700 * MIB, target=700 * MIB,
                                                reclaimable=200 * MIB),
                                            jvm("b", 1400 * MIB, 1.0, held=300 * MIB, target=300 * MIB)))
    _, d = tick(cfg, prev, obs, 0.0)
    by = d.by_key()
    assert by["a"].target_bytes == 200 * MIB  # at once, not in steps
    assert 300 * MIB < by["b"].target_bytes <= 300 * MIB + cfg.max_step_bytes * 2  # bounded


def test_a_pin_stands_and_counts():
    obs = Observations(budget(1800 * MIB), (jvm("a", 1100 * MIB, 0.0, pinned=100 * MIB),
                                            jvm("b", 1100 * MIB, 0.0), jvm("c", 1100 * MIB, 0.0)))
    _, d = tick(PolicyConfig(), PolicyState(), obs, 0.0)
    assert d.by_key()["a"].target_bytes == 100 * MIB and d.by_key()["a"].pinned
    assert "pinned" in d.by_key()["a"].reason


def test_limits_and_reservations_from_the_file():
    cfg = parse_config('max_step = "1G"\n[[workload]]\nmatch = "small*"\nlimit = "600M"\n'
                       '[[workload]]\nmatch = "gold*"\nreservation = "1000M"\nshares = 4000\n')
    obs = Observations(HOST, (jvm("small-1", 1100 * MIB, 1.0), jvm("gold-1", 1100 * MIB, 0.0)))
    _, d = tick(cfg, PolicyState(), obs, 0.0)
    by = d.by_key()
    assert by["small-1"].target_bytes == 500 * MIB and "limit" in by["small-1"].reason
    assert by["gold-1"].target_bytes == 0
    obs = Observations(budget(1000 * MIB), obs.workloads)
    _, d = tick(cfg, PolicyState(), obs, 0.0)
    assert d.by_key()["gold-1"].target_bytes <= 100 * MIB and d.unmet_bytes > 0 and "unmet" in d.unmet_reason


def test_a_budget_in_the_file_wins_and_none_lifts_it():
    obs = Observations(budget(1000 * MIB), (jvm("a", 1100 * MIB, 0.0),))
    assert tick(parse_config('budget = "none"'), PolicyState(), obs, 0.0)[1].budget_bytes is None
    assert tick(parse_config('budget = "2G"'), PolicyState(), obs, 0.0)[1].budget_bytes == 2 * GIB
    assert tick(parse_config(''), PolicyState(), obs, 0.0)[1].budget_bytes == 1000 * MIB


def test_psi_escalates_only_while_the_machine_is_short_of_its_margin():
    # 24 GiB: minFree 819 MiB, the margin (goal) 1.75 x that = 1433 MiB
    tight = replace(HOST, mem_available_bytes=600 * MIB, psi_full_avg10=40.0)  # soft by free memory
    _, d = tick(PolicyConfig(), PolicyState(), Observations(tight, (jvm("a", 1100 * MIB, 0.0),)), 0.0)
    assert d.state == "hard" and d.workloads[0].target_bytes > 0
    # issue 16: clear (minFree is free): stalls are pages coming back (or another tenant's),
    # and a bigger balloon would not stop them
    roomy = replace(HOST, mem_available_bytes=GIB, psi_some_avg10=40.0, psi_full_avg10=40.0)
    _, d = tick(PolicyConfig(), PolicyState(), Observations(roomy, (jvm("a", 1100 * MIB, 0.0),)), 0.0)
    assert d.state == "clear" and d.workloads[0].target_bytes == 0
    loose = replace(HOST, psi_some_avg10=40.0)
    _, d = tick(PolicyConfig(), PolicyState(), Observations(loose, (jvm("a", 1100 * MIB, 0.0),)), 0.0)
    assert d.state == "high" and d.workloads[0].target_bytes == 0
    # a budget short of memory on a roomy machine: the stalls are not the workloads' to answer
    over = Observations(replace(loose, memory_budget_bytes=800 * MIB), (jvm("a", 1100 * MIB, 0.0),))
    _, d = tick(PolicyConfig(), PolicyState(), over, 0.0)
    assert d.constraint == "budget" and d.want_bytes < 400 * MIB


def test_unknown_activity_holds_its_target_and_is_not_remembered():
    cfg = PolicyConfig()
    # soft: 2150 MiB resident under a 2186 MiB budget (minFree 2 % = 43.7 MiB, r = 0.82)
    obs = Observations(budget(2186 * MIB), (jvm("a", 1100 * MIB, None, held=50 * MIB, target=50 * MIB),
                                            jvm("b", 1100 * MIB, 0.5)))
    s, d = tick(cfg, PolicyState(), obs, 0.0)
    assert d.by_key()["a"].target_bytes == 50 * MIB and "not measured" in d.by_key()["a"].reason
    assert d.by_key()["b"].target_bytes > 0 and "a" not in s.activity
    s, d = tick(cfg, s, Observations(obs.host, (jvm("a", 1100 * MIB, 0.0), jvm("b", 1100 * MIB, None))), 1.0)
    assert "not measured" not in d.by_key()["b"].reason  # known once: remembered
    assert d.by_key()["a"].active_fraction == 0.0 and d.by_key()["b"].active_fraction == 0.5


def test_activity_rises_at_once_and_falls_slowly():
    cfg = PolicyConfig()
    obs = Observations(HOST, (jvm("a", 1100 * MIB, 1.0),))
    s, d = tick(cfg, PolicyState(), obs, 0.0)
    s, d = tick(cfg, s, Observations(HOST, (jvm("a", 1100 * MIB, 0.0),)), 30.0)
    assert abs(d.workloads[0].active_fraction - 0.5) < 0.01


def test_states_improve_only_past_the_hysteresis_margin():
    cfg = PolicyConfig()  # budget 1000 MiB: minFree 20 MiB, clear at 20 MiB free, 22 with the margin
    obs = Observations(budget(1000 * MIB), (jvm("a", 979 * MIB, 0.0),))  # 21 MiB free
    assert tick(cfg, PolicyState(state="soft"), obs, 0.0)[1].state == "soft"
    assert tick(cfg, PolicyState(state="clear"), obs, 0.0)[1].state == "clear"


# ---------------------------------------------------------------- properties

sizes = st.integers(min_value=0, max_value=4 * GIB)
workloads = st.lists(st.tuples(st.integers(64 * MIB, 4 * GIB), st.floats(0, 1), st.integers(0, 2 * GIB),
                               st.integers(0, 2 * GIB), st.one_of(st.none(), st.integers(0, GIB))),
                     min_size=1, max_size=8)


def build(ws, **host):
    out = []
    for i, (unb, act, rec, held, pin) in enumerate(ws):
        held = min(held, rec, unb)
        out.append(jvm(f"w{i}", unb, act, held=held, target=held, reclaimable=rec, pinned=pin))
    return Observations(replace(HOST, **host), tuple(out))


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(256 * MIB, 16 * GIB), st.lists(st.integers(0, 4 * GIB), min_size=8, max_size=8),
       st.sampled_from(["high", "clear", "soft", "hard", "low"]))
def test_floors_are_never_crossed(ws, budget_bytes, prev_targets, prev_state):
    """Whatever was decided last tick (a floor may have risen since: a live set grew), no
    source is asked for more than it can give above its floor: give-backs happen at once."""
    obs = build(ws, memory_budget_bytes=budget_bytes)
    prev = PolicyState(state=prev_state, targets={f"w{i}": {"heap": t} for i, t in enumerate(prev_targets)})
    _, d = tick(PolicyConfig(), prev, obs, 0.0)
    for w, o in zip(d.workloads, obs.workloads):
        if o.pinned_target_bytes is None:
            for s, so in zip(w.sources, o.sources):
                assert 0 <= s.target_bytes <= so.reclaimable_bytes


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(256 * MIB, 16 * GIB))
def test_bytes_are_conserved(ws, budget_bytes):
    """With unbounded steps, what the law wants is given by the sources or reported unmet."""
    cfg = PolicyConfig(max_step_bytes=1 << 50, deadband_bytes=0)
    obs = build(ws, memory_budget_bytes=budget_bytes)
    _, d = tick(cfg, PolicyState(), obs, 0.0)
    assert d.target_bytes + d.unmet_bytes == max(d.want_bytes, sum(
        w.target_bytes for w in d.workloads if w.pinned))


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(0, 16 * GIB), st.integers(0, 16 * GIB), st.sampled_from(["high", "clear", "soft", "low"]),
       st.floats(0, 100))
def test_reclaim_is_monotone_in_pressure(ws, avail_a, avail_b, prev_state, psi):
    """Less free memory (or a smaller budget) never makes any source hold less."""
    cfg = PolicyConfig()
    lo, hi = sorted((avail_a, avail_b))
    obs_more = build(ws, mem_available_bytes=lo, psi_some_avg10=psi)  # more pressure
    obs_less = build(ws, mem_available_bytes=hi, psi_some_avg10=psi)
    prev = PolicyState(state=prev_state)
    _, more = tick(cfg, prev, obs_more, 0.0)
    _, less = tick(cfg, prev, obs_less, 0.0)
    for a, b in zip(more.workloads, less.workloads):
        assert a.target_bytes >= b.target_bytes
    _, more = tick(cfg, prev, build(ws, memory_budget_bytes=max(1, lo)), 0.0)
    _, less = tick(cfg, prev, build(ws, memory_budget_bytes=max(1, hi)), 0.0)
    assert more.target_bytes >= less.target_bytes


# ---------------------------------------------------------------- closed loop

class Plant:
    """Fake JVMs: a balloon moves towards its target at ``rate`` bytes a tick, never past its
    capacity; RSS = unballooned − held."""

    def __init__(self, jvms, rate=200 * MIB):
        self.jvms = {k: dict(v, held=0, target=0) for k, v in jvms.items()}
        self.rate = rate

    def observe(self, budget_bytes):
        return Observations(budget(budget_bytes), tuple(
            jvm(k, j["unb"], j["active"], held=j["held"], target=j["target"], reclaimable=j["cap"])
            for k, j in self.jvms.items()))

    def apply(self, decisions):
        for w in decisions.workloads:
            j = self.jvms[w.key]
            j["target"] = w.target_bytes
            goal = min(w.target_bytes, j["cap"])
            step = max(-self.rate * 4, min(self.rate, goal - j["held"]))  # deflating is fast
            j["held"] = max(0, min(j["cap"], j["held"] + step))

    def resident(self):
        return sum(j["unb"] - j["held"] for j in self.jvms.values())


@settings(max_examples=30, deadline=None)
@given(st.integers(1500 * MIB, 3000 * MIB), st.floats(0, 0.1), st.integers(100 * MIB, 400 * MIB))
def test_closed_loop_meets_the_budget_without_oscillating_or_starving(budget_bytes, idle_act, rate):
    cfg = PolicyConfig()
    plant = Plant({"busy": dict(unb=1100 * MIB, active=1.0, cap=790 * MIB),
                   "idle1": dict(unb=1100 * MIB, active=idle_act, cap=790 * MIB),
                   "idle2": dict(unb=1100 * MIB, active=idle_act, cap=790 * MIB)}, rate=rate)
    state, history = PolicyState(), []
    for t in range(60):
        if t == 30:  # idle1's live set rises: its capacity falls to 240 MiB
            plant.jvms["idle1"]["cap"] = 240 * MIB
            plant.jvms["idle1"]["unb"] = 1150 * MIB
        state, d = tick(cfg, state, plant.observe(budget_bytes), float(t))
        plant.apply(d)
        history.append({w.key: w.target_bytes for w in d.workloads})
        if t in (25, 59):
            assert plant.resident() <= budget_bytes * 1.05 or d.unmet_bytes > 0
    for phase in (history[10:30], history[45:60]):  # settled: no target moves back and forth
        for key in ("busy", "idle1", "idle2"):
            deltas = [b[key] - a[key] for a, b in zip(phase, phase[1:]) if b[key] != a[key]]
            assert all(x > 0 for x in deltas) or all(x < 0 for x in deltas), (key, deltas)
    # the busy JVM is not starved: it gives only what the idle ones cannot
    goal = 1.75 * max(16 * MIB, 0.02 * budget_bytes)  # how far below the budget the law aims
    idle_room = 790 * MIB + 240 * MIB
    need = 3350 * MIB - budget_bytes + goal
    assert history[-1]["busy"] <= max(0, need - idle_room) + 32 * MIB
    assert history[20]["busy"] <= max(0, 3300 * MIB - budget_bytes + goal - 2 * 790 * MIB) + 32 * MIB


def test_pages_a_give_back_left_untouched_are_not_room():
    """A deflated balloon's pages come back when the heap reuses them: until then resident +
    held is low, and that must not read as free memory (or the loop gives back ever more)."""
    cfg = PolicyConfig()
    obs = Observations(budget(1480 * MIB), (jvm("a", 1100 * MIB, 0.0, held=400 * MIB, target=400 * MIB),
                                            jvm("b", 1100 * MIB, 0.0, held=400 * MIB, target=400 * MIB)))
    s, d = tick(cfg, PolicyState(state="clear", targets={"a": {"heap": 400 * MIB}, "b": {"heap": 400 * MIB}}),
                obs, 0.0)
    assert d.state == "clear"
    # b gave 200 MiB back; its heap has not touched those pages yet: resident is unchanged
    later = Observations(obs.host, (obs.workloads[0], jvm("b", 900 * MIB, 0.0, held=200 * MIB, target=200 * MIB)))
    s2, d2 = tick(cfg, replace(s, targets={"a": {"heap": 400 * MIB}, "b": {"heap": 200 * MIB}}), later, 1.0)
    assert d2.state != "high" and d2.target_bytes >= 600 * MIB
    assert s2.demand["b"] > 1090 * MIB  # still what it was, falling slowly


class LazyPlant(Plant):
    """As Plant, but a deflated balloon's pages come back only as the heap reuses them
    (``reuse`` bytes a tick), as a real JVM's do."""

    def __init__(self, jvms, rate=200 * MIB, reuse=20 * MIB):
        super().__init__(jvms, rate)
        self.reuse = reuse
        for j in self.jvms.values():
            j["untouched"] = 0

    def observe(self, budget_bytes):
        return Observations(budget(budget_bytes), tuple(
            jvm(k, j["unb"] - j["untouched"], j["active"], held=j["held"], target=j["target"], reclaimable=j["cap"])
            for k, j in self.jvms.items()))

    def apply(self, decisions):
        before = {k: j["held"] for k, j in self.jvms.items()}
        super().apply(decisions)
        for k, j in self.jvms.items():
            j["untouched"] += max(0, before[k] - j["held"])
            j["untouched"] = max(0, j["untouched"] - self.reuse)

    def resident(self):
        return sum(j["unb"] - j["held"] - j["untouched"] for j in self.jvms.values())


@settings(max_examples=20, deadline=None)
@given(st.integers(1500 * MIB, 2000 * MIB), st.integers(200 * MIB, 600 * MIB), st.integers(5 * MIB, 50 * MIB))
def test_closed_loop_with_lazily_reused_pages_does_not_ring(budget_bytes, raise_bytes, reuse):
    """The budget is raised: balloons give back the surplus once, not everything and then
    take it again when the heaps touch their pages."""
    cfg = PolicyConfig()
    plant = LazyPlant({"busy": dict(unb=1100 * MIB, active=1.0, cap=790 * MIB),
                       "idle1": dict(unb=1100 * MIB, active=0.01, cap=790 * MIB),
                       "idle2": dict(unb=1100 * MIB, active=0.01, cap=790 * MIB)}, reuse=reuse)
    state, totals, worst = PolicyState(), [], 0
    for t in range(200):
        b = budget_bytes + (raise_bytes if t >= 30 else 0)
        state, d = tick(cfg, state, plant.observe(b), float(t))
        plant.apply(d)
        totals.append(d.target_bytes)
        if t > 40:
            worst = max(worst, plant.resident())
    assert worst <= (budget_bytes + raise_bytes) * 1.05
    moves = [b - a for a, b in zip(totals[30:], totals[31:]) if abs(b - a) > cfg.deadband_bytes]
    assert all(m < 0 for m in moves), moves  # given back, never taken again


def test_the_summary_line_stays_short_with_many_workloads():
    obs = Observations(budget(10 * GIB), tuple(jvm(f"jvm-{i:03d}", 300 * MIB, i / 100) for i in range(100)))
    _, d = tick(PolicyConfig(), PolicyState(), obs, 0.0)
    line = summary_line(d)
    assert len(line) < 300 and "more" in line, line
    assert explain_text(d).count("\n") >= 100


def test_unknown_activity_gives_when_the_limit_is_breached():
    """Issue 16: in hard or low, a JVM whose activity is not measured yet gives like an active
    one (holding back would leave the breach to the kernel for the seconds a rate takes)."""
    obs = Observations(budget(1000 * MIB), (jvm("a", 1100 * MIB, None, held=50 * MIB, target=50 * MIB),
                                            jvm("b", 1100 * MIB, 0.5)))
    _, d = tick(PolicyConfig(), PolicyState(), obs, 0.0)
    assert d.state == "low"
    assert d.by_key()["a"].target_bytes > 50 * MIB and "not measured" not in d.by_key()["a"].reason


def test_psi_is_the_stall_share_since_the_last_tick_not_the_lingering_avg10():
    """Issue 16: avg10 stays high ~10 s after the stalls stop; the law takes the rate of PSI's
    total counters between ticks (avg10 only on the first tick), and a tick that comes too soon
    after the last keeps the last rate."""
    cfg = PolicyConfig()
    host = replace(HOST, mem_available_bytes=600 * MIB, psi_some_avg10=40.0, psi_full_avg10=40.0,
                   psi_some_total_us=5e6, psi_full_total_us=2e6)
    obs = Observations(host, (jvm("a", 1100 * MIB, 0.0),))
    s, d = tick(cfg, PolicyState(), obs, 0.0)
    assert d.psi_some_pct == 40.0 and d.state == "hard"  # first tick: avg10
    s, d = tick(cfg, s, obs, 1.0)  # no stall since: 0 %, whatever avg10 says
    assert d.psi_some_pct == 0.0 and d.state == "soft"
    stalled = Observations(replace(host, psi_some_total_us=5.3e6, psi_full_total_us=2.2e6), obs.workloads)
    s, d = tick(cfg, s, stalled, 2.0)  # 300 ms of 1 s: 30 %; full 20 %
    assert abs(d.psi_some_pct - 30.0) < 1e-6 and d.state == "hard"
    soon = Observations(replace(host, psi_some_total_us=5.31e6, psi_full_total_us=2.2e6), obs.workloads)
    s, d = tick(cfg, s, soon, 2.05)  # 50 ms later: the last rate stands
    assert abs(d.psi_some_pct - 30.0) < 1e-6


def test_each_cgroup_keeps_its_own_jvms_under_its_limit_and_the_budget_applies_on_top():
    """Issue 18: a container near its limit balloons *its* JVM, not the node's other idle one;
    a node budget still takes from everyone on top."""
    from heapballoon.policy import GroupObservation

    limit, usage = 1150 * MIB, 1120 * MIB  # 30 MiB free, minFree 69 MiB: hard
    boxed = jvm("boxed", 1080 * MIB, 0.0)
    other = jvm("other", 1100 * MIB, 0.0)  # idle too, and larger: the node-wide rule would pick it
    host = replace(HOST, groups=(GroupObservation("/pod/a", limit, usage, ("boxed",)),))
    state, d = tick(PolicyConfig(), PolicyState(), Observations(host, (boxed, other)), 0.0)
    t = {w.key: w.target_bytes for w in d.workloads}
    margin = 1.75 * esxi_min_free_bytes(limit)
    assert t["boxed"] >= margin - (limit - usage) - MIB and t["other"] == 0
    assert d.constraint == "cgroup /pod/a" and d.state == "hard" and state.group_states["/pod/a"] == "hard"
    assert [(g.path, g.state) for g in d.groups] == [("/pod/a", "hard")]
    assert "cgroup /pod/a: hard" in explain_text(d)
    _, d2 = tick(PolicyConfig(), PolicyState(), Observations(replace(host, memory_budget_bytes=1800 * MIB),
                                                             (boxed, other)), 0.0)
    t2 = {w.key: w.target_bytes for w in d2.workloads}
    assert t2["boxed"] >= t["boxed"] and t2["other"] > 0 and sum(t2.values()) >= 2180 * MIB - 1800 * MIB


def test_a_growing_cgroup_is_ballooned_ahead_of_its_growth():
    """A sidecar writing 20 MiB/s into the container's tmpfs: free (100 MiB, above minFree 69)
    reads clear, but at that rate it is under minFree within the tick and the inflation that
    would follow. The group's growth is taken ahead; a balloon that inflates is no growth."""
    from heapballoon.policy import GroupObservation

    limit = 1150 * MIB
    boxed = jvm("boxed", 1000 * MIB, 0.0)

    def at(usage, held=0):
        w = replace(boxed, resident_bytes=boxed.resident_bytes - held,
                    sources=(SourceObservation("heap", 790 * MIB, held, 0),))
        return Observations(replace(HOST, groups=(GroupObservation("/pod/a", limit, usage, ("boxed",)),)), (w,))

    state, d = tick(PolicyConfig(), PolicyState(), at(1030 * MIB), 0.0)
    assert d.state == "clear" and d.by_key()["boxed"].target_bytes == 0
    still, d_still = tick(PolicyConfig(), state, at(1030 * MIB), 1.0)  # not growing: stays clear
    assert d_still.state == "clear" and d_still.by_key()["boxed"].target_bytes == 0
    _, d_grew = tick(PolicyConfig(), state, at(1050 * MIB), 1.0)  # +20 MiB in 1 s: 60 MiB ahead
    assert d_grew.groups[0].growth_bytes == 60 * MIB and d_grew.state in ("soft", "hard")
    assert d_grew.by_key()["boxed"].target_bytes >= 1.75 * esxi_min_free_bytes(limit) - (100 * MIB - 60 * MIB) - MIB
    assert "growing: 60.0 MiB taken ahead" in explain_text(d_grew)
    _, d_inflated = tick(PolicyConfig(), state, at(1010 * MIB, held=20 * MIB), 1.0)  # usage fell by what it holds
    assert d_inflated.groups[0].growth_bytes == 0
    # ticks 2.5 s apart (a loaded node, a TCG guest): the horizon is three gaps, 7.5 s, not 3 s
    _, d_slow = tick(PolicyConfig(), state, at(1080 * MIB), 2.5)  # +50 MiB in 2.5 s: 20 MiB/s
    assert d_slow.groups[0].growth_bytes == 150 * MIB and d_slow.state in ("hard", "low")
