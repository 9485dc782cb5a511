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
* taken (the virtio-balloon grew by ``g`` since the last tick, and the same again would leave
  less than the reserve: ``reserve - available + g > 0``): grow the target to ``balloon now +
  reserve - available + g``. The balloon goes on at the rate it went until the host's target is
  met, and a guest whose balloon cannot deflate on OOM (libvirt's default, Proxmox, KubeVirt, nova:
  no ``deflate-on-oom``) OOM-kills the largest process, the JVM, once the balloon has the last
  free page: giving only the shortfall, at most the reserve a tick, loses that race (a 1 GiB
  TCG guest's balloon took 578 MiB in 4 s). ``g`` is the fall of MemTotal: without
  deflate-on-oom the kernel takes ballooned pages out of MemTotal; with it, MemTotal stays and
  ``g`` is 0 (the balloon then gives pages back at OOM instead of the kernel killing);
* plenty (``available > reserve + band``) and no memory pressure (PSI ``some avg10`` below
  ``max_psi_some``): shrink the target by the surplus above ``reserve + band`` — the host gave
  memory back, the JVMs get their heap back;
* in between: hold (the band keeps it from flapping).

With ``free_idle_heap`` the target is never below the JVMs' idle heap (``idle_bytes``: each
JVM's committed heap less its live data and headroom, as the agents report it): the guest keeps
it free ahead of any request, free page reporting hands it to the host, and a virtio-balloon
that inflates finds it free at once. It is the guest driver's default (``--idle-heap free``):
reacting loses to a balloon that inflates faster than the JVMs give, with deflate-on-oom or
without (guest.direct.announce_idle_heap_mode has the figures).

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
    balloon_growth_bytes: int = 0  # MemTotal's fall since the last step: the virtio-balloon inflating


@dataclass(frozen=True)
class LawStep:
    """One decision: the new node target and why (for the log and ``status``)."""

    target_bytes: int
    reason: str  # "short", "taken", "plenty", "hold", "pressure", "idle"


@dataclass(frozen=True)
class LocalLaw:
    reserve_bytes: int | None = None  # None: max(32 MiB, 3 % of MemTotal)
    band_bytes: int = DEFAULT_BAND_BYTES
    max_psi_some: float = DEFAULT_MAX_PSI_SOME
    free_idle_heap: bool = False  # the target never below the JVMs' idle heap (see the module doc)

    def reserve(self, total_bytes: int) -> int:
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        return max(MIN_RESERVE_BYTES, int(total_bytes * RESERVE_FRACTION))

    def step(self, mem: GuestMemory, target_bytes: int, balloon_bytes: int, idle_bytes: int = 0) -> LawStep:
        """The node target after this tick, from the current target, the JVMs' balloons now and
        (with ``free_idle_heap``) their idle heap."""
        step = self._step(mem, max(0, target_bytes), max(0, balloon_bytes))
        floor = max(0, idle_bytes) if self.free_idle_heap else 0
        return step if step.target_bytes >= floor else LawStep(floor, "idle")

    def _step(self, mem: GuestMemory, target_bytes: int, balloon_bytes: int) -> LawStep:
        reserve = self.reserve(mem.total_bytes)
        short = reserve - mem.available_bytes
        if short > 0:
            return LawStep(max(target_bytes, balloon_bytes + short + max(0, mem.balloon_growth_bytes)), "short")
        ahead = short + max(0, mem.balloon_growth_bytes)  # what the balloon's next tick would leave short
        if ahead > 0:
            return LawStep(max(target_bytes, balloon_bytes + ahead), "taken")
        surplus = mem.available_bytes - reserve - self.band_bytes
        if surplus <= 0 or target_bytes == 0:
            return LawStep(target_bytes, "hold")
        if mem.psi_some_avg10 is not None and mem.psi_some_avg10 >= self.max_psi_some:
            return LawStep(target_bytes, "pressure")
        return LawStep(max(0, target_bytes - surplus), "plenty")
