"""How an image build reports and runs tools: progress on stderr, commands that fail as ImageError.

Owns :class:`Progress` (a rich status line on a TTY, plain lines otherwise, nothing when
quiet; rich is imported only when a build starts on a TTY) and :func:`run` (a command whose
failure becomes one :class:`~heapballoon.errors.ImageError` line with the tail of its output).
"""

from __future__ import annotations

import subprocess
import sys
import time

from heapballoon.errors import ImageError


class Progress:
    """Steps on stderr: a rich status line on a TTY, plain lines otherwise, nothing if quiet."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._status = None
        self._console = None
        self._t0 = time.monotonic()
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console

                self._console = Console(stderr=True)
                self._status = self._console.status("building guest image")
                self._status.start()
            except Exception:  # rich missing or broken: plain lines
                self._console = None

    def step(self, msg: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._t0
        if self._console is not None:
            self._status.update(f"[bold]guest image[/bold]: {msg}")
            self._console.log(f"{msg}", highlight=False)
        else:
            print(f"heapballoon image [{elapsed:5.1f}s] {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        # warnings are shown even when progress is off
        if self._console is not None:
            self._console.log(f"[yellow]warning:[/yellow] {msg}", highlight=False)
        else:
            print(f"heapballoon image: warning: {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as err:
        raise ImageError(f"{what}: {cmd[0]} not found (install it, e.g. apt-get install {cmd[0]})") from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail) or 'no output'}")
    return proc
