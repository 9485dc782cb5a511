"""Bounded polling: wait for a condition with a deadline, never an open-ended sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(Exception):
    """The condition was not met in time; ``last`` is the predicate's last value."""

    def __init__(self, what: str, timeout_s: float, last: object) -> None:
        super().__init__(f"timed out after {timeout_s:g} s waiting for {what}")
        self.last = last


def wait_until(pred: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """Return ``pred()``'s first truthy value; raise :class:`Timeout` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(what, timeout_s, last)
        time.sleep(interval_s)
