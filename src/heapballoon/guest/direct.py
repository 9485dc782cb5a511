"""The guest driver's direct way (issue 17): the local law's node target and free page reporting.

Owns the steps :class:`heapballoon.guest.driver.GuestDriver` takes when it runs on a stock host
(``reclaim: direct``): reading the guest's memory through linux/ (MemTotal, MemAvailable, PSI),
one step of :class:`heapballoon.guest.locallaw.LocalLaw` a tick, and setting the kernel's
``page_reporting_order`` once at start. :class:`LocalPolicy` is a part the guest driver
composes; it owns ``law_target_bytes`` and ``law_reason`` (event loop thread). Pure standard
library.
"""

from __future__ import annotations

import logging

from heapballoon.driver.registry import Registry
from heapballoon.errors import KernelError
from heapballoon.guest.locallaw import GuestMemory, LocalLaw
from heapballoon.linux.pagereporting import PageReporting
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.guest")


class LocalPolicy:
    """The direct way's part of the guest driver: ``law`` None is no local law. Mutable state
    (event loop thread): ``law_target_bytes`` (the local law's node target), ``law_reason``."""

    def __init__(self, law: LocalLaw | None, procfs: ProcFS, report_order: int | None = None,
                 page_reporting: PageReporting | None = None) -> None:
        self.law = law
        self.procfs = procfs
        self.report_order = report_order
        self.page_reporting = page_reporting or PageReporting()
        self.law_target_bytes = 0
        self.law_reason = ""

    def node_target(self, hand_set_bytes: int | None) -> int | None:
        """What is set by hand (``heapballoon target all``, or hostd) or, if more, the local law's."""
        if self.law is None:
            return hand_set_bytes
        return max(hand_set_bytes or 0, self.law_target_bytes) or hand_set_bytes

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

    def apply_law(self, registry: Registry) -> bool:
        """One step of the local law (loop thread). True when it moved the node target."""
        mem = self.law and self.guest_memory()
        if mem is None:
            return False
        balloon = sum(rec.state.balloon_bytes for rec in registry if rec.connected)
        step = self.law.step(mem, self.law_target_bytes, balloon)
        changed = step.target_bytes != self.law_target_bytes
        if changed:
            log.info("local law (%s): node target %d MiB → %d MiB (available %d MiB of %d MiB, balloons %d MiB, "
                     "psi some %s)", step.reason, self.law_target_bytes >> 20, step.target_bytes >> 20,
                     mem.available_bytes >> 20, mem.total_bytes >> 20, balloon >> 20, mem.psi_some_avg10)
        self.law_target_bytes, self.law_reason = step.target_bytes, step.reason
        return changed

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
