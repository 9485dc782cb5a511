"""The control law: ``tick(config, state, observations, now_s) -> (new_state, decisions)``.

Pure: no I/O, no clock (``now_s`` is passed in), no randomness; the same inputs give the same
outputs. The daemons call it once per interval and carry ``new_state`` to the next call.

The law in five steps:

1. **How free is memory?** Each *constraint* gives a free figure and a minFree:

   * ``budget`` (``--memory-budget`` or the file's ``budget``): free = budget − Σ resident of
     the managed workloads, minFree = ``budget_min_free`` × budget (at least 16 MiB);
   * ``host``: free = MemAvailable, minFree = ``min_free`` or ESXi's sliding scale (6 % of the
     first 4 GiB, 4 % of the next 8, 2 % of the next 16, 1 % of the rest: 899 MiB for 28 GiB);
   * ``cgroup`` (when the workloads share a memory cgroup with a limit): free = limit − usage,
     minFree from the same scale applied to the limit;
   * each limited cgroup of *some* workloads (a container, a pod; groups.py): the same rule
     for its own workloads, which give its want first (step 3); the node's aim on top.

   Free memory is *predicted*, not just measured: a balloon that deflated leaves garbage
   whose pages come back only when the heap reuses them, so resident + held drops for a while
   after a give-back and would read as room. Each workload's *demand* (resident + held) is
   therefore sticky: it rises at once and falls with a half-life of ``demand_half_life_s``;
   predicted free = free − Σ (demand − resident − held). Without this, giving back would look
   free and the loop would give back until the heaps touch their pages again (a slow
   oscillation). What is sticky is resident + held + *uncommitted heap* (maximum −
   committed): a heap the JVM shrinks itself (self-sizing) leaves that sum unchanged, so the
   demand falls at once by what it uncommitted. That memory is found, not coming back.

   With r = predicted free / minFree, the state is ``high`` (r ≥ 4), ``clear`` (r ≥ 1), ``soft``
   (r ≥ 0.64), ``hard`` (r ≥ 0.32) or ``low``. A state only *improves* once r passes the
   better state's threshold by ``hysteresis`` (10 %): the state does not flicker on a border.
   PSI (``/proc/pressure/memory``) is the machine's signal, taken as the stall share since
   the last tick (the rate of its ``total`` counters; avg10 lingers ~10 s), and it escalates
   only while a machine constraint (host or cgroup) is below clear: some ≥ ``psi.soft_some``
   makes the state at least soft, full ≥ ``psi.hard_full`` at least hard. (A budget alone is
   not a reason to believe stalls are ours; with minFree free, stalls are pages swapped out
   earlier coming back, or another tenant's: a bigger balloon does not stop them.)

2. **How much should the sources hold in total (want)?** Let H be what the sources hold now and
   P the sum of last tick's targets.

   * soft/hard/low: want = max(P, H + (goal − free)), goal = a quarter of the way from the
     clear threshold to the high one (1.75·minFree by default): deep enough into the deadband
     that a balloon short of its target by a chunk does not leave the state soft.
     Resident + held is what the workloads would occupy without balloons; it does not change
     when a balloon grows (held rises by what resident falls), so this aim is a *static*
     estimate of the answer, not an integrator: balloons still inflating do not make it
     ask again (no wind-up, no overshoot).
   * clear: want = P. The band between clear and high is the deadband of the loop: nothing
     moves, except what floors and pins force.
   * high: want = P − (free − high·minFree): give back the surplus *at once*, but no more than
     keeps free above the high threshold, so giving back cannot itself push the state down.
   * PSI escalation: want ≥ P + one step (senpai-like: small, bounded steps while stalled),
     but never so far that the short constraint's free passes its high threshold: the next
     tick would give it back (issue 16: targets swung 510–750 MiB that way).
   * proactive (``proactive = true``, proactive.py): want ≥ P + half the idle heap not taken
     yet (at least a step) while neither PSI nor any ballooned JVM's GC cost reaches its
     target; hold in a band above; give back past it.
   * limits: a workload resident above its ``limit`` gives the excess whatever the state.

   The constraint that wants most wins; the worst state is the node's state.

3. **Who gives?** ESXi's shares-per-active-byte rule. For workload i with shares S, bytes in
   use P_i (resident + held − what it gives) and active fraction f (smoothed: rises at once,
   falls with a half-life of ``activity_half_life_s``):

       ρ_i = S / (P_i · (f + k·(1 − f)))        k = 1 / (1 − idle_tax) = 4 by default

   An idle byte costs k times an active one, so an idle workload has a low ρ. The lowest ρ
   gives the next quantum; giving lowers its P_i and raises its ρ, so the others take over in
   turn (water-filling). Pinned workloads (a manual ``target``) keep their target and count
   towards want, and so do workloads whose activity is not measured yet (they hold what they
   hold for a tick or two, rather than be guessed at and corrected; not in the proactive
   mode, where they give counted as fully active); the rest is shared.

4. **What gives?** Cheapest source first, across all workloads: first every workload's
   ``guest_free`` (free guest memory costs the guest nothing), then ``heap`` (idle heap costs
   a collection's work). A source never holds more than ``reclaimable_bytes`` (its floor:
   live set + headroom, the agent's ``balloon_max_bytes``), a workload never falls below its
   ``reservation``. What no source can give is ``unmet`` and said so.

5. **Bounded steps.** A target rises by at most ``max_step`` a tick (2× in hard, unbounded in
   low), or by the *measured deficit* (want − P of the short constraints, step 2) when that is
   more: the aim is static, so reaching it in one tick cannot wind up, and a breach or a large
   margin is met in one tick plus the balloons' inflation, not ``deficit / max_step`` ticks.
   The bound stays for the blind pushes (PSI, proactive) and for shifts. A target falls at
   once: a workload whose live set rises, or pressure that clears, gets
   its memory back in the same tick, and the next ticks take the difference from the others.
   Changes smaller than ``deadband`` are not made (except to zero), so small noise in RSS
   does not churn the balloons.
"""

