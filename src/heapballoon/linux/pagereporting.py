"""The one adapter for the kernel's free page reporting threshold (``page_reporting_order``).

Owns reading and writing ``/sys/module/page_reporting/parameters/page_reporting_order``
(Linux 5.14+, ``CONFIG_PAGE_REPORTING``): the smallest buddy order the guest kernel reports to
the host as free (virtio-balloon ``free-page-reporting=on``). The kernel's default is the
pageblock order (9: 2 MiB blocks on x86-64), so 4 KiB heap pages freed one by one (what the
agent's ``madvise`` leaves behind in a fragmented heap) are never reported. The root is
overridable, so unit tests run on a fixture tree. Pure standard library: runs in the guest.
"""

from __future__ import annotations

import os

from heapballoon.errors import KernelError

PARAMS_ROOT = "/sys/module/page_reporting/parameters"
MAX_ORDER = 10  # MAX_ORDER - 1 on x86-64: orders above are not buddy orders


class PageReporting:
    """``page_reporting_order`` under ``root``."""

    def __init__(self, root: str = PARAMS_ROOT) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"PageReporting({self.root!r})"

    @property
    def path(self) -> str:
        return os.path.join(self.root, "page_reporting_order")

    def available(self) -> bool:
        """Whether this kernel has the parameter (built with CONFIG_PAGE_REPORTING, 5.14+)."""
        return os.path.exists(self.path)

    def order(self) -> int:
        """The current order; KernelError if the kernel has none or it cannot be read."""
        try:
            with open(self.path) as f:
                return int(f.read().strip())
        except OSError as exc:
            raise KernelError(f"cannot read {self.path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise KernelError(f"unexpected value in {self.path}: {exc}") from exc

    def set_order(self, order: int) -> int:
        """Set the order (0: report every free 4 KiB page); returns what the kernel holds after."""
        if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= MAX_ORDER:
            raise KernelError(f"invalid page_reporting_order {order!r}: 0..{MAX_ORDER}")
        try:
            with open(self.path, "w") as f:
                f.write(f"{order}\n")
        except OSError as exc:
            raise KernelError(f"cannot write {self.path}: {exc.strerror}") from exc
        return self.order()
