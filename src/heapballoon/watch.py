"""`heapballoon status --watch`: the status redrawn in place every ``interval_s`` until Ctrl-C.

Owns the refresh loop only; :mod:`heapballoon.render` draws each frame. On a terminal the
frame is redrawn in place (rich ``Live`` on the alternate screen, cropped to the terminal's
height, like ``top``) and the last frame is printed when the user quits. Piped, each frame is
printed after the previous one (``--json``: one JSON document a line). Ctrl-C exits 0 without a
traceback; a daemon that stops answering ends the watch with a one-line error (exit 1).
"""

from __future__ import annotations

import json
import time
from typing import Callable

from heapballoon.errors import DaemonUnavailable, HeapballoonError, UsageError

try:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text
except ImportError:  # a guest without the host extras
    Console = None  # type: ignore[assignment,misc]
from heapballoon.render import status_renderable


def _frame(body: dict, console: Console, interval_s: float):
    stamp = Text(f"{time.strftime('%H:%M:%S')}  every {interval_s:g} s, Ctrl-C to quit", style="dim")
    return Group(stamp, status_renderable(body, console.width))


def _next(get_status: Callable[[], dict], first: bool) -> dict:
    try:
        return get_status()
    except HeapballoonError as err:
        if first:
            raise
        raise DaemonUnavailable(f"stopped watching: {err}") from err


def watch_status(get_status: Callable[[], dict], interval_s: float, as_json: bool = False,
                 console: Console | None = None, sleep=time.sleep) -> int:
    if Console is None:
        raise UsageError("status --watch needs the host extras: pip install 'heapballoon[host]'")
    console = console or Console()
    body = _next(get_status, first=True)
    try:
        if as_json or not console.is_terminal:
            while True:
                if as_json:
                    console.file.write(json.dumps(body, sort_keys=True) + "\n")
                    console.file.flush()
                else:
                    console.print(_frame(body, console, interval_s))
                    console.print()
                    console.file.flush()
                sleep(interval_s)
                body = _next(get_status, first=False)
        last = body
        try:
            with Live(_frame(body, console, interval_s), console=console, screen=True, auto_refresh=False,
                      vertical_overflow="crop") as live:
                while True:
                    sleep(interval_s)
                    last = _next(get_status, first=False)
                    live.update(_frame(last, console, interval_s), refresh=True)
        finally:
            console.print(status_renderable(last, console.width))
    except KeyboardInterrupt:
        return 0
