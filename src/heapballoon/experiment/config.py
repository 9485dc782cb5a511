"""The experiment's settings and plan: which cells (round × manager × overcommit level) run, in
what order, and how long the run should take.

Sizes: each service's heap is committed in full (``-Xms`` = ``-Xmx``, ``-XX:+AlwaysPreTouch``;
the self-sizing manager lowers ``-Xms`` but still starts the heap at ``-Xmx``)
and, before it is ready, churns ``warmup_bytes`` of non-zero garbage, so the committed heaps are
resident and dirty as in a long-running service whose heap grew once. The
memory *given* to the services at overcommit X% is ``heaps / (1 + X/100)`` plus a fixed
non-heap allowance per JVM (metaspace, code, threads, GC structures), so at 0% nothing needs
to be reclaimed and at 50% the committed heaps exceed what the heaps are given by 50%.
With ``heaps="burst"`` the heaps are not pre-touched: the warm-up garbage grows them over
``burst_s``. The consolidation sweep's cells instead give N services a fixed memory
(``fixed_memory_bytes``: what 2 services use unconstrained; ``consolidation_cfg``).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace

from heapballoon.errors import UsageError

MIB = 1 << 20
MANAGERS = ("none", "self-sizing", "cgroup-step", "heapballoon", "heapballoon+self-sizing")
QUICK_MANAGERS = ("none", "cgroup-step", "heapballoon")
# Managers whose JVMs run the small -Xms variant (self-sizing's: the heap may shrink); the others
# run the production config, -Xms = -Xmx.
SMALL_XMS_MANAGERS = ("self-sizing", "heapballoon+self-sizing")
HEAPS = ("pretouch", "burst")
FULL_LEVELS = (0, 50, 100)
FULL_ROUNDS = 3
FULL_BUDGET_S = 75 * 60
# Consolidation: the memory that holds CONSOLIDATION_BASE services unconstrained (heap plus the
# non-heap allowance each), and N = BASE, BASE+1, ... services in it.
CONSOLIDATION_BASE = 2
CONSOLIDATION_MAX = 5
SLO_P99_FACTOR = 2.0
# Wall time a cell costs beyond its load: stop the JVMs and the manager, summarize (CELL_OVERHEAD_S),
# plus starting each JVM (pre-touch or burst, warm-up churn, data set, the agent) one at a time.
CELL_OVERHEAD_S = 4.0
SERVICE_START_S = 2.0  # each service until it is ready (then settle_s before the next), measured ~1-3 s
SETUP_S = 30.0  # building (cached) jars, the swap file, the report and plots


@dataclass(frozen=True)
class Config:
    out_dir: str
    seed: int = 1
    quick: bool = True
    levels_pct: tuple[int, ...] = (0, 50)
    managers: tuple[str, ...] = QUICK_MANAGERS
    rounds: int = 1
    mode: str = "process"
    services: int = 3
    heap_bytes: int = 384 * MIB
    data_bytes: int = 64 * MIB
    value_bytes: int = 32 << 10
    max_keys: int = 4096
    ttl_s: float = 8.0
    churn_bytes: int = 64 << 10
    warmup_bytes: int = 768 * MIB  # non-zero garbage each service allocates before it is ready
    nonheap_allowance_bytes: int = 72 * MIB  # measured: ~45 MiB, ~50 MiB with the agent
    busy_rate_per_s: float = 300.0
    idle_rate_per_s: float = 30.0
    connections: int = 6
    cell_s: float = 21.0
    sample_interval_s: float = 0.5
    swap_bytes: int = 3 << 30
    swap_dir: str = "/var/tmp"
    command: str = "heapballoon experiment"
    # heapballoon's: "proactive" (auto + `proactive = true`), "auto" (the budget alone) or "manual"
    # (`target all` = the excess, the stand-in before the policy existed)
    policy: str = "proactive"
    swap: bool = True  # False: no swap file and swappiness 0 in the cgroups (overcommit ends in OOM kills)
    heaps: str = "pretouch"  # production heaps (-Xms = -Xmx): "pretouch" (AlwaysPreTouch) or "burst" (grown by a start-up burst)
    burst_s: float = 4.0  # "burst": the warm-up garbage is allocated over this long
    settle_s: float = 1.0  # the services start one at a time, this long apart after each is ready
    touch_bytes: int = 256 << 10  # of the data set, read by every request (swapped-out data costs latency)
    consolidation: bool = False  # the consolidation sweep (N services in a fixed memory) after the levels
    consolidation_max: int = CONSOLIDATION_MAX
    memory_bytes: int | None = None  # a fixed memory given (consolidation cells), else by level

    def fixed_memory_bytes(self) -> int:
        """The consolidation sweep's memory: what CONSOLIDATION_BASE services use unconstrained."""
        return CONSOLIDATION_BASE * (self.heap_bytes + self.nonheap_allowance_bytes)

    def heap_share_bytes(self, level_pct: int) -> int:
        """Each service's share of the memory given to heaps."""
        return (self.given_bytes(level_pct) - self.services * self.nonheap_allowance_bytes) // self.services

    def given_bytes(self, level_pct: int) -> int:
        """Memory the services' cgroup may use at ``level_pct`` overcommit (or the fixed memory)."""
        if self.memory_bytes is not None:
            return self.memory_bytes
        heaps = self.services * self.heap_bytes
        return int(heaps * 100 / (100 + level_pct)) + self.services * self.nonheap_allowance_bytes

    def excess_bytes(self, level_pct: int) -> int:
        """How far the committed heaps exceed the memory given to heaps."""
        heaps = self.services * self.heap_bytes
        if self.memory_bytes is not None:
            return max(0, heaps - (self.memory_bytes - self.services * self.nonheap_allowance_bytes))
        return heaps - int(heaps * 100 / (100 + level_pct))

    def load(self, service: int, t_s: float) -> float:
        """Offered load of ``service`` at ``t_s`` into a cell, 1 busy or 0.1 idle; the phases are
        shifted so one service at a time is busy (like regions in different time zones)."""
        slot = int((t_s % self.cell_s) / (self.cell_s / self.services))
        return 1.0 if slot == service else self.idle_rate_per_s / self.busy_rate_per_s


