"""A set of page numbers kept as sorted, disjoint half-open intervals.

This module owns hostd's *accounting* of a VM's balloon: which RAM-file pages the guest has
reported (``add``) and not yet taken back (``remove``). Operations work on whole intervals, so
a report of millions of contiguous pages is one entry.
"""

from __future__ import annotations

import bisect
from typing import Iterator


class PageSet:
    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.pages = 0

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(first_page, count) per interval, ascending."""
        return ((s, e - s) for s, e in zip(self._starts, self._ends))

    def add(self, first: int, count: int) -> int:
        """Add [first, first+count); returns how many pages were new."""
        if count <= 0:
            return 0
        s, e = first, first + count
        i = bisect.bisect_left(self._ends, s)  # first interval ending at/after s (may touch)
        j = bisect.bisect_right(self._starts, e)  # intervals starting at/before e
        covered = sum(min(e, self._ends[k]) - max(s, self._starts[k]) for k in range(i, j)
                      if min(e, self._ends[k]) > max(s, self._starts[k]))
        if i < j:
            s = min(s, self._starts[i])
            e = max(e, self._ends[j - 1])
        old = sum(self._ends[k] - self._starts[k] for k in range(i, j))
        self._starts[i:j] = [s]
        self._ends[i:j] = [e]
        self.pages += (e - s) - old
        return count - covered

    def remove(self, first: int, count: int) -> int:
        """Remove [first, first+count); returns how many pages were present."""
        if count <= 0:
            return 0
        s, e = first, first + count
        i = bisect.bisect_right(self._ends, s)  # first interval ending after s
        j = bisect.bisect_left(self._starts, e)  # intervals starting before e
        if i >= j:
            return 0
        new_s, new_e = [], []
        removed = 0
        for k in range(i, j):
            a, b = self._starts[k], self._ends[k]
            removed += min(b, e) - max(a, s)
            if a < s:
                new_s.append(a)
                new_e.append(s)
            if b > e:
                new_s.append(e)
                new_e.append(b)
        self._starts[i:j] = new_s
        self._ends[i:j] = new_e
        self.pages -= removed
        return removed

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self.pages = 0
