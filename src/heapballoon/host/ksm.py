"""The KSM path for VMs with private guest RAM (``--reclaim ksm``): measure and boost.

This module owns the two things hostd does for a VM whose RAM is not a memfd it can punch:
:func:`guest_rss_bytes` reads the resident size of the guest-RAM mapping from
QEMU's smaps (the largest mapping of about the RAM size), and :class:`KsmBoost`
temporarily raises KSM's scan rate (through linux.ksm) while zero balloon pages
wait to be merged, restoring every value it changed afterwards.
"""

from __future__ import annotations

import logging

from heapballoon.errors import KernelError, ReclaimError
from heapballoon.linux.ksm import KSM
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.host.ksm")
# QEMU may round a RAM mapping up to its alignment (up to one 2 MiB huge page) plus a guard page.
_SIZE_SLACK_BYTES = (2 << 20) + 4096


def guest_rss_bytes(qemu_pid: int, ram_bytes: int, procfs: ProcFS | None = None) -> dict[str, int]:
    """``{"rss_bytes", "ksm_bytes", "size_bytes"}`` of QEMU's guest-RAM mapping (smaps).

    ``rss_bytes`` counts pages merged by KSM as resident (each mapping still maps them);
    ``ksm_bytes`` is the smaps ``KSM`` figure when the kernel has it. With
    ``use_zero_pages=1`` merged zero pages map the zero page and leave Rss altogether."""
    try:
        text = (procfs or ProcFS()).read_text(f"{qemu_pid}/smaps")
    except KernelError as err:
        raise ReclaimError(f"cannot read the smaps of QEMU {qemu_pid}: {err}") from err
    best: dict[str, int] | None = None
    cur: dict[str, int] | None = None
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            size = end - start
            cur = ({"size_bytes": size, "rss_bytes": 0, "ksm_bytes": 0}
                   if ram_bytes <= size <= ram_bytes + _SIZE_SLACK_BYTES else None)
            if cur is not None and (best is None or size > best["size_bytes"]):
                best = cur
        elif cur is not None and head in ("Rss:", "KSM:"):
            cur["rss_bytes" if head == "Rss:" else "ksm_bytes"] = int(line.split()[1]) * 1024
    if best is None:
        raise ReclaimError(f"QEMU {qemu_pid} has no mapping of about {ram_bytes} bytes in its smaps")
    return best


class KsmBoost:
    """Context manager: KSM on and scanning fast; previous settings restored on exit. Goes
    through the one KSM adapter (heapballoon.linux.ksm).

    Only root can write the KSM knobs; without permission the boost logs and does nothing
    (KSM still merges, just at the configured rate)."""

    def __init__(self, pages_to_scan: int = 4096, sleep_millisecs: int = 10, ksm_dir: str | None = None) -> None:
        # use_zero_pages: zeroed balloon pages map the kernel zero page and leave Rss (4.14+)
        self.wanted = {"run": 1, "pages_to_scan": pages_to_scan, "sleep_millisecs": sleep_millisecs,
                       "use_zero_pages": 1}
        self.ksm = KSM(ksm_dir) if ksm_dir else KSM()
        self.saved: dict[str, int] = {}

    def __enter__(self) -> KsmBoost:
        for name, value in self.wanted.items():
            try:
                old = self.ksm.read(name)
                if old != value:
                    self.ksm.write(name, value)
                    self.saved[name] = old
            except KernelError as err:
                log.warning("KSM boost: cannot set %s=%s: %s", name, value, err)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ksm.restore(self.saved)  # "run" last
        except KernelError as err:
            log.warning("KSM boost: cannot restore %s: %s", self.saved, err)
        self.saved.clear()
