"""Reclaim verification: what the kernel really did with each balloon page.

The driver never trusts the agent's word for reclaimed memory. It reads /proc/PID/pagemap for
the page-aligned interior of every chunk payload and counts a page as reclaimed when it is
backed by no private frame: not present and not swapped (released with madvise), or mapped to
the kernel's shared zero page (merged by KSM with ``use_zero_pages``).
"""

from __future__ import annotations

from dataclasses import dataclass

from heapballoon import protocol
from heapballoon.linux import pagemap
from heapballoon.linux.procfs import ProcFS


@dataclass(frozen=True)
class Verification:
    balloon_pages: int
    reclaimed_pages: int
    present_pages: int

    @property
    def reclaimed_bytes(self) -> int:
        return self.reclaimed_pages * pagemap.PAGE_SIZE


def verify_chunks(procfs: ProcFS, pid: int, chunks: tuple[protocol.Chunk, ...],
                  zero_pfn: int | None) -> Verification:
    balloon = reclaimed = present = 0
    for chunk in chunks:
        start, npages = pagemap.page_interior(chunk.addr, chunk.len)
        if npages <= 0:
            continue
        entries = pagemap.read_entries(procfs, pid, start, npages)
        count = pagemap.count_pages(entries, zero_pfn)
        balloon += count.pages
        reclaimed += count.reclaimed
        present += count.present
    return Verification(balloon, reclaimed, present)


def chunk_frames(procfs: ProcFS, pid: int, chunk: protocol.Chunk) -> list[int]:
    """Physical frame numbers behind a chunk's whole pages (0 where no page is present)."""
    start, npages = pagemap.page_interior(chunk.addr, chunk.len)
    if npages <= 0:
        return []
    return pagemap.frames(pagemap.read_entries(procfs, pid, start, npages))
