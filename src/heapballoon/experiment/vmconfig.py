"""VM mode's settings: two (or more) small QEMU guests under TCG, one CacheService JVM in each.

**What "overcommit" means in VM mode.** What the guests could make resident is their RAM
(``guest_memory_bytes`` each; measured here: a guest that booted and ran its JVM has touched
~90 % of it, so a guest's RAM *is* its committed memory), plus QEMU's own memory (TCG's
translation cache, device state: ``qemu_allowance_bytes``, ~150 MiB measured). At overcommit X %
the QEMU processes' memory cgroup is given::

    given(X) = guests × (guest RAM / (1 + X/100) + qemu_allowance)

so at 0 % nothing needs to be reclaimed and at 50 % the guests' RAM exceeds what is given to
guest RAM by 50 %. ``budget_bytes`` (the guest-RAM part, guests × RAM / (1 + X/100)) is what
hostd's policy is given as ``--memory-budget`` (it caps the guests' host-resident RAM).

Sizes are small because TCG is slow here (~45 requests/s on one connection to one guest):
guests of 640 MiB with a 320 MiB heap, a modest offered load, 40 s cells.
"""

from __future__ import annotations

from dataclasses import dataclass

from heapballoon.errors import UsageError
from heapballoon.experiment.config import MIB, Cell, Config

VM_MANAGERS = ("none", "virtio-balloon", "heapballoon", "heapballoon+virtio")
GUEST_PORT = 8080


@dataclass(frozen=True)
class VMConfig(Config):
    mode: str = "vm"
    services: int = 2  # guests, one service each
    managers: tuple[str, ...] = VM_MANAGERS
    guest_memory_bytes: int = 640 * MIB
    qemu_allowance_bytes: int = 160 * MIB
    heap_bytes: int = 320 * MIB
    data_bytes: int = 32 * MIB
    max_keys: int = 2048
    warmup_bytes: int = 320 * MIB
    busy_rate_per_s: float = 30.0
    idle_rate_per_s: float = 3.0
    connections: int = 4
    cell_s: float = 40.0
    swap_bytes: int = 2 << 30
    guest_cpus: int = 1
    boot_timeout_s: float = 240.0

    def budget_bytes(self, level_pct: int) -> int:
        """Guest RAM the guests may keep resident at ``level_pct`` (hostd's --memory-budget)."""
        return int(self.services * self.guest_memory_bytes * 100 / (100 + level_pct))

    def given_bytes(self, level_pct: int) -> int:
        """The QEMU processes' cgroup limit at ``level_pct`` overcommit."""
        return self.budget_bytes(level_pct) + self.services * self.qemu_allowance_bytes

    def excess_bytes(self, level_pct: int) -> int:
        """How far the guests' RAM exceeds what is given to guest RAM."""
        return self.services * self.guest_memory_bytes - self.budget_bytes(level_pct)


def plan(cfg: VMConfig) -> list[Cell]:
    """As process mode: the unconstrained baseline, then the levels with rotated manager order."""
    from heapballoon.experiment.config import plan as process_plan

    return process_plan(cfg)


def quick(out_dir: str, seed: int = 1, command: str = "heapballoon experiment --mode vm --quick") -> VMConfig:
    """Reduced: one level (50 %), three managers (none, heapballoon, heapballoon+virtio), 30 s cells."""
    return VMConfig(out_dir=out_dir, seed=seed, quick=True, levels_pct=(50,),
                    managers=("none", "heapballoon", "heapballoon+virtio"), cell_s=30.0, command=command)


def full(out_dir: str, seed: int = 1, command: str = "heapballoon experiment --mode vm") -> VMConfig:
    return VMConfig(out_dir=out_dir, seed=seed, quick=False, levels_pct=(0, 25, 50, 100), command=command)


def validate(cfg: VMConfig) -> None:
    if not cfg.levels_pct or any(level < 0 for level in cfg.levels_pct):
        raise UsageError("overcommit levels must be >= 0")
    unknown = set(cfg.managers) - set(VM_MANAGERS)
    if unknown:
        raise UsageError(f"unknown VM-mode managers {sorted(unknown)}: choose from {', '.join(VM_MANAGERS)}")
    if cfg.services < 1:
        raise UsageError("VM mode needs at least one guest")
    if not 1 <= cfg.rounds <= 50:
        raise UsageError(f"invalid --rounds {cfg.rounds}: must be 1..50")
