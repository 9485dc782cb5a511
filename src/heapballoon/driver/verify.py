"""Reclaim verification: what the kernel really did with each balloon page.

The driver never trusts the agent's word for reclaimed memory. **Reclaimed means resident
before and not resident after**:

* Only claimed pages inside the process's own heap mappings count (private, writable,
  anonymous: :func:`pagemap.heap_ranges`); unmapped address space, files, shared memory are
  never read nor counted. Overlapping chunks count once.
* Such a page is *not resident now* when pagemap shows no private frame behind it: not present
  and not swapped (released with madvise), or the kernel's shared zero page (merged by KSM with
  ``use_zero_pages``).
* *Resident before*: a page the process never touched is also "not present". So the count is
  capped by what the process really gave back, as the kernel counts it: its peak resident set
  (``VmHWM``, and the highest the driver saw) minus what is resident or swapped now — the
  *most* it was ever seen below its peak (``given_back_bytes``, kept per JVM), so a JVM that
  later grows elsewhere (JIT, metaspace) does not see its balloon's credit shrink. An agent
  that maps a huge range and never touches it shows 0 reclaimed; a balloon inflated into heap
  the JVM never used saves nothing now, and shows (about) nothing.

Pagemap is read in bounded pieces (:data:`pagemap.READ_PIECE_PAGES`), and at most
:data:`MAX_VERIFY_PAGES_PER_TICK` pages per agent per tick: a larger balloon is verified over
several ticks (:class:`Scan` keeps the place). Before any of it counts, the process's start
time is checked again: the pagemap read is of the process the agent was bound to at accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from heapballoon import protocol
from heapballoon.linux import pagemap
from heapballoon.linux.procfs import ProcessGone, ProcFS

# Per agent and tick: 16 GiB of 4 KiB pages (32 MiB of pagemap, read 512 KiB at a time).
MAX_VERIFY_PAGES_PER_TICK = 1 << 22


@dataclass(frozen=True)
class Verification:
    balloon_pages: int  # claimed whole pages inside the process's heap mappings
    reclaimed_pages: int  # of those: not resident now, at most what the process gave back
    present_pages: int
    not_resident_pages: int = 0  # before the cap
    peak_bytes: int = 0  # the highest peak resident set seen, this verification included
    given_back_bytes: int = 0  # the most the process was ever seen below its peak, this one included
    claimed_pages: int = 0  # every claimed whole page, inside the heap or not

    @property
    def reclaimed_bytes(self) -> int:
        return self.reclaimed_pages * pagemap.PAGE_SIZE


# A capped figure moves with the process's resident set (a JIT, a thread stack): a change
# smaller than this is not published, so an idle JVM's reclaimed_bytes (and the log line that
# shows it) does not flicker. At most this much off, in either direction.
CAP_JITTER_BYTES = 1 << 20
CAP_JITTER_FRACTION = 0.01


def steady_reclaimed_bytes(old_bytes: int, v: Verification) -> int:
    """What to publish for ``v``: its figure, except that a *capped* one (fewer pages given back
    than found released) within the jitter band of ``old_bytes`` keeps ``old_bytes``."""
    new = v.reclaimed_bytes
    capped = v.reclaimed_pages < v.not_resident_pages
    if capped and abs(new - old_bytes) < max(CAP_JITTER_BYTES, old_bytes * CAP_JITTER_FRACTION):
        return old_bytes
    return new


@dataclass(frozen=True)
class Scan:
    """A verification under way: the (merged, clipped) ranges of one state's chunks, and how
    far they were read. Immutable: each tick's worker returns the next one."""

    chunks: tuple[protocol.Chunk, ...]
    ranges: tuple[tuple[int, int], ...]
    claimed_pages: int
    done_pages: int = 0
    count: pagemap.PageCount = pagemap.NO_PAGES

    @property
    def total_pages(self) -> int:
        return sum((end - start) // pagemap.PAGE_SIZE for start, end in self.ranges)


def claimed_ranges(chunks: tuple[protocol.Chunk, ...]) -> list[tuple[int, int]]:
    """The whole pages of every chunk as merged ``(start, end)`` ranges (overlaps count once)."""
    out = []
    for c in chunks:
        first, npages = pagemap.page_interior(c.addr, c.len)
        if npages > 0:
            out.append((first, first + npages * pagemap.PAGE_SIZE))
    return pagemap.merge_ranges(out)


def plan_scan(procfs: ProcFS, pid: int, chunks: tuple[protocol.Chunk, ...]) -> Scan:
    claimed = claimed_ranges(chunks)
    ranges = pagemap.clip_ranges(claimed, pagemap.heap_ranges(procfs, pid))
    return Scan(chunks, tuple(ranges), sum((e - s) // pagemap.PAGE_SIZE for s, e in claimed))


def _check_same_process(procfs: ProcFS, pid: int, starttime: int) -> None:
    if procfs.starttime(pid) != starttime:
        raise ProcessGone(f"PID {pid} is another process now (start time changed)")


def verify_step(procfs: ProcFS, pid: int, starttime: int, chunks: tuple[protocol.Chunk, ...], scan: Scan | None,
                zero_pfn: int | None, peak_bytes: int,
                budget_pages: int = MAX_VERIFY_PAGES_PER_TICK, given_back_bytes: int = 0) -> Scan | Verification:
    """One tick of verification of one agent (worker thread; touches no driver state): read
    at most ``budget_pages`` more pages; the next :class:`Scan`, or the :class:`Verification`
    once every page is read. KernelError (ProcessGone) when ``pid`` is not the process started
    at ``starttime`` any more."""
    with procfs.open_pagemap(pid) as f:
        # The open pagemap is bound to the process it was opened for: checked once here, every
        # read below is of the agent's own process, never of a process that took its pid.
        _check_same_process(procfs, pid, starttime)
        if scan is None or scan.chunks != chunks:
            scan = plan_scan(procfs, pid, chunks)
        count, done, left = scan.count, scan.done_pages, budget_pages
        skip = done
        for start, end in scan.ranges:
            npages = (end - start) // pagemap.PAGE_SIZE
            if skip >= npages:
                skip -= npages
                continue
            n = min(npages - skip, left)
            count = pagemap.add_counts(count, pagemap.count_range(procfs, pid, start + skip * pagemap.PAGE_SIZE, n,
                                                                  zero_pfn, file=f))
            done, left, skip = done + n, left - n, 0
            if left <= 0:
                break
        if done < scan.total_pages:
            return Scan(scan.chunks, scan.ranges, scan.claimed_pages, done, count)
        res = pagemap.residency(procfs, pid)
        _check_same_process(procfs, pid, starttime)
    peak = max(peak_bytes, res.peak_bytes)
    given_back = max(given_back_bytes, peak - res.resident_bytes - res.swap_bytes, 0)
    given_back_pages = given_back // pagemap.PAGE_SIZE
    return Verification(balloon_pages=count.pages, reclaimed_pages=min(count.reclaimed, given_back_pages),
                        present_pages=count.present, not_resident_pages=count.reclaimed, peak_bytes=peak,
                        given_back_bytes=given_back,
                        claimed_pages=scan.claimed_pages)


def chunk_frames(procfs: ProcFS, pid: int, chunk: protocol.Chunk,
                 heap: list[tuple[int, int]] | None = None) -> list[int]:
    """Physical frame numbers behind a chunk's whole pages inside the process's heap mappings
    (``heap``: :func:`pagemap.heap_ranges`, read here when not given), 0 where no page is
    present; read in bounded pieces."""
    heap = pagemap.heap_ranges(procfs, pid) if heap is None else heap
    out: list[int] = []
    for start, end in pagemap.clip_ranges(claimed_ranges((chunk,)), heap):
        out.extend(pagemap.frames_of_range(procfs, pid, start, (end - start) // pagemap.PAGE_SIZE))
    return out
