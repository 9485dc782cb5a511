"""Steps 1 and 2 of the law (law.py's docstring): how free memory is, and how much the sources
should hold in total. Pure functions of the config, the last state and one observation.

Why each rule is here, in short (docs/policy.md has the long form):

* **The aim is static.** In soft, hard and low the aim is ``held + (goal − free)``: resident +
  held does not change while a balloon inflates (held rises by what resident falls), so
  asking for it again next tick asks for the same bytes. It is therefore safe to reach it in
  *one* tick: :func:`aim` returns the measured deficit (``need``), and law.py lets a target
  rise by that much at once. Bounded steps remain for the blind pushes (PSI, proactive),
  which have no such estimate. Before (issue 16) a target rose by 256 MiB a tick in soft
  and 512 MiB in hard, so a large minFree (a 16 GiB cgroup's is 655 MiB) took seconds to
  reach.
* **PSI is a rate, and only a reason while memory is short.** avg10 is a 10 s exponential
  average: after start-up swapping it stays above 10 % for ~10 s while nothing stalls any
  more. Acting on it took a step more each tick, pushed free above the high threshold, gave
  the surplus back, and so on (targets swinging 510–750 MiB in the experiment). The law
  takes PSI from the kernel's ``total`` counter instead (µs stalled; its rate between two
  ticks is the stall share now), and lets it escalate only while a machine constraint (host,
  cgroup) is below clear (free < minFree): with minFree free, stalls are pages swapped out
  earlier coming back in, or another tenant's, and a bigger balloon does not stop them. Its
  push (a step) stops where that constraint's free would reach the high threshold, so the
  next tick does not read "high" and give back what PSI just took.
"""

from __future__ import annotations

import math

from heapballoon.policy.config import PolicyConfig
from heapballoon.policy.model import STATES, HostObservation, Observations, PolicyState
from heapballoon.policy import proactive

MIB = 1 << 20
GIB = 1 << 30


def esxi_min_free_bytes(total_bytes: int) -> int:
    """ESXi's minFree: 6 % of the first 4 GiB, 4 % of the next 8, 2 % of the next 16, 1 % above."""
    out, rest = 0.0, max(0, total_bytes)
    for size, pct in ((4 * GIB, 0.06), (8 * GIB, 0.04), (16 * GIB, 0.02), (math.inf, 0.01)):
        part = min(rest, size)
        out += part * pct
        rest -= part
        if rest <= 0:
            break
    return int(out)


def effective_budget(config: PolicyConfig, obs: Observations) -> int | None:
    """The policy file's ``budget`` when it says one (even "none"), else ``--memory-budget``."""
    return config.budget_bytes if config.budget_set else obs.host.memory_budget_bytes


def rank(state: str) -> int:
    return STATES.index(state)


def state_of(ratio: float, prev: str, config: PolicyConfig) -> str:
    th = config.thresholds
    bounds = (("high", th.high), ("clear", th.clear), ("soft", th.soft), ("hard", th.hard), ("low", -math.inf))
    raw = next(name for name, bound in bounds if ratio >= bound)
    if rank(raw) >= rank(prev):
        return raw  # worse (or the same) at once
    for name, bound in bounds:  # better only with a margin
        if rank(raw) <= rank(name) < rank(prev) and ratio >= bound * (1 + config.hysteresis):
            return name
    return prev


def step_bytes(state: str, config: PolicyConfig) -> float:
    return {"hard": 2 * config.max_step_bytes, "low": math.inf}.get(state, config.max_step_bytes)


def goal_ratio(config: PolicyConfig) -> float:
    """Where the aim puts free memory, × minFree: a quarter of the way from clear to high
    (1.75 by default). This is the margin kept under every constraint."""
    th = config.thresholds
    return th.clear + (th.high - th.clear) / 4


PSI_MIN_SPAN_S = 0.5  # a rate over a shorter span (a tick a reload or a pin asked for) is noise


