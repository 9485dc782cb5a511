"""Sizes at the edge: parse what users type (``512M``, ``1G``, ``0``) and format bytes back.

Everything inside heapballoon is bytes; this module is the one place that converts.
Binary units throughout (``1K`` = 1024 bytes), as Java's ``-Xmx`` does.
"""

from __future__ import annotations

import re

from heapballoon.errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
MAX_SIZE_BYTES = 1 << 50
# The page heapballoon counts in, host and guest (x86-64: 4 KiB); defined here only.
PAGE_BYTES = 4096


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` (``"512M"`` → 536870912); UsageError if bad."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid size {text!r}: expected a number with an optional unit K, M, G or T (e.g. 512M)")
    number, unit = m.group(1), m.group(2).upper()
    value = float(number) * _UNITS[unit] if "." in number else int(number) * _UNITS[unit]
    size_bytes = int(value)
    if size_bytes > MAX_SIZE_BYTES:
        raise UsageError(f"invalid size {text!r}: larger than {format_size(MAX_SIZE_BYTES)}")
    return size_bytes


def format_size(size_bytes: int | float) -> str:
    """``536870912`` → ``"512.0 MiB"``."""
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
