"""The KSM path for VMs with private guest RAM (``--reclaim ksm``): measure and boost.

This module owns the two things hostd does for a VM whose RAM is not a memfd it can punch:
:func:`guest_rss_bytes` reads the resident size of the guest-RAM mapping from
``/proc/PID/smaps`` (the largest mapping of about the RAM size), and :class:`KsmBoost`
temporarily raises KSM's scan rate under ``/sys/kernel/mm/ksm`` while zero balloon pages
wait to be merged, restoring every value it changed afterwards.
"""

from __future__ import annotations

import logging
import os

from heapballoon.errors import ReclaimError

log = logging.getLogger("heapballoon.host.ksm")
KSM_DIR = "/sys/kernel/mm/ksm"
# QEMU may round a RAM mapping up to its alignment (up to one 2 MiB huge page) plus a guard page.
_SIZE_SLACK_BYTES = (2 << 20) + 4096


def guest_rss_bytes(qemu_pid: int, ram_bytes: int) -> dict[str, int]:
    """``{"rss_bytes", "ksm_bytes", "size_bytes"}`` of QEMU's guest-RAM mapping (smaps).

    ``rss_bytes`` counts pages merged by KSM as resident (each mapping still maps them);
    ``ksm_bytes`` is the smaps ``KSM`` figure when the kernel has it. With
    ``use_zero_pages=1`` merged zero pages map the zero page and leave Rss altogether."""
    path = f"/proc/{qemu_pid}/smaps"
    best: dict[str, int] | None = None
    cur: dict[str, int] | None = None
    try:
        with open(path) as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    start, end = (int(x, 16) for x in head.split("-"))
                    size = end - start
                    cur = ({"size_bytes": size, "rss_bytes": 0, "ksm_bytes": 0}
                           if ram_bytes <= size <= ram_bytes + _SIZE_SLACK_BYTES else None)
                    if cur is not None and (best is None or size > best["size_bytes"]):
                        best = cur
                elif cur is not None and head in ("Rss:", "KSM:"):
                    key = "rss_bytes" if head == "Rss:" else "ksm_bytes"
                    cur[key] = int(line.split()[1]) * 1024
    except OSError as err:
        raise ReclaimError(f"cannot read {path}: {err.strerror}") from err
    if best is None:
        raise ReclaimError(f"QEMU {qemu_pid} has no mapping of about {ram_bytes} bytes in {path}")
    return best


class KsmBoost:
    """Context manager: KSM on and scanning fast; previous settings restored on exit.

    Only root can write ``/sys/kernel/mm/ksm``; without permission the boost logs and does
    nothing (KSM still merges, just at the configured rate)."""

    def __init__(self, pages_to_scan: int = 4096, sleep_millisecs: int = 10,
                 ksm_dir: str = KSM_DIR) -> None:
        # use_zero_pages: zeroed balloon pages map the kernel zero page and leave Rss (4.14+)
        self.wanted = {"run": "1", "pages_to_scan": str(pages_to_scan),
                       "sleep_millisecs": str(sleep_millisecs), "use_zero_pages": "1"}
        self.ksm_dir = ksm_dir
        self.saved: dict[str, str] = {}

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.ksm_dir, name), "w") as f:
            f.write(value)

    def __enter__(self) -> KsmBoost:
        for name, value in self.wanted.items():
            path = os.path.join(self.ksm_dir, name)
            try:
                with open(path) as f:
                    old = f.read().strip()
                if old != value:
                    self._write(name, value)
                    self.saved[name] = old
            except OSError as err:
                log.warning("KSM boost: cannot set %s=%s: %s", path, value, err.strerror)
        return self

    def __exit__(self, *exc) -> None:
        # restore in reverse order so "run" goes back last-set-first-restored
        for name in reversed(list(self.saved)):
            try:
                self._write(name, self.saved[name])
            except OSError as err:
                log.warning("KSM boost: cannot restore %s=%s: %s", name, self.saved[name], err.strerror)
        self.saved.clear()
