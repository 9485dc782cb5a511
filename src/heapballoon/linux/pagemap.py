"""Virtual → physical translation through ``/proc/PID/pagemap``, and reclaim accounting.

Owns: reading pagemap entries for an address range (through :class:`ProcFS`), decoding them,
finding the kernel zero page's frame number, and counting how many pages of a range are
*reclaimed*: not present and not swapped (released, e.g. ``MADV_DONTNEED``), or mapped to the
kernel zero page (KSM with ``use_zero_pages`` merged them, or they were only ever read).

A pagemap entry is one little-endian u64 per virtual page
(Documentation/admin-guide/mm/pagemap.rst):

* bits 0-54  PFN when present (swap type/offset when swapped). Since Linux 4.2 the PFN reads
  as 0 without ``CAP_SYS_ADMIN`` (4.0/4.1 refused the open with EPERM instead).
* bit 55 soft-dirty (3.11+), 56 exclusively mapped (4.2+), 57 uffd-wp (5.13+),
  58 guard region (6.15+), 61 file page or shared anon (3.5+), 62 swapped, 63 present.

Limitation: only the 4 KiB zero page is recognised. A read fault in a THP-enabled region may
map the *huge* zero page instead (``transparent_hugepage/use_zero_page``); those pages count
as present, not reclaimed (an under-count, never an over-count).

Counting is done on byte lanes (``bytes.translate`` + big-int AND), not a Python loop per
entry, so 262,144 entries (1 GiB of 4 KiB pages) take a few milliseconds.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import sys
from functools import lru_cache
from dataclasses import dataclass
from typing import Iterable

from heapballoon.errors import KernelError
from heapballoon.linux.procfs import PAGE_SIZE, Pid, ProcFS

ENTRY_BYTES = 8

PFN_MASK = (1 << 55) - 1
SOFT_DIRTY = 1 << 55
EXCLUSIVE = 1 << 56
UFFD_WP = 1 << 57
FILE_OR_SHARED = 1 << 61
SWAPPED = 1 << 62
PRESENT = 1 << 63

# Per top byte (bits 56-63) of an entry: P present, S swapped (not present), N neither.
_CATEGORY = bytes((b"P" if b & 0x80 else b"S" if b & 0x40 else b"N")[0] for b in range(256))


def page_interior(addr: int, length: int) -> tuple[int, int]:
    """(first whole page address, number of whole pages) inside ``[addr, addr + length)``.

    Partial pages at either end are left out: they may hold live data next to the payload.
    """
    if addr < 0 or length < 0:
        raise ValueError("negative address or length")
    first = -(-addr // PAGE_SIZE) * PAGE_SIZE
    end = (addr + length) // PAGE_SIZE * PAGE_SIZE
    return first, max(0, (end - first) // PAGE_SIZE)


def read_entries(procfs: ProcFS, pid: Pid, start_addr: int, npages: int, *, file=None) -> array.array:
    """``npages`` pagemap entries from ``start_addr`` (page aligned), as ``array('Q')``.

    One ``pread`` per range, repeated only on a short read. ``file`` may be an already open
    pagemap (from :meth:`ProcFS.open_pagemap`) to save the open.
    """
    if start_addr % PAGE_SIZE:
        raise ValueError(f"start address {start_addr:#x} is not page aligned")
    entries = array.array("Q")
    if npages <= 0:
        return entries
    own = file is None
    f = procfs.open_pagemap(pid) if own else file
    want = npages * ENTRY_BYTES
    offset = start_addr // PAGE_SIZE * ENTRY_BYTES
    chunks = []
    got = 0
    try:
        while got < want:
            try:
                chunk = os.pread(f.fileno(), want - got, offset + got)
            except OSError as exc:
                raise KernelError(f"cannot read pagemap of PID {pid} at {start_addr:#x}: {exc.strerror}") from exc
            if not chunk:
                raise KernelError(
                    f"short read of pagemap of PID {pid}: {got // ENTRY_BYTES} of {npages} pages from {start_addr:#x}"
                )
            chunks.append(chunk)
            got += len(chunk)
    finally:
        if own:
            f.close()
    entries.frombytes(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    return entries


def is_present(entry: int) -> bool:
    return bool(entry & PRESENT)


def is_swapped(entry: int) -> bool:
    return bool(entry & SWAPPED) and not entry & PRESENT


def pfn(entry: int) -> int:
    """The page frame number of a present page (0 if absent or hidden from non-root)."""
    return entry & PFN_MASK if entry & PRESENT else 0


def zero_pfn(procfs: ProcFS | None = None) -> int | None:
    """The PFN of the kernel's (4 KiB) zero page, or None when PFNs are hidden (not root).

    Probe: map one anonymous private page, forbid THP on it (a read fault would otherwise
    map the *huge* zero page), read a byte (a read fault maps the zero page), look it up in
    ``/proc/self/pagemap``.
    """
    procfs = procfs or ProcFS()
    m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        try:
            m.madvise(mmap.MADV_NOHUGEPAGE)
        except (AttributeError, OSError):  # kernel without THP: nothing to forbid
            pass
        cell = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(cell)
        del cell  # release the buffer export so the mmap can be closed
        _ = m[0]  # read fault, no write: maps the shared zero page
        (entry,) = read_entries(procfs, "self", addr, 1)
    finally:
        m.close()
    if not entry & PRESENT:
        raise KernelError("zero page probe: a read-faulted anonymous page is not present in pagemap")
    frame = entry & PFN_MASK
    return frame or None


@dataclass(frozen=True)
class PageCount:
    """Page states of a range. ``reclaimed`` = released (not present, not swapped) + zero."""

    pages: int
    present: int
    swapped: int
    zero: int
    reclaimed: int

    @property
    def reclaimed_bytes(self) -> int:
        return self.reclaimed * PAGE_SIZE

    @property
    def released(self) -> int:
        return self.pages - self.present - self.swapped


# int.bit_count is Python 3.10+; the guest side runs on 3.9 too.
_bit_count = getattr(int, "bit_count", None) or (lambda n: bin(n).count("1"))


@lru_cache(maxsize=64)
def _match_table(mask: int, want: int) -> bytes:
    return bytes(1 if b & mask == want else 0 for b in range(256))


def _lane_match(raw: bytes, lane: int, mask: int, want: int) -> int:
    """Big int with byte i == 1 where ``raw[8 * i + lane] & mask == want``, else 0."""
    return int.from_bytes(raw[lane::ENTRY_BYTES].translate(_match_table(mask, want)), "little")


def count_pages(entries: array.array | bytes | Iterable[int], zero_pfn: int | None) -> PageCount:
    """Classify pagemap entries; ``zero_pfn`` None means PFNs are hidden (zero stays 0)."""
    if isinstance(entries, array.array) and entries.typecode == "Q":
        raw = entries.tobytes()
    elif isinstance(entries, (bytes, bytearray, memoryview)):
        raw = bytes(entries)
    else:
        raw = array.array("Q", entries).tobytes()
    if sys.byteorder != "little":  # pagemap is native-endian; the lanes below assume little
        a = array.array("Q", raw)
        a.byteswap()
        raw = a.tobytes()
    pages = len(raw) // ENTRY_BYTES
    top = raw[7::ENTRY_BYTES].translate(_CATEGORY)
    present = top.count(b"P")
    swapped = top.count(b"S")
    zero = 0
    if zero_pfn and pages:
        want = (zero_pfn & PFN_MASK).to_bytes(8, "little")
        acc = _lane_match(raw, 7, 0x80, 0x80)  # present
        acc &= _lane_match(raw, 6, 0x7F, want[6])  # PFN bits 48-54 (bit 55 is soft-dirty)
        for lane in range(6):
            if not acc:
                break
            acc &= _lane_match(raw, lane, 0xFF, want[lane])
        zero = _bit_count(acc)
    return PageCount(pages=pages, present=present, swapped=swapped, zero=zero,
                     reclaimed=pages - present - swapped + zero)


def add_counts(a: PageCount, b: PageCount) -> PageCount:
    return PageCount(a.pages + b.pages, a.present + b.present, a.swapped + b.swapped, a.zero + b.zero,
                     a.reclaimed + b.reclaimed)


NO_PAGES = PageCount(0, 0, 0, 0, 0)
# Entries per pread when counting: 512 KiB of pagemap, so a range of any size is read in bounded
# pieces (a rogue agent's 1 TiB chunk once meant a 2 GiB read and a MemoryError).
READ_PIECE_PAGES = 1 << 16


def count_range(procfs: ProcFS, pid: Pid, start_addr: int, npages: int, zero_pfn: int | None, *,
                file=None) -> PageCount:
    """:func:`count_pages` of ``npages`` entries from ``start_addr``, read in pieces of at most
    :data:`READ_PIECE_PAGES` (memory stays bounded whatever the range)."""
    total = NO_PAGES
    done = 0
    while done < npages:
        n = min(READ_PIECE_PAGES, npages - done)
        total = add_counts(total, count_pages(read_entries(procfs, pid, start_addr + done * PAGE_SIZE, n, file=file),
                                              zero_pfn))
        done += n
    return total


def frames_of_range(procfs: ProcFS, pid: Pid, start_addr: int, npages: int, *, file=None) -> list[int]:
    """:func:`frames` of ``npages`` entries from ``start_addr``, read in bounded pieces."""
    out: list[int] = []
    done = 0
    while done < npages:
        n = min(READ_PIECE_PAGES, npages - done)
        out.extend(frames(read_entries(procfs, pid, start_addr + done * PAGE_SIZE, n, file=file)))
        done += n
    return out


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted union of ``(start, end)`` ranges (overlapping or touching ones joined)."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def clip_ranges(ranges: list[tuple[int, int]], allowed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside ``allowed`` (both sorted, disjoint ``(start, end)`` lists)."""
    out = []
    i = j = 0
    while i < len(ranges) and j < len(allowed):
        start = max(ranges[i][0], allowed[j][0])
        end = min(ranges[i][1], allowed[j][1])
        if start < end:
            out.append((start, end))
        if ranges[i][1] < allowed[j][1]:
            i += 1
        else:
            j += 1
    return out