@dataclass(frozen=True)
class Cell:
    """One measurement: a manager at an overcommit level (``unconstrained``: no limit, no manager)
    in one round; ``index`` counts cells across the whole run."""

    manager: str
    level_pct: int
    index: int
    round: int = 0
    services: int = 0  # a consolidation cell: this many services in the fixed memory (0: a level cell)

    @property
    def key(self) -> str:
        """The same for every round of a manager and level (or number of services)."""
        return f"{self.manager}@n{self.services}" if self.services else f"{self.manager}@{self.level_pct}"


def consolidation_level_pct(cfg: Config, services: int) -> int:
    """The overcommit that ``services`` services make in the fixed memory: how far their heaps
    exceed the memory left for heaps once each has its non-heap allowance."""
    for_heaps = cfg.fixed_memory_bytes() - services * cfg.nonheap_allowance_bytes
    return max(0, round((services * cfg.heap_bytes / for_heaps - 1) * 100))


def consolidation_cfg(cfg: Config, services: int) -> Config:
    """The config of a consolidation cell: ``services`` services, the fixed memory."""
    return replace(cfg, services=services, memory_bytes=cfg.fixed_memory_bytes())


def cell_overhead_s(services: int, burst_s: float = 0.0, settle_s: float = 1.0) -> float:
    """Wall time a cell costs beyond its load: the services start one at a time, ``settle_s``
    apart (a start-up burst of ``burst_s`` each with ``--heaps burst``)."""
    return CELL_OVERHEAD_S + (SERVICE_START_S + burst_s + settle_s) * services


def plan(cfg: Config) -> list[Cell]:
    """``cfg.rounds`` rounds, each the unconstrained baseline first, then each level with its
    managers in an order rotated by level and by round, so a slow patch of a shared machine does
    not always hit the same manager."""
    cells: list[Cell] = []
    n = len(cfg.managers)
    for r in range(cfg.rounds):
        cells.append(Cell("unconstrained", 0, len(cells), r))
        for i, level in enumerate(cfg.levels_pct):
            shift = (i + r) % n
            for m in cfg.managers[shift:] + cfg.managers[:shift]:
                cells.append(Cell(m, level, len(cells), r))
    return cells


def consolidation_counts(cfg: Config) -> range:
    return range(CONSOLIDATION_BASE, cfg.consolidation_max + 1)


