"""The guest driver's direct way (issue 17): the local law's node target and free page reporting.

Owns the steps :class:`heapballoon.guest.driver.GuestDriver` takes when it runs on a stock host
(``reclaim: direct``): reading the guest's memory through linux/ (MemTotal, MemAvailable, PSI),
one step of :class:`heapballoon.guest.locallaw.LocalLaw` a tick, and setting the kernel's
``page_reporting_order`` once at start. A mixin: it declares no state; ``law``,
``law_target_bytes``, ``law_reason``, ``report_order`` and ``page_reporting`` are declared in
``GuestDriver.__init__`` and owned by the event loop thread. Pure standard library.
"""

from __future__ import annotations

import logging

from heapballoon.errors import KernelError
from heapballoon.guest.locallaw import GuestMemory

log = logging.getLogger("heapballoon.guest")


class LocalPolicy:
    """The direct way's part of GuestDriver (uses its ``procfs``, ``registry``, ``_wake`` ...)."""

    def node_target(self) -> int | None:
        """What is set by hand (``heapballoon target all``, or hostd) or, if more, the local law's."""
        if self.law is None:
            return self.node_target_bytes
        return max(self.node_target_bytes or 0, self.law_target_bytes) or self.node_target_bytes

    def guest_memory(self) -> GuestMemory | None:
        try:
            info = self.procfs.meminfo()
        except KernelError as err:
            log.warning("cannot read meminfo: %s", err)
            return None
        try:
            psi = self.procfs.pressure("memory").get("some", {}).get("avg10")
        except KernelError:
            psi = None
        return GuestMemory(info.get("MemTotal", 0), info.get("MemAvailable", 0), psi)

    def apply_law(self) -> None:
        """One step of the local law (loop thread)."""
        mem = self.law and self.guest_memory()
        if mem is None:
            return
        balloon = sum(rec.state.balloon_bytes for rec in self.registry if rec.connected)
        step = self.law.step(mem, self.law_target_bytes, balloon)
        if step.target_bytes != self.law_target_bytes:
            log.info("local law (%s): node target %d MiB → %d MiB (available %d MiB of %d MiB, balloons %d MiB, "
                     "psi some %s)", step.reason, self.law_target_bytes >> 20, step.target_bytes >> 20,
                     mem.available_bytes >> 20, mem.total_bytes >> 20, balloon >> 20, mem.psi_some_avg10)
            self._wake.set()
        self.law_target_bytes, self.law_reason = step.target_bytes, step.reason

    def set_report_order(self) -> None:
        if self.report_order is None:
            return
        try:
            before = self.page_reporting.order()
            after = self.page_reporting.set_order(self.report_order)
            log.info("page_reporting_order %d → %d", before, after)
        except KernelError as err:
            log.warning("free page reporting order not set (%s): freed pages are reported in the kernel's "
                        "default blocks only", err)