from __future__ import annotations

import heapq
from types import MappingProxyType

from heapballoon.policy import proactive
from heapballoon.policy.config import PolicyConfig, WorkloadIdentity
from heapballoon.policy.constraints import aim, effective_budget, esxi_min_free_bytes, psi_pct, rank, step_bytes
from heapballoon.policy.groups import group_aims, worst
from heapballoon.policy.model import (
    SOURCE_KINDS, Decisions, GroupDecision, Observations, PolicyState, SourceDecision, WorkloadDecision,
    WorkloadObservation,
)
from heapballoon.units import format_size

__all__ = ["tick", "effective_budget", "esxi_min_free_bytes"]

MIB = 1 << 20
IDLE_BELOW = 0.2  # an active fraction below this reads "idle" in reasons


def _activity(config: PolicyConfig, state: PolicyState, w: WorkloadObservation, now_s: float) -> float | None:
    """The smoothed active fraction; None while it is unknown (then counted as active, and not
    remembered: a first measurement is taken as it is)."""
    prev = state.activity.get(w.key)
    if w.active_fraction is None:
        return prev
    f = min(1.0, max(0.0, w.active_fraction))
    if prev is None or f >= prev or state.last_s is None:
        return f
    dt = max(0.0, now_s - state.last_s)
    decay = 0.5 ** (dt / config.activity_half_life_s) if config.activity_half_life_s > 0 else 0.0
    return prev * decay + f * (1 - decay)


def _demand(config: PolicyConfig, state: PolicyState, w: WorkloadObservation, now_s: float) -> int:
    """Sticky resident + held + uncommitted heap: rises at once, falls with a half-life (module
    docstring, 1.); the demand is this less the uncommitted heap. Heap the JVM uncommitted is
    memory found, not pages coming back: the sum does not move when a heap shrinks, so the
    demand falls at once by what the heap gave up (and rises at once when it grows again)."""
    measured = w.unballooned_bytes + max(0, w.uncommitted_bytes)
    prev = state.demand.get(w.key)
    if prev is None or measured >= prev or state.last_s is None:
        return measured
    dt = max(0.0, now_s - state.last_s)
    decay = 0.5 ** (dt / config.demand_half_life_s) if config.demand_half_life_s > 0 else 0.0
    return int(measured + (prev - measured) * decay)


def _prev_target(state: PolicyState, w: WorkloadObservation, kind: str) -> int:
    per = state.targets.get(w.key)
    if per is not None:
        return per.get(kind, 0)
    return sum(s.target_bytes for s in w.sources if s.kind == kind)


