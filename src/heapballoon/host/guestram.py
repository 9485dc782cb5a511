"""The guest-RAM file of one QEMU VM: find it, check pages for zero, punch holes, count blocks.

This module owns the *bytes* of guest RAM as the host sees them: QEMU's RAM backend is a
memfd (``-object memory-backend-memfd,id=ram0,share=on``); :meth:`GuestRam.open` finds it
with vm.ramfile's one rule (the one memfd of the VM's RAM size, through linux/) and opens its
own file description on it. :meth:`GuestRam.check_and_punch` reads page runs with ``preadv``
into one reusable buffer, compares them with zeros (``bytes ==`` is a memcmp), skips holes
with ``SEEK_DATA``/``SEEK_HOLE`` (a hole is already reclaimed) and punches each run of
all-zero pages with one ``fallocate(PUNCH_HOLE|KEEP_SIZE)``. It knows nothing about guest
page numbers (see layout.py) or about pausing the VM (see reclaim.py): callers must hold
the VM stopped while they call :meth:`check_and_punch`, or a page the guest writes between
the check and the punch would be lost.

Two ways to use it. :meth:`GuestRam.check_and_punch` (the first engine) reads and punches in
one go, all under one pause. The short-pause engine splits that: :meth:`GuestRam.precheck`
looks at the *running* guest's RAM (holes skipped, non-zero pages skipped, all-zero allocated
runs kept as candidates), then :meth:`GuestRam.recheck_and_punch`, under a pause, re-checks
only the candidates in place (a read-only shared mapping, ``memcmp`` at memory speed, see
heapballoon.linux.memview) and punches what is still zero. The re-check under the pause is
what keeps the guarantee: a page is punched only if it was all zero while the guest was
stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from heapballoon.errors import GuestRamError, KernelError, ReclaimError
from heapballoon.linux.memfd import open_memfd, punch_hole
from heapballoon.linux.procfs import ProcFS
from heapballoon.linux.memview import MemView, data_runs, punch_holding_gil
from heapballoon.units import PAGE_BYTES
from heapballoon.vm.ramfile import find_guest_ram

CHUNK_BYTES = 1 << 20  # one read; a whole zero chunk is one memcmp
_ZERO_PAGE = bytes(PAGE_BYTES)
_ZERO_CHUNK = bytes(CHUNK_BYTES)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of [offset, offset+length) (reads return zeros afterwards)."""
    try:
        punch_hole(fd, offset, length)
    except KernelError as err:
        raise ReclaimError(str(err)) from None


