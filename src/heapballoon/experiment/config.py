"""The experiment's settings and plan: which cells (manager × overcommit level) run, in what order.

Sizes: each service's heap is committed in full (``-Xms`` = ``-Xmx``, ``-XX:+AlwaysPreTouch``)
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
MANAGERS = ("none", "cgroup-step", "heapballoon")


@dataclass(frozen=True)
class Config:
    out_dir: str
    seed: int = 1
    quick: bool = True
    levels_pct: tuple[int, ...] = (0, 50)
    managers: tuple[str, ...] = MANAGERS
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
    cell_s: float = 27.0
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
    """One measurement: a manager at an overcommit level (``unconstrained``: no limit, no manager)."""

    manager: str
    level_pct: int
    index: int

    @property
    def key(self) -> str:
        return f"{self.manager}@{self.level_pct}"


def plan(cfg: Config) -> list[Cell]:
    """The unconstrained baseline first, then each level with its managers in an order rotated per
    level, so a slow patch of a shared machine does not always hit the same manager."""
    cells = [Cell("unconstrained", 0, 0)]
    for i, level in enumerate(cfg.levels_pct):
        rotated = cfg.managers[i % len(cfg.managers):] + cfg.managers[:i % len(cfg.managers)]
        for m in rotated:
            cells.append(Cell(m, level, len(cells)))
    return cells


def quick(out_dir: str, seed: int = 1, command: str = "heapballoon experiment --quick") -> Config:
    return Config(out_dir=out_dir, seed=seed, quick=True, command=command)


def full(out_dir: str, seed: int = 1, command: str = "heapballoon experiment") -> Config:
    """The full process-mode run (VM mode and more managers are not built yet)."""
    return Config(out_dir=out_dir, seed=seed, quick=False, levels_pct=(0, 25, 50, 100), cell_s=60.0,
                  command=command)


def validate(cfg: Config) -> None:
    if not cfg.levels_pct or any(level < 0 for level in cfg.levels_pct):
        raise UsageError("overcommit levels must be >= 0")
    unknown = set(cfg.managers) - set(MANAGERS)
    if unknown:
        raise UsageError(f"unknown managers {sorted(unknown)}: choose from {', '.join(MANAGERS)}")


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