def heap_ranges(procfs: ProcFS, pid: Pid) -> list[tuple[int, int]]:
    """Where a balloon can be: the process's writable heap-like mappings, as sorted ``(start,
    end)``: private anonymous ones (most Java heaps) and shared memfd ones (ZGC maps its heap
    from ``/memfd:java_heap``; the agent frees those pages with MADV_REMOVE). Files, other
    shared memory and unmapped space are never balloon pages, whatever an agent claims."""
    out = []
    for m in procfs.maps(pid):
        if m.perms[:2] != "rw":
            continue
        private_anon = m.perms[3:4] == "p" and (m.path == "" or m.path.startswith("[anon:"))
        shared_memfd = m.perms[3:4] == "s" and m.path.startswith("/memfd:")
        if private_anon or shared_memfd:
            out.append((m.start, m.end))
    return merge_ranges(out)


@dataclass(frozen=True)
class Residency:
    """A process's memory as the kernel counts it: its peak resident set (``VmHWM``), its
    resident set now (``VmRSS``) and what of it is in swap (``VmSwap``)."""

    peak_bytes: int
    resident_bytes: int
    swap_bytes: int


def residency(procfs: ProcFS, pid: Pid) -> Residency:
    st = procfs.status(pid)

    def kib(key: str) -> int:
        try:
            return int(st.get(key, "0 kB").split()[0]) * 1024
        except (ValueError, IndexError) as err:
            raise KernelError(f"cannot parse {key} of PID {pid}") from err

    return Residency(kib("VmHWM"), kib("VmRSS"), kib("VmSwap"))


