"""The policy's data: what it observes, what it remembers between ticks, what it decides.

Typed frozen dataclasses only; no I/O and no logic beyond small derived figures. Both daemons
build :class:`Observations` from their own readers (the node driver from its registry and
/proc, hostd from QEMU and virtio-balloon statistics) and act on :class:`Decisions`.

Vocabulary (all sizes in bytes):

* *workload*: one managed JVM (process mode) or VM (VM mode), identified by ``key`` (a pid or
  a VM name: unique), named by ``name`` (what the policy file's globs match).
* *source*: one way a workload can give memory, e.g. ``guest_free`` (a VM's free guest memory,
  through virtio-balloon) or ``heap`` (idle JVM heap, through heapballoon balloons). Sources
  are taken cheapest first, in the order of :data:`SOURCE_KINDS`.
* *held*: what a source keeps out of residence now (a balloon's reclaimed pages).
* *reclaimable*: the most the source may hold, its floor already deducted (for a JVM heap the
  agent's ``balloon_max_bytes``: maximum heap − live − headroom).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# Cheapest first: free guest memory costs its guest nothing; idle heap costs a GC's work.
SOURCE_KINDS = ("guest_free", "heap")
WORKLOAD_KINDS = ("jvm", "vm")
# Memory states, best first (ESXi's names; see law.py for their meaning here).
STATES = ("high", "clear", "soft", "hard", "low")


@dataclass(frozen=True)
class GroupObservation:
    """A memory cgroup with a limit that holds some of the workloads (a container, a pod): their
    usage is kept under its limit minus a margin, by ballooning those workloads (groups.py)."""

    path: str
    limit_bytes: int
    usage_bytes: int
    keys: tuple[str, ...]  # the workloads in it (or in its descendants)


@dataclass(frozen=True)
class HostObservation:
    """The machine (or the cgroup) the managed workloads share."""

    mem_total_bytes: int
    mem_available_bytes: int
    psi_some_avg10: float = 0.0  # /proc/pressure/memory, percent of time stalled
    psi_full_avg10: float = 0.0
    # PSI's ``total`` counters (µs stalled since boot): the law takes their rate between two
    # ticks, which is the stall share *now*; avg10 lingers ~10 s after the stalls stop.
    psi_some_total_us: float | None = None
    psi_full_total_us: float | None = None
    cgroup_limit_bytes: int | None = None  # a memory cgroup that holds every managed workload
    cgroup_usage_bytes: int | None = None
    memory_budget_bytes: int | None = None  # --memory-budget (the policy file's budget wins)
    groups: tuple[GroupObservation, ...] = ()  # limited cgroups of some workloads, deepest first


@dataclass(frozen=True)
class SourceObservation:
    kind: str  # one of SOURCE_KINDS
    reclaimable_bytes: int  # most it may hold, floor deducted
    held_bytes: int = 0  # out of residence now
    target_bytes: int = 0  # the target it was last given


@dataclass(frozen=True)
class WorkloadObservation:
    key: str
    name: str
    kind: str  # "jvm" | "vm"
    resident_bytes: int
    sources: tuple[SourceObservation, ...] = ()
    # How busy it is, 0 (idle) to 1 (every byte in use); None: unknown (counted as active).
    active_fraction: float | None = None
    pinned_target_bytes: int | None = None  # a manual `target`, until `target ... auto`
    # None: take them from the policy file's rules (by name).
    shares: int | None = None
    reservation_bytes: int | None = None
    limit_bytes: int | None = None
    # Heap the JVM itself gave up (maximum − committed heap): JVM self-sizing. A heap that
    # shrinks is memory found, not pages that come back (law.py, 1.).
    uncommitted_bytes: int = 0
    # Share of wall time the workload spent collecting garbage lately, 0..1; None: not known.
    # The proactive mode's per-workload cost signal (proactive.py).
    gc_cost: float | None = None
    # JVMs in containers: what the policy file's pod/container rules select by ("" unknown)
    pod: str = ""  # namespace/name
    pod_uid: str = ""
    container: str = ""  # the container's name
    container_id: str = ""

    @property
    def held_bytes(self) -> int:
        return sum(s.held_bytes for s in self.sources)

    @property
    def unballooned_bytes(self) -> int:
        """What it would hold resident with no balloon: resident + held."""
        return self.resident_bytes + self.held_bytes


@dataclass(frozen=True)
class Observations:
    host: HostObservation
    workloads: tuple[WorkloadObservation, ...] = ()


@dataclass(frozen=True)
class PolicyState:
    """What the law remembers between ticks (nothing else: a restart starts from defaults)."""

    state: str = "clear"
    # key → source kind → target decided last tick
    targets: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    # key → smoothed active fraction (rises at once, falls slowly)
    activity: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # key → sticky demand, resident + held (rises at once, falls slowly; see law.py)
    demand: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    last_s: float | None = None
    # PSI's totals (some, full, µs), when they were read, and the rates (%) taken then
    psi_totals_us: tuple[float, float, float, float, float] | None = None
    # cgroup path → its state last tick (groups.py; the same hysteresis as the node's)
    group_states: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # cgroup path → (its usage + what its workloads held, when): the group's growth rate (groups.py)
    group_demand: Mapping[str, tuple[int, float]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SourceDecision:
    kind: str
    target_bytes: int


@dataclass(frozen=True)
class WorkloadDecision:
    key: str
    name: str
    kind: str
    sources: tuple[SourceDecision, ...]
    reason: str  # short, human: "idle 2%, shares 1000: gives first", "floor", "pinned", …
    active_fraction: float
    shares: int
    pinned: bool = False
    changed: bool = False  # its target differs from last tick's

    @property
    def target_bytes(self) -> int:
        return sum(s.target_bytes for s in self.sources)

    def target_of(self, kind: str) -> int:
        return sum(s.target_bytes for s in self.sources if s.kind == kind)


@dataclass(frozen=True)
class GroupDecision:
    """What one limited cgroup asked of its workloads this tick."""

    path: str
    state: str
    limit_bytes: int
    usage_bytes: int
    want_bytes: int  # what its workloads' sources should hold at least
    unmet_bytes: int = 0  # of want, what its workloads could not give
    growth_bytes: int = 0  # free taken ahead by this much: the group's growth (groups.py)


@dataclass(frozen=True)
class Decisions:
    state: str  # one of STATES
    # what set the aim: "budget", "host", "cgroup", "cgroup PATH" (one container's, groups.py),
    # "psi", "proactive", "limit" or "none"
    constraint: str
    budget_bytes: int | None  # the budget in force (None: the host decides)
    resident_bytes: int  # managed workloads' resident total
    held_bytes: int  # what their sources hold now
    want_bytes: int  # what the sources should hold in total (the law's aim)
    find_bytes: int  # want − held, when positive: still to find
    unmet_bytes: int  # of want, what no source can give (floors, reservations, pins)
    unmet_reason: str
    workloads: tuple[WorkloadDecision, ...] = ()
    psi_some_pct: float = 0.0  # the memory stall share the law used (rate of PSI's total, or avg10)
    groups: tuple[GroupDecision, ...] = ()

    @property
    def target_bytes(self) -> int:
        return sum(w.target_bytes for w in self.workloads)

    def by_key(self) -> dict[str, WorkloadDecision]:
        return {w.key: w for w in self.workloads}
