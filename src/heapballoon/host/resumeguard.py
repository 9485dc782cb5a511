"""The look between a re-check and its punch: no page is punched after the VM may have run again.

This module owns the rule that makes a punch safe while *other* monitor clients exist: hostd
punches only under a pause it issued itself (``stop``), and right before every punch of at most
``PUNCH_STEP_BYTES`` it asks the monitor whether the VM was resumed since (``resume_count``:
RESUME/WAKEUP events on hostd's own QMP connection; libvirt's domain state for libvirt). A
resume aborts the pause before that punch (:class:`ResumedUnderPause`); the pages not punched
come back unprocessed. A VM someone else holds paused is not worked on at all
(:class:`DeferredError`).
"""

from __future__ import annotations

import time
from typing import Callable

from heapballoon.errors import KernelError, ReclaimError
from heapballoon.host.guestram import GuestRam, PauseWork
from heapballoon.units import PAGE_BYTES
from heapballoon.linux.memview import punch_holding_gil

PUNCH_STEP_BYTES = 2 << 20  # one look for RESUME events before each punch of at most this


class DeferredError(ReclaimError):
    """The VM is paused by someone else: nothing is checked or punched until it runs."""


class ResumedUnderPause(ReclaimError):
    """The VM ran again (someone's ``cont``) during hostd's pause, before a punch; ``work``:
    what was done before."""

    def __init__(self, msg: str, work: PauseWork) -> None:
        super().__init__(msg)
        self.work = work


def recheck_and_punch_guarded(ram: GuestRam, runs: list[tuple[int, int]], resumed: Callable[[], bool],
                              clock=time.perf_counter) -> PauseWork:
    """:meth:`GuestRam.recheck_and_punch` with a guard: ``resumed()`` is asked right before
    every punch of at most ``PUNCH_STEP_BYTES``, and a True aborts (ResumedUnderPause) before
    that punch. Why: a page re-checked zero may be punched only while no vCPU (nor device) can
    write it, and another QMP client's ``cont`` (or a libvirt ``resume``) can end hostd's pause
    at any time. QEMU sends RESUME to every monitor *before* it restarts vCPUs and devices, so
    no RESUME read before a punch means nothing ran before it; the window left is one punch
    step (tens of µs) after the last look (docs/vm.md, "Pauses and other monitor clients")."""
    view = ram.view
    check_s = punch_s = 0.0
    punched = nonzero = 0
    try:
        for off, length in runs:
            if off % PAGE_BYTES or length % PAGE_BYTES or off < 0 or off + length > ram.size_bytes:
                raise ReclaimError(f"run ({off:#x}, {length:#x}) is not page aligned inside the guest RAM")
            t0 = clock()
            zero, bad = ([(off, length)], 0) if view.is_zero(off, length) else view.zero_runs(off, length)
            t1 = clock()
            check_s += t1 - t0
            nonzero += bad
            for zoff, zlen in zero:
                for poff in range(zoff, zoff + zlen, PUNCH_STEP_BYTES):
                    if resumed():
                        raise ResumedUnderPause("resumed under the pause",
                                                PauseWork(punched, nonzero, check_s, punch_s + clock() - t1))
                    plen = min(PUNCH_STEP_BYTES, zoff + zlen - poff)
                    punch_holding_gil(ram.fd, poff, plen)
                    punched += plen // PAGE_BYTES
            punch_s += clock() - t1
    except KernelError as err:
        raise ReclaimError(str(err)) from None
    return PauseWork(punched, nonzero, check_s, punch_s)