def psi_pct(host: HostObservation, state: PolicyState, now_s: float
            ) -> tuple[float, float, tuple[float, float, float, float, float] | None]:
    """(some %, full %) stalled since the last tick, from PSI's ``total`` counters; avg10 when
    the totals are not there (yet). Also what to remember: the totals, their time and the
    rates. A tick less than PSI_MIN_SPAN_S after the one that took the last rate keeps that
    rate and its reference (one 10 ms stall over 50 ms would read 20 %)."""
    if host.psi_some_total_us is None or host.psi_full_total_us is None:
        return host.psi_some_avg10, host.psi_full_avg10, None
    some_t, full_t = host.psi_some_total_us, host.psi_full_total_us
    prev = state.psi_totals_us
    if prev is None or some_t < prev[0] or full_t < prev[1] or now_s < prev[2]:
        # first tick (or counters reset): the best there is
        return host.psi_some_avg10, host.psi_full_avg10, (some_t, full_t, now_s, host.psi_some_avg10,
                                                          host.psi_full_avg10)
    span = now_s - prev[2]
    if span < PSI_MIN_SPAN_S:
        return prev[3], prev[4], prev
    some, full = (min(100.0, (t - p) / (span * 1e6) * 100.0) for t, p in ((some_t, prev[0]), (full_t, prev[1])))
    return some, full, (some_t, full_t, now_s, some, full)


def aim(config: PolicyConfig, state: PolicyState, obs: Observations, budget: int | None, resident: int, held: int,
        prev_total: int, coming_back: int, psi: tuple[float, float], now_s: float
        ) -> tuple[str, str, float, float]:
    """The node's state, the constraint that sets the aim, what the sources should hold in total,
    and ``need``: how much of that is a measured deficit (reached in one tick, see above)."""
    host = obs.host
    cons: list[tuple[str, float, int]] = []  # name, free, minFree
    if budget is not None:
        cons.append(("budget", budget - resident, max(16 * MIB, int(budget * config.budget_min_free))))
    if host.mem_total_bytes > 0:
        cons.append(("host", host.mem_available_bytes, config.min_free_bytes or esxi_min_free_bytes(host.mem_total_bytes)))
    if host.cgroup_limit_bytes and host.cgroup_usage_bytes is not None:
        cons.append(("cgroup", host.cgroup_limit_bytes - host.cgroup_usage_bytes,
                     esxi_min_free_bytes(host.cgroup_limit_bytes)))
    th = config.thresholds
    goal_r = goal_ratio(config)
    verdicts: list[tuple[str, str, float]] = []  # name, state, want
    need = 0.0
    psi_cap = None  # set while a machine constraint (host, cgroup) is short: the most PSI may ask
    for name, free, min_free in cons:
        free -= coming_back
        min_free = max(1, min_free)
        st = state_of(free / min_free, state.state, config)
        if st == "high":
            want = prev_total - (free - th.high * min_free)
        elif st == "clear":
            want = prev_total
        else:  # never below last tick's targets: the aim only rises while memory is short
            want = max(prev_total, held + (goal_r * min_free - free))
            need = max(need, want - prev_total)
        if name in ("host", "cgroup") and rank(st) > rank("clear"):
            cap = held + th.high * min_free - free  # free at the high threshold, not past it
            psi_cap = cap if psi_cap is None else min(psi_cap, cap)
        verdicts.append((name, st, want))
    if not verdicts:
        verdicts.append(("none", "high", 0))
    if psi_cap is not None:
        level = None
        if psi[1] >= config.psi_hard_full:
            level = "hard"
        elif psi[0] >= config.psi_soft_some:
            level = "soft"
        if level is not None:  # a bounded push, never so far that the next tick gives it back
            verdicts.append(("psi", level, max(prev_total, min(prev_total + step_bytes(level, config), psi_cap))))
    if config.proactive:
        verdicts.append(("proactive", "high", proactive.want(config, obs, prev_total, psi[0])))
    node_state = max((v[1] for v in verdicts), key=rank)
    constraint, _, want_f = max(verdicts, key=lambda v: (v[2], -rank(v[1])))
    if node_state == "high" and want_f <= 0:
        constraint = "none"  # nothing to hold: no constraint is binding
    return node_state, constraint, want_f, need
