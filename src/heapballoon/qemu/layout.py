"""Guest-physical → guest-RAM-file mapping of one QEMU VM (the x86 RAM split, read from QEMU).

This module owns *where a guest page lives in the memfd*: it parses QEMU's memory tree
(``info mtree -f``, or the plain tree as a fallback) into a list of :class:`RamRange` — a
guest-physical range backed by the RAM backend (``ram0``) at some offset — and answers
``offset_of(pfn)`` and ``ranges_to_offsets(ranges)``. Nothing here reads or writes guest RAM.

We never assume the x86 split (q35 puts 2 GiB below 4 GiB when RAM ≥ 2.75 GiB, pc 3.5 GiB,
firmware and PAM registers move things at runtime): QEMU's flattened view of the ``memory``
address space already has every overlapping non-RAM region (ROMs, VGA, PAM, SMRAM, MMIO)
cut out, so each ``ram0`` line in it is exactly a gpa range whose bytes are ram0's bytes.
The legacy window 0xa0000-0xfffff is always excluded on top of that: the guest can remap it
(PAM/SMRAM) at any time without us noticing, and no JVM heap page ever lives there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from heapballoon.errors import ReclaimError
from heapballoon.units import PAGE_BYTES

LEGACY_HOLE = (0xA0000, 0x100000)  # [start, end) never treated as RAM

# "  0000000000100000-000000007fffffff (prio 0, ram): ram0 @0000000000100000"
_FLAT_LINE = re.compile(
    r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+)\s+\(prio\s+-?\d+,\s*(?P<kind>[\w-]+)\):\s+"
    r"(?P<name>\S+)(?:\s+@(?P<off>[0-9a-fA-F]+))?")
# "    0000000100000000-00000001bfffffff (prio 0, ram): alias ram-above-4g @ram0 0000000080000000-000000013fffffff"
_ALIAS_LINE = re.compile(
    r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+)\s+\(prio\s+-?\d+,\s*(?P<kind>[\w-]+)\):\s+"
    r"alias\s+(?P<alias>\S+)\s+@(?P<target>\S+)\s+(?P<tstart>[0-9a-fA-F]+)-(?P<tend>[0-9a-fA-F]+)")


@dataclass(frozen=True)
class RamRange:
    """``size_bytes`` of guest-physical memory from ``gpa`` are ram0 bytes from ``offset``."""

    gpa: int
    size_bytes: int
    offset: int

    @property
    def gpa_end(self) -> int:
        return self.gpa + self.size_bytes


def _cut(ranges: list[RamRange], hole_start: int, hole_end: int) -> list[RamRange]:
    out = []
    for r in ranges:
        if r.gpa_end <= hole_start or r.gpa >= hole_end:
            out.append(r)
            continue
        if r.gpa < hole_start:
            out.append(RamRange(r.gpa, hole_start - r.gpa, r.offset))
        if r.gpa_end > hole_end:
            out.append(RamRange(hole_end, r.gpa_end - hole_end, r.offset + hole_end - r.gpa))
    return out


def _page_align(ranges: list[RamRange]) -> list[RamRange]:
    """Shrink every range to whole pages whose gpa and offset are both page aligned."""
    out = []
    for r in ranges:
        if (r.gpa - r.offset) % PAGE_BYTES:
            continue  # gpa and offset disagree inside a page: no page maps whole
        start = -(-r.gpa // PAGE_BYTES) * PAGE_BYTES
        end = r.gpa_end // PAGE_BYTES * PAGE_BYTES
        if end > start:
            out.append(RamRange(start, end - start, r.offset + start - r.gpa))
    return out


def parse_mtree_flat(text: str, backend: str = "ram0") -> list[RamRange]:
    """RAM ranges of the ``memory`` address space from ``info mtree -f`` output.

    Returns ``[]`` if the text has no flat view of AS "memory" (the caller falls back)."""
    ranges: list[RamRange] = []
    in_memory_view = False
    in_entries = False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if in_memory_view and in_entries:
                break  # finished the view we wanted
            in_memory_view = in_entries = False
            continue
        stripped = line.strip()
        if stripped.startswith('AS "memory"'):
            in_memory_view = True
            continue
        if stripped.startswith("Root memory region"):
            in_entries = in_memory_view
            continue
        if not in_entries:
            continue
        m = _FLAT_LINE.match(line)
        if not m or m.group("kind") != "ram" or m.group("name") != backend:
            continue
        start, end = int(m.group("start"), 16), int(m.group("end"), 16)
        off = int(m.group("off"), 16) if m.group("off") else 0
        ranges.append(RamRange(start, end - start + 1, off))
    return ranges


def parse_mtree_tree(text: str, backend: str = "ram0") -> list[RamRange]:
    """RAM ranges from the plain ``info mtree``: the ``ram-below-4g``/``ram-above-4g`` aliases
    of the ``system`` tree. Overlapping regions are not resolved here (the legacy window is cut
    by :class:`GuestLayout`); prefer :func:`parse_mtree_flat`."""
    ranges: dict[tuple[int, int, int], RamRange] = {}
    for line in text.splitlines():
        m = _ALIAS_LINE.match(line)
        if not m or m.group("target") != backend or not m.group("alias").startswith("ram-"):
            continue
        start, end = int(m.group("start"), 16), int(m.group("end"), 16)
        tstart = int(m.group("tstart"), 16)
        r = RamRange(start, end - start + 1, tstart)
        ranges[(r.gpa, r.size_bytes, r.offset)] = r  # the same alias appears under several ASes
    return sorted(ranges.values(), key=lambda r: r.gpa)


class GuestLayout:
    """Which guest page frames are RAM and where each one is in the RAM file."""

    def __init__(self, ranges: Iterable[RamRange], ram_bytes: int | None = None) -> None:
        rs = _page_align(_cut(sorted(ranges, key=lambda r: r.gpa), *LEGACY_HOLE))
        for a, b in zip(rs, rs[1:]):
            if a.gpa_end > b.gpa:
                raise ReclaimError(f"overlapping guest RAM ranges in the memory map: {a} and {b}")
        if ram_bytes is not None:
            for r in rs:
                if r.offset < 0 or r.offset + r.size_bytes > ram_bytes:
                    raise ReclaimError(
                        f"guest RAM range {r} lies outside the {ram_bytes}-byte RAM backend")
        if not rs:
            raise ReclaimError("no guest RAM found in the memory map")
        self.ranges: list[RamRange] = rs
        self.ram_bytes = ram_bytes
        # page-frame view, for arithmetic on page numbers
        self._pfn = [(r.gpa // PAGE_BYTES, r.gpa_end // PAGE_BYTES, r.offset // PAGE_BYTES) for r in rs]

    @classmethod
    def from_mtree(cls, text: str, backend: str = "ram0", ram_bytes: int | None = None) -> GuestLayout:
        ranges = parse_mtree_flat(text, backend) or parse_mtree_tree(text, backend)
        if not ranges:
            raise ReclaimError(f"no {backend!r} RAM ranges in the QEMU memory tree: {text[:300]!r}")
        return cls(ranges, ram_bytes)

    @classmethod
    async def from_qmp(cls, qmp, backend: str = "ram0", ram_bytes: int | None = None) -> GuestLayout:
        """Ask QEMU (a connected ``qemu.qmp.QMPClient``) for its flattened memory tree."""
        cmd = {"command-line": "info mtree -f"}
        try:
            text = await qmp.execute("human-monitor-command", cmd)
        except Exception as err:  # noqa: BLE001 - QMP raises several unrelated types
            raise ReclaimError(f"QMP human-monitor-command {cmd} failed: {err}") from err
        return cls.from_mtree(text, backend, ram_bytes)

    @property
    def ram_pages(self) -> int:
        return sum(r.size_bytes for r in self.ranges) // PAGE_BYTES

    def offset_of(self, pfn: int) -> int | None:
        """Byte offset of guest page ``pfn`` in the RAM file, or None if it is not guest RAM."""
        for first, end, off in self._pfn:
            if first <= pfn < end:
                return (off + pfn - first) * PAGE_BYTES
        return None

    def ranges_to_offsets(self, ranges: Iterable[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
        """``[(first_pfn, count)]`` → (sorted, merged ``[(offset_bytes, length_bytes)]``, rejected_pages).

        Every reported page is either mapped once or counted in rejected_pages: pages outside
        guest RAM and duplicates (a page reported twice, in overlapping ranges) are rejected,
        so ``mapped pages + rejected_pages == sum(count)``. Works on intervals, never page by
        page, so a hostile list of huge ranges costs O(ranges · log ranges).
        """
        total = 0
        spans = []
        for first, count in ranges:
            if count <= 0:
                continue
            total += count
            spans.append((first, first + count))
        spans.sort()
        merged: list[list[int]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        pieces: list[tuple[int, int]] = []  # (offset_page, end_offset_page)
        for s, e in merged:
            for first, end, off in self._pfn:
                lo, hi = max(s, first), min(e, end)
                if lo < hi:
                    pieces.append((off + lo - first, off + hi - first))
        pieces.sort()
        out: list[list[int]] = []
        mapped = 0
        for s, e in pieces:
            if out and s <= out[-1][1]:
                # two gpa ranges aliasing the same RAM bytes: count each byte once
                if e > out[-1][1]:
                    mapped += e - out[-1][1]
                    out[-1][1] = e
            else:
                out.append([s, e])
                mapped += e - s
        offsets = [(s * PAGE_BYTES, (e - s) * PAGE_BYTES) for s, e in out]
        return offsets, total - mapped

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.gpa:#x}+{r.size_bytes:#x}@{r.offset:#x}" for r in self.ranges)
        return f"GuestLayout([{parts}])"
