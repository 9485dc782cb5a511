"""hostd's own pause that it could not end: the ``cont`` it owes a VM, retried until the VM runs.

This module owns what happens when hostd paused a VM (QMP ``stop``, or ``virDomainSuspend``)
and its ``cont`` failed (a QMP timeout, a dropped socket, libvirt busy): the VM would stay
paused, and the next reclaim would take hostd's own pause for someone else's. A
:class:`ContDebt` remembers the debt, logs it, and a daemon thread retries on a fresh monitor
connection with exponential backoff (``BACKOFF_FIRST_S`` doubling to ``BACKOFF_MAX_S``) until
the VM runs; the next reclaim on the VM pays it first (:meth:`ContDebt.pay`), then pauses as
usual. ``owed`` is in ``status --vms`` (``cont_owed``).

Paying the debt: status ``paused`` → ``cont``; ``running`` → paid already (someone resumed it);
any other state (shut down, crashed, migrating, an I/O-error stop) → the debt is dropped (that
pause is no longer hostd's to end), logged. QMP cannot tell whose pause a ``paused`` VM is
in: if someone else paused it again after hostd's ``cont`` failed, hostd's retry resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from heapballoon.errors import HeapballoonError

log = logging.getLogger("heapballoon.hostd")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0


class ContDebt:
    """The ``cont`` hostd owes one VM. ``connect()``: a fresh blocking monitor as a context
    manager (``vm.monitor(t)``); ``alive()``: whether the VM's QEMU still runs."""

    def __init__(self, name: str, connect: Callable, alive: Callable[[], bool] = lambda: True,
                 backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.name = name
        self.connect = connect
        self.alive = alive
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.owed = False
        self.reason = ""
        self.since = 0.0     # time.monotonic() of the failed cont
        self.attempts = 0    # retries since
        self._lock = threading.Lock()   # one payer at a time (retry thread, reclaim worker)
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def owe(self, reason: str) -> None:
        """hostd's ``cont`` failed: remember it and start retrying."""
        with self._lock:
            if not self.owed:
                self.owed, self.reason, self.since, self.attempts = True, reason, time.monotonic(), 0
                log.warning("VM %s: hostd paused it and its cont failed (%s); retrying until it runs",
                            self.name, reason)
            if not self._closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._retry, name=f"cont-{self.name}", daemon=True)
                self._thread.start()

    def pay(self, qmp) -> None:
        """Settle the debt on ``qmp`` (a connected monitor) if there is one; HeapballoonError
        (ReclaimError) if the VM still does not run."""
        with self._lock:
            if not self.owed:
                return
            self.attempts += 1
            status = str((qmp.execute("query-status") or {}).get("status", "?"))
            if status == "paused":
                qmp.execute("cont")
                self._settled(f"cont succeeded on attempt {self.attempts}")
            elif status == "running":
                self._settled("it runs (resumed by someone)")
            else:
                self._settled(f"it is in state {status!r}, no longer hostd's pause to end")

    def _settled(self, how: str) -> None:
        log.info("VM %s: hostd's owed cont settled after %.1f s: %s", self.name,
                 time.monotonic() - self.since, how)
        self.owed, self.reason = False, ""

    def _retry(self) -> None:
        delay, tries = self.backoff_first_s, 0
        while self.owed and not self._closed:
            self._wake.wait(delay)
            if self._closed or not self.owed:
                return
            if not self.alive():
                log.info("VM %s: its QEMU exited; hostd no longer owes it a cont", self.name)
                self.owed = False
                return
            tries += 1
            try:
                with self.connect() as qmp:
                    self.pay(qmp)
            except (HeapballoonError, OSError) as err:
                if tries & (tries - 1) == 0:  # tries 1, 2, 4, 8...: logged, not a flood
                    log.warning("VM %s: owed cont, retry %d failed: %s (next in %.1f s)", self.name,
                                tries, err, min(2 * delay, self.backoff_max_s))
            delay = min(2 * delay, self.backoff_max_s)

    def close(self) -> None:
        """Stop retrying (the VM is dropped)."""
        self._closed = True
        self._wake.set()
