"""The experiment's settings and plan: which cells (round × manager × overcommit level) run, in
what order, and how long the run should take.

Sizes: each service's heap is committed in full (``-Xms`` = ``-Xmx``, ``-XX:+AlwaysPreTouch``;
the self-sizing manager lowers ``-Xms`` but still starts the heap at ``-Xmx``)
and, before it is ready, churns ``warmup_bytes`` of non-zero garbage, so the committed heaps are
resident and dirty as in a long-running service whose heap grew once. The
memory *given* to the services at overcommit X% is ``heaps / (1 + X/100)`` plus a fixed
non-heap allowance per JVM (metaspace, code, threads, GC structures), so at 0% nothing needs
to be reclaimed and at 50% the committed heaps exceed what the heaps are given by 50%.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from heapballoon.errors import UsageError

MIB = 1 << 20
MANAGERS = ("none", "self-sizing", "cgroup-step", "heapballoon")
QUICK_MANAGERS = ("none", "cgroup-step", "heapballoon")
FULL_LEVELS = (0, 25, 50, 100)
FULL_ROUNDS = 3
FULL_BUDGET_S = 35 * 60
# Wall time a cell costs beyond its load: start three JVMs (pre-touch, warm-up churn, data set),
# wait for the agents, stop them, summarize: 2-17 s, ~9 s on average, measured on the 2-CPU test
# machine (docs/benchmarks.md), so the estimate errs long.
CELL_OVERHEAD_S = 10.0
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
    policy: str = "auto"  # or "manual": `target all` = the excess (the stand-in before the policy existed)

    def given_bytes(self, level_pct: int) -> int:
        """Memory the services' cgroup may use at ``level_pct`` overcommit."""
        heaps = self.services * self.heap_bytes
        return int(heaps * 100 / (100 + level_pct)) + self.services * self.nonheap_allowance_bytes

    def excess_bytes(self, level_pct: int) -> int:
        """How far the committed heaps exceed the memory given to heaps."""
        heaps = self.services * self.heap_bytes
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

    @property
    def key(self) -> str:
        """The same for every round of a manager and level."""
        return f"{self.manager}@{self.level_pct}"


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


def estimated_s(cfg: Config) -> float:
    """The run's expected wall time: every cell's load plus its measured overhead, plus set-up."""
    return SETUP_S + len(plan(cfg)) * (cfg.cell_s + CELL_OVERHEAD_S)


def full_cell_s() -> float:
    """Cell length of the full run: the longest multiple of 3 s (one slot per service) with which
    the default full plan fits in ``FULL_BUDGET_S``."""
    cells = FULL_ROUNDS * (1 + len(FULL_LEVELS) * len(MANAGERS))
    return float(max(12, int(((FULL_BUDGET_S - SETUP_S) / cells - CELL_OVERHEAD_S) // 3 * 3)))


def quick(out_dir: str, seed: int = 1, command: str = "heapballoon experiment --quick") -> Config:
    """Process mode, 0 % and 50 %, three managers, one round: < 5 minutes (the test suite runs it)."""
    return Config(out_dir=out_dir, seed=seed, quick=True, command=command)


def full(out_dir: str, seed: int = 1, command: str = "heapballoon experiment") -> Config:
    """The full process-mode run: four levels, four managers, three rounds in ~35 minutes."""
    return Config(out_dir=out_dir, seed=seed, quick=False, levels_pct=FULL_LEVELS, managers=MANAGERS,
                  rounds=FULL_ROUNDS, cell_s=full_cell_s(), command=command)


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
    if not 3 * cfg.services <= cfg.cell_s <= 3600:
        raise UsageError(f"invalid --cell-s {cfg.cell_s:g}: must be {3 * cfg.services}..3600 seconds")


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