def tick(config: PolicyConfig, state: PolicyState, obs: Observations,
         now_s: float) -> tuple[PolicyState, Decisions]:
    """One decision of the policy (module docstring: the law)."""
    wls = sorted(obs.workloads, key=lambda w: w.key)
    held = sum(w.held_bytes for w in wls)
    resident = sum(w.resident_bytes for w in wls)
    prev_total = sum(_prev_target(state, w, s.kind) for w in wls for s in w.sources)
    budget = effective_budget(config, obs)
    sticky = {w.key: _demand(config, state, w, now_s) for w in wls}
    demand = {w.key: sticky[w.key] - max(0, w.uncommitted_bytes) for w in wls}
    coming_back = sum(demand[w.key] - w.unballooned_bytes for w in wls)  # pages a give-back left
    psi_some, psi_full, psi_totals = psi_pct(obs.host, state, now_s)

    node_state, constraint, want_f, need = aim(config, state, obs, budget, resident, held, prev_total,
                                               coming_back, (psi_some, psi_full), now_s)
    # each limited cgroup's own aim (groups.py): its workloads give that first
    aims = group_aims(config, state, obs, {w.key: sum(_prev_target(state, w, s.kind) for s in w.sources) for w in wls},
                      {w.key: w.held_bytes for w in wls}, {w.key: demand[w.key] - w.unballooned_bytes for w in wls},
                      now_s)
    node_state = worst(node_state, aims)

    # activity, shares, floors
    known = {w.key: a for w in wls if (a := _activity(config, state, w, now_s)) is not None}
    act = {w.key: known.get(w.key, 1.0) for w in wls}
    rules = {w.key: config.rule_for(WorkloadIdentity(w.name, w.pod, w.pod_uid, w.container, w.container_id))
             for w in wls}
    shares = {w.key: w.shares if w.shares is not None else rules[w.key].shares for w in wls}
    reservation = {w.key: w.reservation_bytes if w.reservation_bytes is not None else rules[w.key].reservation_bytes
                   for w in wls}
    limit = {w.key: w.limit_bytes if w.limit_bytes is not None else rules[w.key].limit_bytes for w in wls}
    room = {(w.key, s.kind): max(0, s.reclaimable_bytes) for w in wls for s in w.sources}
    if node_state in ("high", "clear"):  # proactive: a JVM whose GC cost is past its target takes no more
        for w in wls:
            for s in w.sources:
                cap = proactive.room_cap(config, w, _prev_target(state, w, s.kind))
                if cap is not None:
                    room[(w.key, s.kind)] = min(room[(w.key, s.kind)], cap)
    wl_room = {w.key: max(0, demand[w.key] - reservation[w.key]) for w in wls}
    alloc = {(w.key, s.kind): 0 for w in wls for s in w.sources}
    given = {w.key: 0 for w in wls}

    def give(w: WorkloadObservation, kind: str, amount: float) -> int:
        g = int(max(0, min(amount, room[(w.key, kind)] - alloc[(w.key, kind)], wl_room[w.key] - given[w.key])))
        alloc[(w.key, kind)] += g
        given[w.key] += g
        return g

    # pins: their target stands, split cheapest source first (the agent keeps its own floor)
    pinned = [w for w in wls if w.pinned_target_bytes is not None]
    pinned_total = 0
    for w in pinned:
        left = w.pinned_target_bytes
        kinds = [s.kind for s in sorted(w.sources, key=lambda s: SOURCE_KINDS.index(s.kind))]
        for i, kind in enumerate(kinds):
            g = left if i == len(kinds) - 1 else min(left, room[(w.key, kind)])
            alloc[(w.key, kind)] = g
            left -= g
        pinned_total += w.pinned_target_bytes - max(0, left)
    # not measured yet (just registered): while memory is merely short (clear, soft) it holds
    # what it holds until its activity is known, so a first guess does not make it, or the
    # others, inflate and deflate again (counted as active, a balloon kept across a daemon
    # restart would be given back, then taken again). With plenty (high) it gives back like
    # the rest, and in hard or low (a limit breached or about to be) it gives like the rest
    # too, counted as fully active: holding back there leaves the breach to the kernel
    # (reclaim, swap, OOM) for the seconds it takes to measure an allocation rate.
    # In the proactive mode it gives too, counted as fully active (so last, by the order below,
    # and never below its agent's floor): that mode exists to have the idle heap before the next
    # demand, and a host starting services one after another registers each a second or two
    # before the next one's pre-touch. Held at 0 there, the newest JVM gave nothing while the
    # node was "clear", and the next pre-touch found 155 MiB too little (issue 16's
    # consolidation run, docs/benchmarks.md: 1 of 2 runs held 3 services).
    waiting = [w for w in wls if w.pinned_target_bytes is None and w.key not in known
               and node_state in ("clear", "soft") and not config.proactive]
    for w in waiting:
        for s in w.sources:
            alloc[(w.key, s.kind)] = min(_prev_target(state, w, s.kind), room[(w.key, s.kind)])
            pinned_total += alloc[(w.key, s.kind)]
    waiting_keys = {w.key for w in waiting}
    free_wls = [w for w in wls if w.pinned_target_bytes is None and w.key not in waiting_keys]

    # limits: a workload above its limit gives the excess, cheapest source first
    forced = {}
    for w in free_wls:
        if limit[w.key] is not None:
            over = max(0, demand[w.key] - limit[w.key])
            left = over
            for kind in SOURCE_KINDS:
                if any(s.kind == kind for s in w.sources):
                    left -= give(w, kind, left)
            forced[w.key] = over

    # 3+4. who gives and what: cheapest kind first, lowest shares per active byte first
    k = config.idle_cost

    def rho(w: WorkloadObservation) -> float:
        in_use = max(1, demand[w.key] - given[w.key])
        f = act[w.key]
        return shares[w.key] / (in_use * (f + k * (1 - f)))

    by_key = {w.key: w for w in free_wls}

    def fill(among: list[WorkloadObservation], remaining: int) -> int:
        """Give ``remaining`` from ``among``; what none of them could give."""
        for kind in SOURCE_KINDS:
            if remaining <= 0:
                break
            remaining = _fill_kind(among, kind, remaining)
        return remaining

    def _fill_kind(among, kind, remaining):
        takers = [w for w in among if (w.key, kind) in room]
        # A quantum that does not depend on what is asked: then asking more only extends the
        # same sequence of gives, and every source's share is monotone in pressure.
        # And small, at most half the deadband (up to 32768 quanta for the largest rooms): the
        # split then moves with the demands by about what they move, and noise (a few pages of
        # RSS, two JVMs of equal ρ) shifts less than the deadband. Quanta of room/256 (730 MiB
        # for 14 JVMs of 16 GiB) moved whole quanta between equal JVMs from one tick to the next.
        room_total = sum(room[(w.key, kind)] for w in takers)
        quantum = max(MIB, min(config.deadband_bytes // 2, room_total // 256), room_total // 32768)
        heap = [(rho(w), w.key) for w in takers]
        heapq.heapify(heap)
        while remaining > 0 and heap:
            _, key = heapq.heappop(heap)
            w = by_key[key]
            g = give(w, kind, min(quantum, remaining))
            remaining -= g
            if g > 0:
                heapq.heappush(heap, (rho(w), key))
        return remaining

    # each group's want from its own workloads, deepest group first; then the node's on top
    group_decisions = []
    for a in aims:
        members = set(a.keys)
        has = sum(alloc[(key, kind)] for (key, kind) in alloc if key in members)
        left = fill([w for w in free_wls if w.key in members], max(0, a.want_bytes - has))
        group_decisions.append(GroupDecision(a.path, a.state, a.limit_bytes, a.usage_bytes, a.want_bytes, left,
                                             a.growth_bytes))
        need = max(need, a.need_bytes)
    taken = sum(given[w.key] for w in free_wls)  # by limits and groups
    if aims and pinned_total + taken > want_f and any(a.want_bytes for a in aims):
        constraint = "cgroup " + max(aims, key=lambda a: (a.want_bytes, -rank(a.state))).path
    want = max(0, int(want_f), pinned_total + taken)
    unmet = fill(free_wls, max(0, want - pinned_total - taken)) + sum(g.unmet_bytes for g in group_decisions)

    # 5. bounded steps, deadband; decisions and reasons
    # A measured deficit is reached in one tick (constraints.py: the aim is static, so this
    # cannot wind up); the state's bound still limits blind pushes (PSI, proactive) and what
    # others take over from a workload that gave back.
    step = max(step_bytes(node_state, config), need)
    targets: dict[str, dict[str, int]] = {}
    decisions = []
    for w in wls:
        per: dict[str, int] = {}
        bounded = False
        for s in w.sources:
            prev = _prev_target(state, w, s.kind)
            d = alloc[(w.key, s.kind)]
            if w.pinned_target_bytes is None:
                if d > prev + step:
                    d, bounded = int(prev + step), True
                if d != 0 and abs(d - prev) < config.deadband_bytes and prev <= room[(w.key, s.kind)]:
                    d = prev
            per[s.kind] = d
        targets[w.key] = per
        changed = any(per[s.kind] != _prev_target(state, w, s.kind) for s in w.sources) or w.key not in state.targets
        reason = _reason(w, per, node_state, act[w.key], shares[w.key], reservation[w.key], limit[w.key],
                         forced.get(w.key, 0), room, wl_room, bounded)
        if w.key in waiting_keys:
            reason = "activity not measured yet: holds its target"
        decisions.append(WorkloadDecision(
            key=w.key, name=w.name, kind=w.kind,
            sources=tuple(SourceDecision(s.kind, per[s.kind]) for s in w.sources),
            reason=reason, active_fraction=round(act[w.key], 4), shares=shares[w.key],
            pinned=w.pinned_target_bytes is not None, changed=changed))

    unmet_reason = ""
    if unmet > 0:
        why = "the others are at their floors (live set + headroom)"
        if any(reservation[w.key] for w in free_wls):
            why += " or reservations"
        if not free_wls:
            why = "no workload may give yet"
        if pinned:
            why += f"; {len(pinned)} pinned"
        if waiting:
            why += f"; {len(waiting)} not measured yet (they hold their targets for now)"
        unmet_reason = f"{constraint} unmet by {format_size(unmet)}: {why}"
    new_state = PolicyState(
        state=node_state,
        targets=MappingProxyType({key: MappingProxyType(v) for key, v in targets.items()}),
        activity=MappingProxyType(known),
        demand=MappingProxyType(sticky),
        last_s=now_s,
        psi_totals_us=psi_totals,
        group_states=MappingProxyType({a.path: a.state for a in aims}),
        group_demand=MappingProxyType({a.path: (a.demand_bytes, now_s) for a in aims}),
    )
    return new_state, Decisions(
        state=node_state, constraint=constraint, budget_bytes=budget, resident_bytes=resident, held_bytes=held,
        want_bytes=want, find_bytes=max(0, want - held), unmet_bytes=unmet, unmet_reason=unmet_reason,
        workloads=tuple(decisions), psi_some_pct=round(psi_some, 3), groups=tuple(group_decisions),
    )


def _reason(w, per, node_state, f, shares, reservation, limit, forced, room, wl_room, bounded) -> str:
    total = sum(per.values())
    activity = f"{'idle' if f < IDLE_BELOW else 'active'} {f:.0%}, shares {shares}"
    if w.pinned_target_bytes is not None:
        return f"pinned at {format_size(w.pinned_target_bytes)} (target … auto to unpin)"
    cap = sum(room[(w.key, s.kind)] for s in w.sources)
    parts = []
    if forced:
        parts.append(f"limit {format_size(limit)}: over by {format_size(forced)}")
    if total > 0:
        if total >= cap and cap > 0:
            parts.append(f"{activity}: at its floor (live+headroom)")
        elif total >= wl_room[w.key] and reservation:
            parts.append(f"{activity}: at its reservation {format_size(reservation)}")
        else:
            kinds = "+".join(k for k in SOURCE_KINDS if per.get(k))
            parts.append(f"{activity}: gives {format_size(total)} ({kinds})")
    elif node_state in ("soft", "hard", "low"):
        parts.append(f"{activity}: floor, nothing above live+headroom" if cap == 0 else f"{activity}: spared")
    else:
        parts.append(f"{activity}: no pressure")
    if bounded:
        parts.append("step-bounded")
    return "; ".join(parts)
