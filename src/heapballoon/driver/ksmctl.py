"""KSM control for process-mode reclaim: merge zeroed balloon pages into the kernel zero page.

Owns the node's /sys/kernel/mm/ksm knobs for as long as the daemon runs:

* on start it enables ``run`` and ``use_zero_pages`` (zero-filled pages are merged with the
  kernel's zero page instead of with each other: Linux 4.14+);
* while balloon pages wait to be merged it *boosts* the scan rate; when none wait, or no
  progress was made for ``stall_s``, it drops back to the original rate;
* on exit it restores the original settings. The originals are saved to a file first, so a
  daemon that crashed while boosting restores the true originals on its next start.

Merged pages stay merged when ``run`` goes back to 0; only a write by the JVM unmerges one.
"""

from __future__ import annotations

import json
import logging
import os
import time

from heapballoon.errors import KernelError
from heapballoon.linux import safefs
from heapballoon.linux.ksm import KSM

log = logging.getLogger("heapballoon.ksm")
BOOST_PAGES_TO_SCAN = 16384
BOOST_SLEEP_MS = 10
KNOBS = ("run", "pages_to_scan", "sleep_millisecs", "use_zero_pages")


class KsmController:
    def __init__(self, ksm: KSM, mode: str, saved_path: str, stall_s: float = 60.0,
                 clock=time.monotonic) -> None:
        self.ksm = ksm
        self.mode = mode
        self.saved_path = saved_path
        self.stall_s = stall_s
        self.clock = clock
        self.active = False
        self.boosted = False
        self.reason = ""
        self.original: dict[str, int] = {}
        self._best_waiting = None
        self._progress_at = clock()

    def setup(self) -> bool:
        """Take over KSM if the mode allows; False (with ``reason``) when KSM stays untouched."""
        if self.mode == "off":
            self.reason = "disabled (--ksm off)"
            return False
        if not self.ksm.available() or not self.ksm.writable():
            self.reason = "KSM is not available or /sys/kernel/mm/ksm is not writable (needs root)"
            if self.mode == "on":
                raise KernelError(f"--ksm on: {self.reason}")
            return False
        try:
            saved = json.loads(safefs.read_small(self.saved_path))  # no symlink followed, ≤ 1 MiB
            self.original = {k: int(v) for k, v in saved.items() if k in KNOBS}
            log.warning("restoring KSM settings saved by a previous daemon: %s", self.original)
        except (FileNotFoundError, ValueError, OSError, KernelError, AttributeError):
            self.original = self.ksm.snapshot(KNOBS)
            safefs.write_atomic(*os.path.split(self.saved_path), json.dumps(self.original).encode())
        self.ksm.write("use_zero_pages", 1)
        self.ksm.write("run", 1)
        self.active = True
        self.reason = "active"
        return True

    def tick(self, waiting_pages: int) -> None:
        """Boost while balloon pages wait and progress is being made; else scan at the base rate."""
        if not self.active:
            return
        now = self.clock()
        if self._best_waiting is None or waiting_pages < self._best_waiting:
            self._best_waiting = waiting_pages
            self._progress_at = now
        want = waiting_pages > 0 and now - self._progress_at < self.stall_s
        if want and not self.boosted:
            self.ksm.write("pages_to_scan", BOOST_PAGES_TO_SCAN)
            self.ksm.write("sleep_millisecs", BOOST_SLEEP_MS)
            self.boosted = True
            log.info("KSM boosted: %d balloon pages wait to be merged", waiting_pages)
        elif not want and self.boosted:
            self._unboost()
            log.info("KSM back to base rate (waiting=%d)", waiting_pages)
        if waiting_pages == 0:
            self._best_waiting = None

    def _unboost(self) -> None:
        self.ksm.write("pages_to_scan", self.original.get("pages_to_scan", 100))
        self.ksm.write("sleep_millisecs", self.original.get("sleep_millisecs", 20))
        self.boosted = False

    def close(self) -> None:
        if not self.active:
            return
        try:
            self.ksm.restore(self.original)
        except KernelError as err:
            log.error("could not restore KSM settings: %s", err)
            return
        try:
            os.unlink(self.saved_path)
        except FileNotFoundError:
            pass
        self.active = False