def _estimate(cfg: Config, cell_s: float) -> float:
    burst_s = cfg.burst_s if cfg.heaps == "burst" else 0.0
    levels = len(plan(cfg)) * (cell_s + cell_overhead_s(cfg.services, burst_s, cfg.settle_s))
    sweep = 0.0
    if cfg.consolidation:  # at most: every manager passes every N
        sweep = cfg.rounds * sum((1 + len(cfg.managers)) * (cell_s + cell_overhead_s(n, burst_s, cfg.settle_s))
                                 for n in consolidation_counts(cfg))
    return SETUP_S + levels + sweep


def estimated_s(cfg: Config) -> float:
    """The run's expected wall time at most: every cell's load plus its overhead, plus set-up
    (the consolidation sweep counted as if no manager failed early)."""
    return _estimate(cfg, cfg.cell_s)


def full_cell_s() -> float:
    """Cell length of the full run: the longest multiple of 3 s (one slot per service) with which
    the default full plan fits in ``FULL_BUDGET_S`` (at least 15 s: five services' slots)."""
    probe = Config(out_dir="", quick=False, levels_pct=FULL_LEVELS, managers=MANAGERS, rounds=FULL_ROUNDS,
                   consolidation=True)
    per_s = (_estimate(probe, 1.0) - _estimate(probe, 0.0))
    return float(max(15, int((FULL_BUDGET_S - _estimate(probe, 0.0)) / per_s // 3 * 3)))


def quick(out_dir: str, seed: int = 1, command: str = "heapballoon experiment --quick") -> Config:
    """Process mode, 0 % and 50 %, three managers, one round: < 5 minutes (the test suite runs it)."""
    return Config(out_dir=out_dir, seed=seed, quick=True, command=command)


def full(out_dir: str, seed: int = 1, command: str = "heapballoon experiment") -> Config:
    """The full process-mode run: three levels, five managers, three rounds, and the consolidation
    sweep in each round: 21 s cells, at most ~70 minutes (less when managers leave the sweep early)."""
    return Config(out_dir=out_dir, seed=seed, quick=False, levels_pct=FULL_LEVELS, managers=MANAGERS,
                  rounds=FULL_ROUNDS, cell_s=full_cell_s(), consolidation=True, command=command)


def parse_levels(text: str) -> tuple[int, ...]:
    """``"0,50"`` -> (0, 50); UsageError (one line) on anything else."""
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"invalid --levels {text!r}: expected comma-separated percentages, e.g. 0,50") from None
    if any(not 0 <= level <= 400 for level in levels):
        raise UsageError(f"invalid --levels {text!r}: each level must be 0..400 (%)")
    if len(set(levels)) != len(levels):
        raise UsageError(f"invalid --levels {text!r}: a level is repeated")
    return levels


def parse_managers(text: str, known: tuple[str, ...] = MANAGERS) -> tuple[str, ...]:
    """``"none,heapballoon"`` -> the names, each one of ``known``; UsageError (one line) otherwise."""
    names = tuple(x.strip() for x in text.split(","))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown manager {unknown[0]!r} in --managers: choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise UsageError(f"invalid --managers {text!r}: a manager is repeated")
    return names


def validate(cfg: Config) -> None:
    if not cfg.levels_pct or any(level < 0 for level in cfg.levels_pct):
        raise UsageError("overcommit levels must be >= 0")
    unknown = set(cfg.managers) - set(MANAGERS)
    if unknown or not cfg.managers:
        raise UsageError(f"unknown managers {sorted(unknown)}: choose from {', '.join(MANAGERS)}")
    if not 1 <= cfg.rounds <= 50:
        raise UsageError(f"invalid --rounds {cfg.rounds}: must be 1..50")
    most = max(cfg.services, cfg.consolidation_max if cfg.consolidation else 0)
    if not 3 * most <= cfg.cell_s <= 3600:
        raise UsageError(f"invalid --cell-s {cfg.cell_s:g}: must be {3 * most}..3600 seconds")
    if cfg.heaps not in HEAPS:
        raise UsageError(f"invalid --heaps {cfg.heaps!r}: choose from {', '.join(HEAPS)}")


def machine() -> str:
    """One line naming the machine, for figures and the report."""
    import os

    from heapballoon.errors import KernelError
    from heapballoon.linux.procfs import ProcFS

    try:
        total = ProcFS().meminfo().get("MemTotal", 0)
    except KernelError:
        total = 0
    return (f"{platform.node()}, {os.cpu_count()} CPUs, {total / (1 << 30):.0f} GiB, "
            f"Linux {platform.release()}")
