"""The guest-local policy law (issue 17): keep the guest's available memory above a reserve.

Owns one decision, made every tick of the guest driver when it runs with no host daemon
(``reclaim: direct``): the *node* balloon target of the guest's JVMs. The guest driver splits it
among JVMs by idle heap exactly as the node driver splits ``heapballoon target all``
(``driver.policy.effective_targets``: in proportion to each JVM's excess, water-filled), and
the agents free their balloons' pages with ``madvise`` (the direct path), so the guest kernel
owns those pages again. Whatever takes guest memory from outside — the host's virtio-balloon
inflating (``QMP balloon``, ``virsh setmem --live``, OpenStack, Proxmox) — shows up as
MemAvailable falling, and that is all this law looks at:

The reserve defaults to what hostd's own policy leaves a guest (docs/policy.md): 32 MiB or 3 %
of the guest's RAM, whichever is more. A 1 GiB guest running a pre-touched ``-Xms768m`` JVM has
only 1–13 MiB available, so the law starts by freeing that much heap before any host asks.

* short (``available < reserve``): grow the target to ``balloon now + shortfall`` (never
  below the current target), so the idle heap the JVMs give makes up the difference;
* plenty (``available > reserve + band``) and no memory pressure (PSI ``some avg10`` below
  ``max_psi_some``): shrink the target by the surplus above ``reserve + band`` — the host gave
  memory back, the JVMs get their heap back;
* in between: hold (the band keeps it from flapping).

Pure: no I/O; the driver reads /proc through linux/ and hands in a :class:`GuestMemory`.
Standard library only (it runs in the guest).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20
MIN_RESERVE_BYTES = 32 * MIB
RESERVE_FRACTION = 0.03
DEFAULT_BAND_BYTES = 64 * MIB
DEFAULT_MAX_PSI_SOME = 10.0  # % of the last 10 s some task stalled on memory


@dataclass(frozen=True)
class GuestMemory:
    """What the guest kernel says about its memory now (/proc/meminfo, /proc/pressure/memory)."""

    total_bytes: int
    available_bytes: int
    psi_some_avg10: float | None = None  # None: no PSI in this kernel


@dataclass(frozen=True)
class LawStep:
    """One decision: the new node target and why (for the log and ``status``)."""

    target_bytes: int
    reason: str  # "short", "plenty", "hold", "pressure"


@dataclass(frozen=True)
class LocalLaw:
    reserve_bytes: int | None = None  # None: max(32 MiB, 3 % of MemTotal)
    band_bytes: int = DEFAULT_BAND_BYTES
    max_psi_some: float = DEFAULT_MAX_PSI_SOME

    def reserve(self, total_bytes: int) -> int:
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        return max(MIN_RESERVE_BYTES, int(total_bytes * RESERVE_FRACTION))

    def step(self, mem: GuestMemory, target_bytes: int, balloon_bytes: int) -> LawStep:
        """The node target after this tick, from the current target and the JVMs' balloons now."""
        target_bytes, balloon_bytes = max(0, target_bytes), max(0, balloon_bytes)
        reserve = self.reserve(mem.total_bytes)
        short = reserve - mem.available_bytes
        if short > 0:
            return LawStep(max(target_bytes, balloon_bytes + short), "short")
        surplus = mem.available_bytes - reserve - self.band_bytes
        if surplus <= 0 or target_bytes == 0:
            return LawStep(target_bytes, "hold")
        if mem.psi_some_avg10 is not None and mem.psi_some_avg10 >= self.max_psi_some:
            return LawStep(target_bytes, "pressure")
        return LawStep(max(0, target_bytes - surplus), "plenty")
