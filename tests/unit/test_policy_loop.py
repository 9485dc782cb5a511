"""Issue 16: the law in a closed loop against a simulated node, in simulated seconds.

The plant (:class:`Node`) is a memory cgroup of JVMs as the experiment runs them: each JVM's
heap is touched (``-Xms`` = ``-Xmx``, pre-touched), its balloon moves towards its target at a
bounded rate (process-mode reclaim frees ~1.3 GiB/s; a third of it per JVM here), its agent
reports no ``balloon_max_bytes`` until it knows its live set, and at the cgroup's limit the
kernel swaps the excess out, pages the application touches again come back in, and PSI
(``some avg10``) follows the kernel's definition: a 10 s exponential average of the share of
time stalled. The law ticks every ``interval_s`` of simulated time; the plant moves in 0.1 s
steps in between. No wall clock anywhere: the assertions are about simulated seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heapballoon.policy import (
    HostObservation, Observations, PolicyConfig, PolicyState, SourceObservation, WorkloadObservation, tick,
)

MIB = 1 << 20
GIB = 1 << 30
DT_S = 0.1
RECLAIM_BYTES_PER_S = 1.3 * GIB / 3  # per JVM: the measured 1.3 GiB/s shared by three


@dataclass
class JVM:
    heap_bytes: int  # committed heap, all touched
    live_bytes: int
    nonheap_bytes: int = 72 * MIB
    active: float = 0.0
    known_at_s: float = 0.0  # before this, its agent reports balloon_max_bytes = 0
    held: float = 0.0  # balloon pages freed
    swapped: float = 0.0  # pages the kernel swapped out
    target: int = 0

    def cap(self, now_s: float) -> int:
        if now_s < self.known_at_s:
            return 0
        headroom = max(min(64 * MIB, self.heap_bytes // 8), self.heap_bytes // 20)
        return max(0, self.heap_bytes - self.live_bytes - headroom - headroom // 4)

    @property
    def unballooned(self) -> float:
        return self.nonheap_bytes + self.heap_bytes

    @property
    def resident(self) -> float:
        return self.unballooned - self.held - self.swapped


class Node:
    """JVMs in one memory cgroup of ``limit`` bytes (plus ``cache`` bytes of page cache)."""

    def __init__(self, jvms: dict[str, JVM], limit: int | None, budget: int | None = None, cache: int = 40 * MIB,
                 swapin_bytes_per_s: float = 30 * MIB, host_total: int | None = None) -> None:
        self.jvms = jvms
        self.host_total = host_total  # None: a 24 GiB host with 16 GiB available
        self.limit = limit
        self.budget = budget
        self.cache = cache
        self.swapin = swapin_bytes_per_s
        self.psi_some = 0.0  # avg10, %
        self.psi_some_total_us = 0.0
        self.swapped_out_total = 0.0
        self.now_s = 0.0

    def usage(self) -> float:
        return self.cache + sum(j.resident for j in self.jvms.values())

    def observe(self) -> Observations:
        total, avail = (24 * GIB, 16 * GIB) if self.host_total is None else (self.host_total,
                                                                             int(self.host_total - self.usage()))
        host = HostObservation(mem_total_bytes=total, mem_available_bytes=avail, psi_some_avg10=self.psi_some,
                               psi_some_total_us=self.psi_some_total_us, psi_full_total_us=0.0,
                               cgroup_limit_bytes=self.limit,
                               cgroup_usage_bytes=int(self.usage()) if self.limit else None,
                               memory_budget_bytes=self.budget)
        return Observations(host, tuple(
            WorkloadObservation(key=k, name=k, kind="jvm", resident_bytes=int(j.resident),
                                sources=(SourceObservation("heap", j.cap(self.now_s), int(j.held), j.target),),
                                active_fraction=j.active if self.now_s >= j.known_at_s else None)
            for k, j in self.jvms.items()))

    def apply(self, decisions) -> None:
        for w in decisions.workloads:
            self.jvms[w.key].target = w.target_bytes

    def step(self) -> None:
        """DT_S of the node: balloons move, the kernel swaps at the limit, PSI averages."""
        stalled = False
        for j in self.jvms.values():
            goal = min(j.target, j.cap(self.now_s))
            rate = RECLAIM_BYTES_PER_S * DT_S
            j.held = max(0.0, min(goal, j.held + rate) if goal > j.held else max(goal, j.held - 4 * rate))
            if j.swapped > 0 and (self.limit is None or self.usage() + self.swapin * DT_S <= self.limit):
                back = min(j.swapped, self.swapin * DT_S)  # the application touches its pages again
                j.swapped -= back
                stalled = True
        if self.limit is not None and self.usage() > self.limit:
            excess = self.usage() - self.limit
            total = sum(j.resident for j in self.jvms.values())
            for j in self.jvms.values():
                j.swapped += excess * j.resident / total
            self.swapped_out_total += excess
            stalled = True
        decay = math.exp(-DT_S / 10.0)
        self.psi_some = self.psi_some * decay + (100.0 if stalled else 0.0) * (1 - decay)
        self.psi_some_total_us += DT_S * 1e6 if stalled else 0.0
        self.now_s = round(self.now_s + DT_S, 6)


def run(node: Node, seconds: float, cfg: PolicyConfig = PolicyConfig(), state: PolicyState | None = None,
        on_tick=None):
    """Tick the law every ``cfg.interval_s`` simulated seconds; return the final state and a
    history of (time, decisions, usage, resident)."""
    state = state or PolicyState()
    history = []
    next_tick = node.now_s
    while node.now_s < seconds - 1e-9:
        if node.now_s >= next_tick - 1e-9:
            state, d = tick(cfg, state, node.observe(), node.now_s)
            node.apply(d)
            history.append((node.now_s, d, node.usage(), sum(j.resident for j in node.jvms.values())))
            if on_tick:
                on_tick(node, d)
            next_tick = node.now_s + cfg.interval_s
        node.step()
    return state, history


def three_jvms(**kw) -> dict[str, JVM]:
    return {f"svc{i}": JVM(heap_bytes=384 * MIB, live_bytes=100 * MIB, active=a, **kw)
            for i, a in enumerate((1.0, 0.05, 0.05))}


def first_met(history, ok) -> float | None:
    for t, d, usage, resident in history:
        if ok(d, usage, resident):
            return t
    return None


# ---------------------------------------------------------------- the tests

def test_a_breach_is_met_within_3_s_and_then_held_without_swinging():
    """The experiment's 50 % cell: three pre-touched 384 MiB heaps in a 984 MiB cgroup, over it
    from the start; the agents know their live sets (balloon_max_bytes) after 3 s. Within 3 s
    of that the cgroup is back under clear (free ≥ minFree), and from then on the kernel swaps
    nothing more and the balloons do not swing: the start-up swapping's PSI, lingering in
    avg10, used to push the targets up a step, the cgroup then read "high" and gave the
    surplus back, and so on (issue 16: 513 → 769 → 639 → 822 → 660 MiB here)."""
    limit = 984 * MIB
    node = Node({f"svc{i}": JVM(heap_bytes=384 * MIB, live_bytes=50 * MIB, active=a, known_at_s=3.0)
                 for i, a in enumerate((1.0, 0.05, 0.05))}, limit=limit, budget=limit)
    swapped_at = {}
    _, history = run(node, 40.0, on_tick=lambda n, d: swapped_at.setdefault(n.now_s, n.swapped_out_total))
    min_free = 0.06 * limit  # ESXi's scale under 4 GiB
    met = first_met(history, lambda d, usage, resident: usage <= limit - min_free)
    assert met is not None and met <= 3.0 + 3.0, met
    after = [(t, d.target_bytes) for t, d, _, _ in history if t >= met]
    targets = [x for _, x in after]
    assert max(targets) - min(targets) <= 32 * MIB, after
    assert node.swapped_out_total == swapped_at[met], "the kernel swapped after the balloons met the limit"
    assert all(limit - usage >= min_free for t, _, usage, _ in history if t >= met)


def test_the_margin_is_reached_in_one_tick_even_when_it_is_large():
    """A 256 GiB host (minFree 3.2 GiB, the margin 1.75 × that) whose free memory falls to 0.8 ×
    minFree (soft): the aim is a measured deficit, reached in one tick, not 256 MiB a tick
    (that took 12 s here)."""
    total = 256 * GIB
    jvms = {f"j{i}": JVM(heap_bytes=16 * GIB, live_bytes=2 * GIB, nonheap_bytes=256 * MIB, active=0.0)
            for i in range(14)}
    unballooned = sum(j.unballooned for j in jvms.values())
    min_free = 3.23 * GIB
    node = Node(jvms, limit=None, host_total=total, cache=int(total - unballooned - 0.8 * min_free))
    _, history = run(node, 10.0)
    met = first_met(history, lambda d, usage, resident: total - usage >= 1.7 * min_free)
    assert history[0][1].state == "soft"
    assert met is not None and met <= 3.0, [(t, d.state, d.target_bytes >> 20) for t, d, _, _ in history]