def frames(entries: Iterable[int]) -> list[int]:
    """PFN of each entry, 0 where the page is absent (or PFNs are hidden)."""
    return [e & PFN_MASK if e & PRESENT else 0 for e in entries]


def compact_ranges(pfns: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, deduplicated ``(start, count)`` runs of consecutive PFNs, skipping 0."""
    out: list[tuple[int, int]] = []
    start = prev = None
    for p in sorted(set(pfns)):
        if p == 0:
            continue
        if prev is not None and p == prev + 1:
            prev = p
            continue
        if start is not None:
            out.append((start, prev - start + 1))
        start = prev = p
    if start is not None:
        out.append((start, prev - start + 1))
    return out


class PagemapReader:
    """Pagemap of one process: ``count``/``frames`` of byte ranges, whole pages only.

    Keeps the pagemap open between calls; use as a context manager or call :meth:`close`.
    """

    def __init__(self, procfs: ProcFS, pid: Pid) -> None:
        self.procfs = procfs
        self.pid = pid
        self._file = None

    def _f(self):
        if self._file is None:
            self._file = self.procfs.open_pagemap(self.pid)
        return self._file

    def entries(self, addr: int, length: int) -> array.array:
        first, npages = page_interior(addr, length)
        return read_entries(self.procfs, self.pid, first, npages, file=self._f())

    def count(self, addr: int, length: int, zero_pfn: int | None) -> PageCount:
        return count_pages(self.entries(addr, length), zero_pfn)

    def frames(self, addr: int, length: int) -> list[int]:
        return frames(self.entries(addr, length))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "PagemapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
