"""The proactive mode (``proactive = true`` in the policy file): take idle heap until a pressure
signal says it costs. Pure; called by constraints.aim and law.tick.

Like senpai (Meta's TMO), which pushes a cgroup's memory.high down until PSI reaches a small
target, but with freeing instead of swapping: what the balloons take is idle heap the JVM
would otherwise keep resident, and what they give back is there at once, with no swap-in.

The pressure q is the worst of two signals, each over its target:

* ``psi``: the node's memory stall share (PSI ``some``, its rate over the last tick; see
  constraints.py) over ``proactive_psi_some`` (0.5 %: a stall share a latency-bound service
  does not notice; senpai's default target is 0.1 % of a cgroup, the node's figure here also
  carries other tenants' stalls, so a little more);
* ``gc``: the largest GC cost (share of wall time in collections) of a workload whose
  balloon holds something, over ``proactive_gc_cost`` (5 %: a JVM sized for throughput
  spends 1–2 %; a balloon that squeezes it shows first as more frequent collections).

The aim (the sources' total, on top of what the other constraints want; the largest wins):

* q < 1: rise by (1 − q) × the larger of ``proactive_step`` (32 MiB) and half the idle heap
  not taken yet (the sources' room, what the agents say they can give above live set +
  headroom, minus what is held), but at least the deadband (8 MiB: a smaller change is not
  sent, and the aim would stall at q = 0.75). Proportional, so it slows as the cost nears
  its target and overshoots by a deadband at most. Half the room a tick, not a fixed step,
  because the mode must have the idle heap *before* the next demand: real JVMs showed it
  (issue 16, ``experiment --quick --swap off``): a JVM pre-touches 384 MiB in under a
  second, 3 s after the first JVM registered, and at 32 MiB a tick the balloons held 32 MiB
  when the cgroup OOM-killed a service. Half the room is safe to take at once because the
  room is already above the agent's floor (live set + headroom for its allocation rate, plus
  a quarter) and a balloon deflates at once when the JVM needs the memory; it is a half, not
  the whole, so that a GC cost that rises with the balloon is seen before the last of it.
* 1 ≤ q < 2: hold (a band, so the aim does not ring around the target).
* q ≥ 2: give back one step a tick, and a workload whose own GC cost is past its target
  takes no more (:func:`room_cap`): past twice its target, it gives a step back itself.

Idle workloads give first, as always (the shares-per-active-byte order of law.py), and a
source never goes below its floor, so the mode stops by itself at the floors when nothing
costs. The budget, host and cgroup constraints still bind: the largest want wins.
"""

from __future__ import annotations

from heapballoon.policy.config import PolicyConfig
from heapballoon.policy.model import Observations, WorkloadObservation

HOLD_BAND = 2.0  # between 1 and this many times the target, the aim holds
ROOM_SHARE = 0.5  # of the idle heap not taken yet, the most the aim rises in one tick (with q = 0)


def pressure(config: PolicyConfig, obs: Observations, psi_some_pct: float) -> float:
    """q: the worst signal over its target (0: nothing costs; 1: at the target)."""
    q = psi_some_pct / config.proactive_psi_some
    for w in obs.workloads:
        if w.gc_cost is not None and (w.held_bytes > 0 or any(s.target_bytes > 0 for s in w.sources)):
            q = max(q, 100.0 * w.gc_cost / config.proactive_gc_cost)
    return q


def want(config: PolicyConfig, obs: Observations, prev_total: int, psi_some_pct: float) -> float:
    q = pressure(config, obs, psi_some_pct)
    if q < 1:
        left = sum(max(0, s.reclaimable_bytes) for w in obs.workloads for s in w.sources) - prev_total
        rise = max(config.proactive_step_bytes, ROOM_SHARE * left) * (1 - q)
        # at least the deadband: a smaller change is not sent, and the aim would stall short
        return prev_total + max(config.deadband_bytes, rise)
    if q < HOLD_BAND:
        return prev_total
    return max(0, prev_total - config.proactive_step_bytes)


def room_cap(config: PolicyConfig, w: WorkloadObservation, prev_target: int) -> int | None:
    """The most this workload's sources may hold in proactive mode, or None (no cap): one whose
    own GC cost is past its target takes no more, past twice it gives a step back."""
    if not config.proactive or w.gc_cost is None:
        return None
    q = 100.0 * w.gc_cost / config.proactive_gc_cost
    if q < 1:
        return None
    if q < HOLD_BAND:
        return prev_target
    return max(0, prev_target - config.proactive_step_bytes)
