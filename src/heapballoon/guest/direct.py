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
from heapballoon.linux.virtioballoon import VirtioBalloon

log = logging.getLogger("heapballoon.guest")


class LocalPolicy:
    """The direct way's part of the guest driver: ``law`` None is no local law. Mutable state
    (event loop thread): ``law_target_bytes`` (the local law's node target), ``law_reason``,
    ``last_total_bytes``."""

    def __init__(self, law: LocalLaw | None, procfs: ProcFS, report_order: int | None = None,
                 page_reporting: PageReporting | None = None) -> None:
        self.law = law
        self.procfs = procfs
        self.report_order = report_order
        self.page_reporting = page_reporting or PageReporting()
        self.law_target_bytes = 0
        self.law_reason = ""
        self.last_total_bytes: int | None = None  # MemTotal at the last step (its fall: the balloon growing)

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
        total = info.get("MemTotal", 0)
        growth = 0 if self.last_total_bytes is None else max(0, self.last_total_bytes - total)
        self.last_total_bytes = total
        return GuestMemory(total, info.get("MemAvailable", 0), psi, growth)

    def apply_law(self, registry: Registry) -> bool:
        """One step of the local law (loop thread). True when it moved the node target."""
        mem = self.law and self.guest_memory()
        if mem is None:
            return False
        balloon = sum(rec.state.balloon_bytes for rec in registry if rec.connected)
        idle = sum(rec.excess_bytes for rec in registry if rec.connected)
        step = self.law.step(mem, self.law_target_bytes, balloon, idle)
        changed = step.target_bytes != self.law_target_bytes
        if changed:
            log.info("local law (%s): node target %d MiB → %d MiB (available %d MiB of %d MiB, balloons %d MiB, "
                     "virtio-balloon took %d MiB since the last tick, psi some %s)", step.reason,
                     self.law_target_bytes >> 20, step.target_bytes >> 20, mem.available_bytes >> 20,
                     mem.total_bytes >> 20, balloon >> 20, mem.balloon_growth_bytes >> 20, mem.psi_some_avg10)
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


def announce_idle_heap_mode(choice: str, balloon: VirtioBalloon | None = None) -> str:
    """Logs what the guest's virtio-balloon can do and what ``--idle-heap`` (``free`` or
    ``on-demand``) does with it (a warning for on-demand without deflate-on-oom); returns the
    choice unchanged.

    ``free`` is the default because reacting loses on both kinds of balloon (issue 17, TCG): a
    libvirt domain's balloon without deflate-on-oom took the last free page and the guest
    OOM-killed the JVM 4 s after ``virsh setmem``; our guests' balloon, which deflates on OOM,
    inflated 250 MiB in 2 s and left the guest thrashing with the JVM's balloon at 24 MiB."""
    try:
        feats = (balloon or VirtioBalloon()).features()
    except KernelError as err:
        log.warning("virtio-balloon features unreadable (%s)", err)
        feats = None
    if feats is None:
        what = "no virtio-balloon in this guest (free page reporting off)"
    else:
        what = (f"virtio-balloon {feats.device}: deflate-on-oom {'on' if feats.deflate_on_oom else 'off'}, "
                f"free page reporting {'on' if feats.free_page_reporting else 'off'}")
    if choice == "free":
        log.info("%s; keeping the JVMs' idle heap free ahead of any request (--idle-heap free)", what)
    elif feats is not None and not feats.deflate_on_oom:
        log.warning("%s; JVMs give idle heap only once MemAvailable falls (--idle-heap on-demand): a host asking "
                    "for more than is free makes this guest OOM-kill its largest process", what)
    else:
        log.info("%s; JVMs give idle heap only once MemAvailable falls (--idle-heap on-demand)", what)
    return choice


def add_direct_arguments(p, size_arg) -> None:
    """The guest driver's options for the direct way (``argparse`` parser ``p``)."""
    p.add_argument("--reserve", type=size_arg, default=None,
                   help="direct: keep at least this much guest MemAvailable, inflating JVM balloons "
                        "(default: 32M or 3%% of guest RAM, whichever is more)")
    p.add_argument("--band", type=size_arg, default=LocalLaw.band_bytes,
                   help="direct, on-demand: deflate only once MemAvailable is this much above the reserve (default 64M)")
    p.add_argument("--no-local-policy", action="store_true", help="direct: targets only by hand (heapballoon target)")
    p.add_argument("--idle-heap", choices=("free", "on-demand"), default="free",
                   help="direct: free (default): keep the JVMs' idle heap free ahead of any request (free page "
                        "reporting hands it to the host; a virtio-balloon finds it free); on-demand: give only what "
                        "the reserve needs, and take it back when the host gives memory back")
    p.add_argument("--report-order", type=int, default=None, metavar="ORDER",
                   help="set the kernel's page_reporting_order (0: report freed 4 KiB pages; kernel default 9)")


def law_from_arguments(args) -> LocalLaw | None:
    """The local law the direct way's options ask for (None: ``--no-local-policy``)."""
    if args.no_local_policy:
        return None
    return LocalLaw(args.reserve, args.band, free_idle_heap=announce_idle_heap_mode(args.idle_heap) == "free")