def _data_runs(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    try:
        return data_runs(fd, offset, length)
    except KernelError as err:
        raise ReclaimError(str(err)) from None


@dataclass(frozen=True)
class Precheck:
    """What a look at live guest RAM (VM running) found in some extents: ``candidates`` are
    allocated all-zero runs ``((offset, length), ...)`` to re-check and punch under a pause;
    holes are already reclaimed; non-zero pages are skipped."""

    candidates: tuple[tuple[int, int], ...]
    candidate_pages: int
    already_pages: int
    skipped_nonzero_pages: int


@dataclass(frozen=True)
class PauseWork:
    """What one pause did with candidate runs: pages punched, pages found non-zero (the guest
    wrote them after the pre-check), and how long the re-check and the punches took."""

    punched_pages: int
    skipped_nonzero_pages: int
    check_s: float
    punch_s: float


@dataclass
class PunchResult:
    """Pages of one check-and-punch pass, each counted exactly once."""

    punched_pages: int = 0
    already_pages: int = 0
    skipped_nonzero_pages: int = 0
    punch_s: float = 0.0  # time spent in fallocate (the rest of a pass is the check)

    def add(self, other: PunchResult) -> None:
        self.punched_pages += other.punched_pages
        self.already_pages += other.already_pages
        self.skipped_nonzero_pages += other.skipped_nonzero_pages
        self.punch_s += other.punch_s


def _is_qemu(pid: int, procfs: ProcFS) -> bool:
    try:
        return os.path.basename(procfs.exe(pid)).startswith("qemu")
    except KernelError:
        return False


class GuestRam:
    """One VM's guest-RAM memfd, opened read-write by hostd."""

    def __init__(self, fd: int, size_bytes: int, qemu_pid: int | None = None, name: str = "") -> None:
        self.fd = fd
        self.size_bytes = size_bytes
        self.qemu_pid = qemu_pid
        self.name = name or f"fd {fd}"
        self._buf = bytearray(CHUNK_BYTES)
        self._view: MemView | None = None

    @classmethod
    def open(cls, qemu_pid: int, size_bytes: int, procfs: ProcFS | None = None) -> GuestRam:
        """Open the guest-RAM memfd of QEMU ``qemu_pid``: the one memfd of exactly ``size_bytes``
        (vm.ramfile's rule, shared with the VM launcher and the CLI)."""
        procfs = procfs or ProcFS()
        if not _is_qemu(qemu_pid, procfs):
            raise ReclaimError(f"process {qemu_pid} is not a QEMU process (or is gone)")
        try:
            memfd = find_guest_ram(qemu_pid, size_bytes, procfs)
            fd = open_memfd(memfd, True, procfs)
        except (GuestRamError, KernelError) as err:
            raise ReclaimError(str(err)) from err
        return cls(fd, size_bytes, qemu_pid, f"qemu {qemu_pid} fd {memfd.fd} memfd:{memfd.name}")

    def close(self) -> None:
        """Close our fd (while it is open it keeps the guest RAM alive even after QEMU exits)."""
        if self._view is not None:
            self._view.close()
            self._view = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> GuestRam:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ measurements

    def resident_bytes(self) -> int:
        """Bytes of guest RAM the host has allocated (st_blocks; holes cost nothing)."""
        return os.fstat(self.fd).st_blocks * 512

    def data_runs(self, offset: int, length: int) -> list[tuple[int, int]]:
        return _data_runs(self.fd, offset, length)

    def hole_bytes(self, extents: list[tuple[int, int]]) -> int:
        """How many bytes of ``extents`` (offset, length) are holes, i.e. not allocated."""
        total = 0
        for off, length in extents:
            total += length - sum(n for _, n in _data_runs(self.fd, off, length))
        return total

    # ------------------------------------------------------------ the reclaim step

    def _check_extent(self, offset: int, length: int) -> tuple[list[tuple[int, int]], int]:
        """Zero runs to punch and the non-zero page count inside allocated [offset, +length)."""
        fd, buf, zero_runs, nonzero = self.fd, self._buf, [], 0
        run_start = -1
        pos, end = offset, offset + length
        while pos < end:
            n = min(CHUNK_BYTES, end - pos)
            view = buf if n == CHUNK_BYTES else memoryview(buf)[:n]
            got = os.preadv(fd, [view], pos)
            if got != n:
                raise ReclaimError(f"short read of guest RAM at {pos:#x}: {got} of {n} bytes")
            if n == CHUNK_BYTES and buf == _ZERO_CHUNK:
                if run_start < 0:
                    run_start = pos
            else:
                for i in range(0, n, PAGE_BYTES):
                    if buf[i:i + PAGE_BYTES] == _ZERO_PAGE:
                        if run_start < 0:
                            run_start = pos + i
                    else:
                        nonzero += 1
                        if run_start >= 0:
                            zero_runs.append((run_start, pos + i - run_start))
                            run_start = -1
            pos += n
        if run_start >= 0:
            zero_runs.append((run_start, end - run_start))
        return zero_runs, nonzero

    def check_and_punch(self, extents: list[tuple[int, int]], punch: bool = True) -> PunchResult:
        """For each page of ``extents`` ((offset, length), page aligned): a hole counts as
        already reclaimed, an all-zero page is punched, any other page is left untouched and
        counted as skipped. The VM must be stopped (see module docstring)."""
        result = PunchResult()
        for off, length in extents:
            if off % PAGE_BYTES or length % PAGE_BYTES or off < 0 or off + length > self.size_bytes:
                raise ReclaimError(f"extent ({off:#x}, {length:#x}) is not page aligned inside "
                                   f"the {self.size_bytes}-byte guest RAM")
            data_bytes = 0
            for doff, dlen in _data_runs(self.fd, off, length):
                data_bytes += dlen
                zero_runs, nonzero = self._check_extent(doff, dlen)
                result.skipped_nonzero_pages += nonzero
                t0 = time.perf_counter()
                for zoff, zlen in zero_runs:
                    if punch:
                        _punch_hole(self.fd, zoff, zlen)
                    result.punched_pages += zlen // PAGE_BYTES
                result.punch_s += time.perf_counter() - t0
            result.already_pages += (length - data_bytes) // PAGE_BYTES
        return result

    # ------------------------------------------------------------ the short-pause engine

    @property
    def view(self) -> MemView:
        if self._view is None:
            try:
                self._view = MemView(self.fd, self.size_bytes)
            except KernelError as err:
                raise ReclaimError(str(err)) from None
        return self._view

    def _validate(self, off: int, length: int) -> None:
        if off % PAGE_BYTES or length % PAGE_BYTES or off < 0 or off + length > self.size_bytes:
            raise ReclaimError(f"extent ({off:#x}, {length:#x}) is not page aligned inside "
                               f"the {self.size_bytes}-byte guest RAM")

    def precheck(self, extents: list[tuple[int, int]]) -> Precheck:
        """Classify the pages of ``extents`` on the running guest (no pause needed: nothing is
        written). Candidate pages are left mapped in our view so the re-check takes no faults."""
        view = self.view
        candidates: list[tuple[int, int]] = []
        already = nonzero = 0
        try:
            for off, length in extents:
                self._validate(off, length)
                data_bytes = 0
                for doff, dlen in _data_runs(self.fd, off, length):
                    data_bytes += dlen
                    view.populate(doff, dlen)
                    runs, bad = view.zero_runs(doff, dlen)
                    nonzero += bad
                    candidates.extend(runs)
                already += (length - data_bytes) // PAGE_BYTES
        except KernelError as err:
            raise ReclaimError(str(err)) from None
        pages = sum(n for _, n in candidates) // PAGE_BYTES
        return Precheck(tuple(candidates), pages, already, nonzero)

    def recheck_and_punch(self, runs: list[tuple[int, int]], clock=time.perf_counter) -> PauseWork:
        """Under a pause: re-check ``runs`` (candidates from :meth:`precheck`) in place and
        punch every page still all zero; a page the guest wrote meanwhile is skipped.

        One thread on purpose: punching zaps our own mapping's page-table entries too, and
        with a second hostd thread checking on the other core each zap costs a TLB-shootdown
        IPI — measured, check and punch in two threads took longer than in one."""
        view = self.view
        check_s = punch_s = 0.0
        punched = nonzero = 0
        try:
            for off, length in runs:
                self._validate(off, length)
                t0 = clock()
                if view.is_zero(off, length):
                    zero, bad = [(off, length)], 0
                else:
                    zero, bad = view.zero_runs(off, length)
                t1 = clock()
                for zoff, zlen in zero:
                    punch_holding_gil(self.fd, zoff, zlen)
                    punched += zlen // PAGE_BYTES
                punch_s += clock() - t1
                check_s += t1 - t0
                nonzero += bad
        except KernelError as err:
            raise ReclaimError(str(err)) from None
        return PauseWork(punched, nonzero, check_s, punch_s)
