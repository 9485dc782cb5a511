"""hostd's balloon accounting (host/pageset.py) against a hostile guest's ranges (issue 14, row 2):
the same answers as a plain set of pages, an interval cap that only ever forgets pages, and
edits whose cost does not grow with the number of intervals."""

from __future__ import annotations

import time

from hypothesis import given, settings, strategies as st

from heapballoon.host import pageset
from heapballoon.host.pageset import PageSet

OPS = st.lists(st.tuples(st.booleans(), st.integers(0, 400), st.integers(-2, 60)), max_size=150)


def _pages(s: PageSet) -> set[int]:
    out: set[int] = set()
    for first, n in s:
        out.update(range(first, first + n))
    return out


def _check(s: PageSet, cap: int | None) -> set[int]:
    got = _pages(s)
    iv = list(s)
    assert all(n > 0 for _, n in iv) and all(a + n < b for (a, n), (b, _) in zip(iv, iv[1:]))  # disjoint, merged
    assert s.pages == len(got) and len(s) == len(iv)
    if cap is not None:
        assert len(s) <= cap
    return got


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([None, 3, 12]))
def test_pageset_is_a_set_of_pages_and_the_cap_only_forgets(ops, cap):
    old = pageset.BLOCK
    pageset.BLOCK = 4  # many small blocks: every split, merge and cross-block edit is exercised
    try:
        s, model = PageSet(cap), set()
        for add, first, count in ops:
            before, rng = _pages(s), set(range(first, first + max(count, 0)))
            if add:
                new = s.add(first, count)
                assert new == len(rng - before) or (cap is not None and new == 0 and len(s) == cap)
                model |= rng
            else:
                assert s.remove(first, count) == len(rng & before)
                model -= rng
            got = _check(s, cap)
            assert got <= model  # never a page the guest did not report (or took back)
            if cap is None:
                assert got == model and s.forgotten_pages == 0
    finally:
        pageset.BLOCK = old


def test_a_split_at_the_cap_keeps_the_larger_piece():
    s = PageSet(2)
    s.add(0, 10)
    s.add(100, 1000)
    assert s.remove(103, 1) == 1  # would make three: [100,103) is forgotten, [104,1100) kept
    assert list(s) == [(0, 10), (104, 996)] and s.forgotten_pages == 3 and s.pages == 10 + 996
    assert s.add(50, 5) == 0 and s.forgotten_pages == 8  # a third interval: not recorded
    assert s.add(10, 5) == 5 and list(s)[0] == (0, 15)  # touching one: merged, recorded


def _front_split_s(n: int) -> float:
    """Seconds for 8,192 splits at the front of a set of about ``n`` intervals."""
    s = PageSet()
    s.add(0, 4 * (n + 8192))
    for k in range(8192, n + 8192):
        s.remove(4 * k + 1, 1)
    t0 = time.perf_counter()
    for k in range(8192):
        s.remove(4 * k + 1, 1)
    return time.perf_counter() - t0


def test_an_edit_costs_the_same_in_a_small_and_in_a_large_set():
    """Splits slicing one list of all intervals cost O(n) each (a guest's 65,536-range removes
    stalled hostd 14.5 s); in blocks they cost the same at 8 k and at 128 k intervals."""
    small = min(_front_split_s(8192) for _ in range(3))
    large = min(_front_split_s(131072) for _ in range(2))
    assert large < 4 * small + 0.05, (small, large)
