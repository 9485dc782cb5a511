"""The KSM path for VMs with private guest RAM (``--reclaim ksm``): measuring it.

This module owns what hostd measures of a VM whose RAM is not a memfd it can punch:
:func:`guest_rss_bytes` reads the resident size of the guest-RAM mapping from QEMU's smaps
(the largest mapping of about the RAM size). Raising KSM's scan rate while zero balloon pages
wait is the one KSM controller's job (driver.ksmctl), which hostd drives as the driver does.
"""

from __future__ import annotations

import logging

from heapballoon.errors import KernelError, ReclaimError
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
