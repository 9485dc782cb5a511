"""A set of page numbers kept as sorted, disjoint half-open intervals, with a cap on their number.

This module owns hostd's *accounting* of a VM's balloon: which RAM-file pages the guest has
reported (``add``) and not yet taken back (``remove``). Operations work on whole intervals, so
a report of millions of contiguous pages is one entry.

A guest chooses the ranges, so every operation is cheap however the set was fragmented: the
intervals live in blocks of at most ``2 * BLOCK`` (two ``array('q')`` per block: starts and
ends, 16 bytes an interval), found by bisection over the blocks' last ends. One ``add`` or
``remove`` costs O(log n + BLOCK + intervals it swallows), never O(n): no list of all the
intervals is ever sliced or rebuilt.

``max_intervals`` caps the number of intervals (a guest's ``remove`` inside an interval splits
it in two). What happens at the cap only ever *forgets* pages, never claims one: a split that
would go over it keeps the larger piece and forgets the smaller, an ``add`` that would go over
it is not recorded. Forgetting is bookkeeping only — a forgotten page stays as it is in guest
RAM (punched or not); the VM's ``balloon_bytes``/``reclaimed_bytes`` then under-count, never
over-count. ``forgotten_pages`` counts them.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Iterator

BLOCK = 512  # intervals per block, nominal (blocks hold 1 .. 2*BLOCK)


class PageSet:
    def __init__(self, max_intervals: int | None = None) -> None:
        self.max_intervals = max_intervals
        self.forgotten_pages = 0
        self.clear()

    def clear(self) -> None:
        self._s: list[array] = []  # per block: interval starts, ascending
        self._e: list[array] = []  # per block: interval ends (exclusive), ascending
        self._last: list[int] = []  # per block: its last end (bisect finds the block)
        self._n = 0
        self.pages = 0

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(first_page, count) per interval, ascending. Safe to run in another thread while
        the owner edits (status measures in a worker): it never fails, and yields only
        non-empty intervals, though an edit made meanwhile may be seen in part."""
        for starts, ends in zip(list(self._s), list(self._e)):
            for a, z in zip(starts, ends):
                if z > a:
                    yield a, z - a

    def nbytes(self) -> int:
        """Memory held by the intervals themselves (16 bytes each, plus block slack)."""
        return sum(a.buffer_info()[1] * a.itemsize for blocks in (self._s, self._e) for a in blocks)

    # ------------------------------------------------------------ the operations

    def add(self, first: int, count: int) -> int:
        """Add [first, first+count); returns how many pages were new (0 if not recorded at the cap)."""
        if count <= 0:
            return 0
        s, e = first, first + count
        b, i = self._locate(s, after=False)  # first interval ending at/after s (may touch)
        if b < len(self._s) and self._s[b][i] <= e:
            taken, hi = self._take(b, i, e, inclusive=True)
        else:
            taken, hi = [], b
        if not taken and self.max_intervals is not None and self._n + 1 > self.max_intervals:
            self.forgotten_pages += count
            return 0
        covered = sum(max(0, min(e, z) - max(s, a)) for a, z in taken)
        if taken:
            s, e = min(s, taken[0][0]), max(e, taken[-1][1])
        self.pages += (e - s) - sum(z - a for a, z in taken)
        self._n += 1 - len(taken)
        b = self._put(b, i, [(s, e)])
        self._fix(b, max(b, hi))
        return count - covered

    def remove(self, first: int, count: int) -> int:
        """Remove [first, first+count); returns how many pages were present. At the cap, a
        split keeps its larger piece and forgets the smaller (see the module docstring)."""
        if count <= 0 or not self._n:
            return 0
        s, e = first, first + count
        b, i = self._locate(s, after=True)  # first interval ending after s
        if b == len(self._s) or self._s[b][i] >= e:
            return 0
        taken, hi = self._take(b, i, e, inclusive=False)
        removed = sum(min(z, e) - max(a, s) for a, z in taken)
        keep = []
        if taken[0][0] < s:
            keep.append((taken[0][0], s))
        if taken[-1][1] > e:
            keep.append((e, taken[-1][1]))
        if self.max_intervals is not None and self._n - len(taken) + len(keep) > self.max_intervals:
            smaller = min(keep, key=lambda r: r[1] - r[0])  # only a split adds one: two pieces
            keep.remove(smaller)
            self.forgotten_pages += smaller[1] - smaller[0]
            self.pages -= smaller[1] - smaller[0]
        self.pages -= removed
        self._n += len(keep) - len(taken)
        b = self._put(b, i, keep)
        self._fix(b, max(b, hi))
        return removed

    # ------------------------------------------------------------ blocks

    def _locate(self, x: int, after: bool) -> tuple[int, int]:
        """(block, index) of the first interval whose end is >= x (> x if ``after``);
        (number of blocks, 0) if none."""
        find = bisect.bisect_right if after else bisect.bisect_left
        b = find(self._last, x)
        if b == len(self._last):
            return b, 0
        return b, find(self._e[b], x)

    def _take(self, b: int, i: int, e: int, inclusive: bool) -> tuple[list[tuple[int, int]], int]:
        """Cut out the intervals from (b, i) on that start before e (at/before e if
        ``inclusive``); returns them and the last block touched (blocks may be left empty)."""
        find = bisect.bisect_right if inclusive else bisect.bisect_left
        out: list[tuple[int, int]] = []
        while b < len(self._s):
            starts, ends = self._s[b], self._e[b]
            n = len(starts)
            j = find(starts, e, i)
            if j > i:
                out.extend(zip(starts[i:j], ends[i:j]))
                del starts[i:j]
                del ends[i:j]
            if j < n or b == len(self._s) - 1:
                return out, b
            b, i = b + 1, 0
        return out, b

    def _put(self, b: int, i: int, items: list[tuple[int, int]]) -> int:
        """Insert ``items`` (sorted) at (b, i); returns the block they went into."""
        if b == len(self._s):
            if not self._s:
                self._s.append(array("q"))
                self._e.append(array("q"))
                self._last.append(0)
            b = len(self._s) - 1
            i = len(self._s[b])
        if items:
            self._s[b][i:i] = array("q", [a for a, _ in items])
            self._e[b][i:i] = array("q", [z for _, z in items])
        return b

    def _fix(self, lo: int, hi: int) -> None:
        """Blocks lo..hi were edited: drop empty ones, split big ones, merge small ones with a
        neighbour, and refresh their last ends."""
        hi = min(hi, len(self._s) - 1)
        if lo > hi:
            return
        size = sum(len(self._s[k]) for k in range(lo, hi + 1))
        if lo == hi and 0 < size <= 2 * BLOCK and (size >= BLOCK // 4 or len(self._s) == 1):
            self._last[lo] = self._e[lo][-1]
            return
        if size < BLOCK // 2:  # small: take the neighbours in
            lo, hi = max(0, lo - 1), min(len(self._s) - 1, hi + 1)
        starts, ends = array("q"), array("q")
        for k in range(lo, hi + 1):
            starts.extend(self._s[k])
            ends.extend(self._e[k])
        n = len(starts)
        parts = -(-n // BLOCK)
        step = -(-n // parts) if parts else 1
        self._s[lo:hi + 1] = [starts[k:k + step] for k in range(0, n, step)]
        self._e[lo:hi + 1] = new_e = [ends[k:k + step] for k in range(0, n, step)]
        self._last[lo:hi + 1] = [blk[-1] for blk in new_e]
