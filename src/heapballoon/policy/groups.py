"""Budgets from cgroup limits: each limited memory cgroup (a container, a pod, a slice) keeps its
own usage under its limit minus the margin, by ballooning *its* workloads. Pure.

A group is observed as its limit, its usage and the workloads in it (``GroupObservation``; a
workload may sit in several nested groups, e.g. a container in a pod in ``kubepods``). Each
group is a constraint of its own, the same rule as the node's (constraints.py): free = limit −
usage less what a give-back left coming back, minFree from ESXi's scale on the limit, a state
with hysteresis, and a want for what its workloads' sources hold in total:

* soft/hard/low: max(P_G, H_G + goal·minFree − free), goal 1.75 by default (the margin);
* clear: P_G (the deadband: what they hold stays);
* high: P_G − (free − high·minFree), at least 0 (they may give back the surplus).

P_G is the sum of last tick's targets of the group's workloads, H_G what they hold now.

**Growth.** A container's usage can grow by something else than its JVMs (a sidecar writing a
tmpfs, page cache, another process): free then falls between two ticks, and a balloon asked
for at the tick after free crossed minFree needs that tick plus a collection to inflate. So
free is taken *ahead*: less what the group grows in ``GROWTH_HORIZON_S`` at its rate since the
last tick, or three times the gap since the last tick when ticks come slower than that (a
loaded node, a daemon in a TCG guest: ticks 1-3.5 s apart were seen there, and a 3 s horizon
let a 20 MiB/s sidecar outrun the balloon). The rate is of usage + held (a balloon inflating
moves bytes from one to the other, so it is no growth), and only a rise counts. Seen without it (tests/integration/
test_container_budget.py, a sidecar writing 20 MiB/s): a limit hit in 2 of 17 runs on a
loaded machine, while the policy waited in the clear band for free to fall under minFree.

The
law (law.py) gives each group's want from that group's workloads first (deepest groups first,
so a container's need is met inside its pod's), then the node's own aim on top: the node
budget and the host still apply to every workload, and a target is the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from heapballoon.policy.config import PolicyConfig
from heapballoon.policy.constraints import esxi_min_free_bytes, goal_ratio, rank, state_of
from heapballoon.policy.model import Observations, PolicyState

GROWTH_HORIZON_S = 3.0  # a tick, the inflation (a collection), and the next tick
GROWTH_HORIZON_TICKS = 3.0  # the same in tick gaps, when the gap is longer than a third of that


@dataclass(frozen=True)
class GroupAim:
    path: str
    keys: tuple[str, ...]
    state: str
    limit_bytes: int
    usage_bytes: int
    want_bytes: int
    need_bytes: int  # a measured deficit: reached in one tick, like the node's (constraints.py)
    demand_bytes: int = 0  # usage + held now, remembered for the growth rate
    growth_bytes: int = 0  # what free was taken ahead by (GROWTH_HORIZON_S at the rate)


def group_aims(config: PolicyConfig, state: PolicyState, obs: Observations, prev: dict[str, int],
               held: dict[str, int], coming_back: dict[str, int], now_s: float) -> list[GroupAim]:
    """One aim per observed group, in the order observed (deepest first). ``prev``, ``held`` and
    ``coming_back`` are per workload key."""
    th = config.thresholds
    goal_r = goal_ratio(config)
    out = []
    for g in obs.host.groups:
        keys = tuple(k for k in g.keys if k in prev)
        if not keys or g.limit_bytes <= 0:
            continue
        prev_g = sum(prev[k] for k in keys)
        held_g = sum(held[k] for k in keys)
        demand = g.usage_bytes + held_g
        growth = 0
        last = state.group_demand.get(g.path)
        if last is not None and now_s > last[1]:
            gap_s = now_s - last[1]
            horizon_s = max(GROWTH_HORIZON_S, GROWTH_HORIZON_TICKS * gap_s)
            growth = int(max(0, demand - last[0]) / gap_s * horizon_s)
        free = g.limit_bytes - g.usage_bytes - sum(coming_back[k] for k in keys) - growth
        min_free = max(1, esxi_min_free_bytes(g.limit_bytes))
        st = state_of(free / min_free, state.group_states.get(g.path, "clear"), config)
        need = 0
        if st == "high":
            want = max(0, prev_g - (free - th.high * min_free))
        elif st == "clear":
            want = prev_g
        else:
            want = max(prev_g, held_g + goal_r * min_free - free)
            need = want - prev_g
        out.append(GroupAim(g.path, keys, st, g.limit_bytes, g.usage_bytes, int(want), int(need), demand, growth))
    return out


def worst(node_state: str, aims: list[GroupAim]) -> str:
    """The node's state: the worst of its own and its groups'."""
    return max([node_state] + [a.state for a in aims], key=rank)
