"""Command line: `heapballoon daemon|run|attach|status|target|vm|image|hostd` (filled in below)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("heapballoon: not yet implemented", file=sys.stderr)
    return 1
