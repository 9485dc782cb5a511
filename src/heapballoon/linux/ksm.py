"""The one adapter for KSM's sysfs knobs and counters (``/sys/kernel/mm/ksm``).

Owns: reading and writing the knobs (``run``, ``pages_to_scan``, ``sleep_millisecs``,
``use_zero_pages``), snapshot/restore so a temporary boost never leaks, and the counters the
driver reports (``full_scans``, the KSM-placed zero pages). ``root`` is overridable so tests
use a directory of plain files.

Kernel versions (Documentation/admin-guide/mm/ksm.rst):

* ``use_zero_pages``: Linux 4.11+. With it on, KSM maps all-zero pages to the kernel zero
  page instead of merging them with each other; heapballoon's KSM path needs it.
* ``ksm_zero_pages``: Linux 6.6+ (series "ksm: support tracking KSM-placed zero-pages").
  Drafts of that series (early 2023) called it ``zero_pages_sharing``; no release shipped that
  name, but it is accepted as a fallback for patched vendor kernels. Before 6.6 there is no
  such counter; :meth:`KSM.zero_pages` raises KernelError and callers count zero-page PFNs
  in pagemap instead.
* ``smart_scan`` (6.7+) and the ``advisor_*`` knobs (6.8+) are not touched.
"""

from __future__ import annotations

import os
from typing import Iterable

from heapballoon.errors import KernelError

DEFAULT_SNAPSHOT = ("run", "pages_to_scan", "sleep_millisecs", "use_zero_pages")
ZERO_PAGES_NAMES = ("ksm_zero_pages", "zero_pages_sharing")  # 6.6+, pre-merge drafts


class KSM:
    def __init__(self, root: str = "/sys/kernel/mm/ksm") -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"KSM({self.root!r})"

    def _path(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad KSM knob name {name!r}")
        return os.path.join(self.root, name)

    def available(self) -> bool:
        """KSM is built in (CONFIG_KSM) and its sysfs directory is visible."""
        return os.path.isfile(self._path("run"))

    def writable(self) -> bool:
        """We may change the knobs (root, and sysfs not mounted read-only as in containers)."""
        return self.available() and os.access(self._path("run"), os.W_OK)

    def has(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def read(self, name: str) -> int:
        path = self._path(name)
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError as err:
            raise KernelError(f"KSM knob {name} not found in {self.root} (KSM not built in, or kernel too old)") from err
        except OSError as exc:
            raise KernelError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return int(text)
        except ValueError as err:
            raise KernelError(f"{path} holds {text!r}, not an integer") from err

    def write(self, name: str, value: int) -> None:
        path = self._path(name)
        try:
            # sysfs wants one write(2) of the whole value; no O_CREAT, no truncation games.
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError as err:
            raise KernelError(f"KSM knob {name} not found in {self.root} (KSM not built in, or kernel too old)") from err
        except OSError as exc:
            raise KernelError(f"cannot write {path}: {exc.strerror}") from exc
        try:
            os.write(fd, f"{int(value)}\n".encode())
        except OSError as exc:
            raise KernelError(f"cannot write {value} to {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def snapshot(self, names: Iterable[str] = DEFAULT_SNAPSHOT) -> dict[str, int]:
        """Current values of ``names`` (missing knobs are left out)."""
        return {name: self.read(name) for name in names if self.has(name)}

    def restore(self, snapshot: dict[str, int]) -> None:
        """Write a :meth:`snapshot` back; ``run`` last, so ksmd restarts with the old tuning."""
        errors = []
        for name in sorted(snapshot, key=lambda n: n == "run"):
            try:
                if self.read(name) != snapshot[name]:
                    self.write(name, snapshot[name])
            except KernelError as exc:
                errors.append(str(exc))
        if errors:
            raise KernelError("; ".join(errors))

    def zero_pages(self) -> int:
        """Pages KSM mapped to the kernel zero page (still mapped); Linux 6.6+."""
        for name in ZERO_PAGES_NAMES:
            if self.has(name):
                return self.read(name)
        raise KernelError(f"no ksm_zero_pages counter in {self.root} (needs Linux 6.6)")

    def full_scans(self) -> int:
        return self.read("full_scans")
