"""Pagemap decoding and counting on entries built with struct (no real pagemap needed)."""

from __future__ import annotations

import array
import os
import random
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heapballoon.errors import KernelError
from heapballoon.linux import pagemap as pm
from heapballoon.linux.pagemap import (PAGE_SIZE, PageCount, PagemapReader, compact_ranges, count_pages, frames,
                                       is_present, is_swapped, page_interior, pfn, read_entries)
from heapballoon.linux.procfs import ProcFS

ZP = 0x3B34  # a zero-page PFN as on the test machine
PRESENT, SWAPPED, SOFT_DIRTY, EXCL, FILE = 1 << 63, 1 << 62, 1 << 55, 1 << 56, 1 << 61


def present(frame: int, flags: int = 0) -> int:
    return PRESENT | flags | frame


def swapped(swap_type: int = 1, offset: int = 77) -> int:
    return SWAPPED | (offset << 5) | swap_type


def naive_count(entries, zero_pfn):
    pages = len(entries)
    p = sum(1 for e in entries if e >> 63)
    s = sum(1 for e in entries if not e >> 63 and e >> 62 & 1)
    z = sum(1 for e in entries if e >> 63 and zero_pfn and e & ((1 << 55) - 1) == zero_pfn)
    return PageCount(pages, p, s, z, pages - p - s + z)


def test_page_size_is_sysconf():
    assert PAGE_SIZE == os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("addr,length,expected", [
    (0, 0, (0, 0)),
    (0, PAGE_SIZE, (0, 1)),
    (0, PAGE_SIZE - 1, (0, 0)),
    (16, 8 * PAGE_SIZE - 16, (PAGE_SIZE, 7)),  # array payload after a 16-byte header
    (16, 8 * PAGE_SIZE, (PAGE_SIZE, 7)),
    (PAGE_SIZE, 3 * PAGE_SIZE, (PAGE_SIZE, 3)),
    (PAGE_SIZE + 1, PAGE_SIZE, (2 * PAGE_SIZE, 0)),  # straddles, contains no whole page
    (0xC0000010, (8 << 20) - 16, (0xC0000000 + PAGE_SIZE, (8 << 20) // PAGE_SIZE - 1)),
])
def test_page_interior(addr, length, expected):
    assert page_interior(addr, length) == expected


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 24))
def test_page_interior_stays_inside(addr, length):
    first, n = page_interior(addr, length)
    assert first % PAGE_SIZE == 0 and n >= 0
    if n:
        assert first >= addr and first + n * PAGE_SIZE <= addr + length
        # maximal: one more page on either side would leave the range
        assert first - PAGE_SIZE < addr or first + (n + 1) * PAGE_SIZE > addr + length


def test_decoders():
    assert is_present(present(5)) and pfn(present(5)) == 5
    assert pfn(present(5, SOFT_DIRTY | EXCL | FILE)) == 5
    assert pfn(present((1 << 55) - 1)) == (1 << 55) - 1
    assert not is_present(swapped()) and is_swapped(swapped()) and pfn(swapped()) == 0
    assert not is_present(0) and not is_swapped(0) and pfn(0) == 0
    assert pfn(PRESENT) == 0  # present but PFN hidden (not root)


def test_count_pages_classifies_each_state():
    entries = array.array("Q", [
        0,                                  # never touched / released: reclaimed
        SOFT_DIRTY,                         # released, soft-dirty still set: reclaimed
        swapped(),                          # swapped: not reclaimed
        present(ZP),                        # zero page (read fault): reclaimed
        present(ZP, SOFT_DIRTY),            # zero page placed by KSM (pte dirty): reclaimed
        present(ZP + 1, EXCL),              # a real page
        present(ZP | 1 << 48),              # differs from ZP only in PFN bit 48: real page
        present(ZP + (1 << 40), EXCL),      # differs in a high byte
        ZP,                                 # not present, stale bits equal ZP: reclaimed, not zero
    ])
    c = count_pages(entries, ZP)
    assert c == PageCount(pages=9, present=5, swapped=1, zero=2, reclaimed=5)
    assert c.released == 3
    assert c.reclaimed_bytes == 5 * PAGE_SIZE


def test_count_pages_without_zero_pfn_counts_no_zero_pages():
    entries = [present(ZP), present(ZP), 0]
    assert count_pages(entries, None) == PageCount(3, 2, 0, 0, 1)
    assert count_pages(entries, 0) == PageCount(3, 2, 0, 0, 1)


def test_count_pages_accepts_bytes_and_empty():
    raw = struct.pack("<3Q", present(ZP), 0, present(9))
    assert count_pages(raw, ZP) == PageCount(3, 2, 0, 1, 2)
    assert count_pages(array.array("Q"), ZP) == PageCount(0, 0, 0, 0, 0)


entry_strategy = st.one_of(
    st.just(0),
    st.builds(swapped, st.integers(0, 31), st.integers(0, 1 << 40)),
    st.builds(present, st.sampled_from([ZP, ZP + 1, ZP ^ (1 << 50), ZP | (1 << 54), 1, (1 << 55) - 1]),
              st.sampled_from([0, SOFT_DIRTY, EXCL, FILE, SOFT_DIRTY | EXCL])),
    st.integers(0, (1 << 64) - 1),
)


@settings(max_examples=300)
@given(st.lists(entry_strategy, max_size=64), st.sampled_from([ZP, None, 1, (1 << 55) - 1]))
def test_count_pages_matches_naive_reference(entries, zero_pfn):
    assert count_pages(array.array("Q", entries), zero_pfn) == naive_count(entries, zero_pfn)


def test_count_pages_262144_entries_is_fast():
    rng = random.Random(7)
    choices = [present(ZP), present(ZP, SOFT_DIRTY), 0, swapped(), present(0x123456789, EXCL)]
    entries = array.array("Q", (rng.choice(choices) for _ in range(262144)))
    expected = naive_count(entries, ZP)
    best = min(_timed(count_pages, entries, ZP) for _ in range(3))
    assert count_pages(entries, ZP) == expected
    print(f"count_pages(262144 entries): {best * 1000:.1f} ms")
    assert best < 0.1


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def test_frames_zero_for_absent():
    assert frames([present(7), 0, swapped(), present(9, SOFT_DIRTY), PRESENT]) == [7, 0, 0, 9, 0]


@pytest.mark.parametrize("pfns,runs", [
    ([], []),
    ([0, 0], []),
    ([5], [(5, 1)]),
    ([3, 1, 2, 2, 0, 10, 11, 7], [(1, 3), (7, 1), (10, 2)]),
    (iter([100, 99, 98]), [(98, 3)]),
])
def test_compact_ranges(pfns, runs):
    assert compact_ranges(pfns) == runs


@given(st.lists(st.integers(0, 200)))
def test_compact_ranges_roundtrip(pfns):
    runs = compact_ranges(pfns)
    expanded = [s + i for s, n in runs for i in range(n)]
    assert expanded == sorted(set(pfns) - {0})
    assert all(a[0] + a[1] < b[0] for a, b in zip(runs, runs[1:]))  # maximal, disjoint


def _fake_pagemap(tmp_path, pid: int, first_page: int, entries) -> ProcFS:
    d = tmp_path / str(pid)
    d.mkdir()
    with open(d / "pagemap", "wb") as f:
        f.seek(first_page * 8)
        f.write(struct.pack(f"<{len(entries)}Q", *entries))
    return ProcFS(str(tmp_path))


def test_read_entries_reads_at_page_offset(tmp_path):
    entries = [present(ZP), 0, present(42), swapped()]
    procfs = _fake_pagemap(tmp_path, 31, 16, entries)
    got = read_entries(procfs, 31, 16 * PAGE_SIZE, 4)
    assert got.typecode == "Q" and list(got) == entries
    assert list(read_entries(procfs, 31, 18 * PAGE_SIZE, 2)) == entries[2:]
    assert len(read_entries(procfs, 31, 0, 0)) == 0


def test_read_entries_survives_short_reads(tmp_path, monkeypatch):
    entries = list(range(1, 101))
    procfs = _fake_pagemap(tmp_path, 32, 0, [present(e) for e in entries])
    real_pread = os.pread
    calls = []

    def short_pread(fd, n, off):
        calls.append(n)
        return real_pread(fd, min(n, 24), off)  # 3 entries at a time

    monkeypatch.setattr(pm.os, "pread", short_pread)
    assert frames(read_entries(procfs, 32, 0, 100)) == entries
    assert len(calls) == 34


def test_read_entries_eof_is_kernel_error(tmp_path):
    procfs = _fake_pagemap(tmp_path, 33, 0, [present(1), present(2)])
    with pytest.raises(KernelError, match="short read of pagemap of PID 33: 2 of 5 pages"):
        read_entries(procfs, 33, 0, 5)


def test_read_entries_rejects_unaligned(tmp_path):
    procfs = _fake_pagemap(tmp_path, 34, 0, [0])
    with pytest.raises(ValueError):
        read_entries(procfs, 34, 10, 1)


def test_pagemap_reader_counts_interior_pages(tmp_path):
    entries = [present(1), present(ZP), 0, present(ZP), swapped(), present(2)]
    procfs = _fake_pagemap(tmp_path, 35, 0, entries)
    with PagemapReader(procfs, 35) as reader:
        # payload starts 16 bytes into page 0 and ends 16 bytes into page 5: pages 1-4 count
        c = reader.count(16, 5 * PAGE_SIZE, ZP)
        assert c == PageCount(pages=4, present=2, swapped=1, zero=2, reclaimed=3)
        assert reader.frames(16, 5 * PAGE_SIZE) == [ZP, 0, ZP, 0]
        assert reader._file is not None  # kept open between calls
    assert reader._file is None
