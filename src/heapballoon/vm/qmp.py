"""QMP through qemu.qmp (asyncio), with a synchronous wrapper for the CLI and tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any, Mapping

from heapballoon.errors import VMError


async def qmp_execute_async(socket_path: str | Path, cmd: str, args: Mapping[str, object] | None = None,
                            timeout_s: float = 5.0) -> Any:
    """Connect to a QMP unix socket, run one command, disconnect. VMError on any failure.

    ``quit`` is special: QEMU may drop the connection before or right after answering,
    which counts as success.
    """
    from qemu.qmp import QMPClient, QMPError

    client = QMPClient("heapballoon")
    try:
        await asyncio.wait_for(client.connect(str(socket_path)), timeout_s)
    except (OSError, QMPError, asyncio.TimeoutError) as e:
        raise VMError(f"QMP connect to {socket_path} failed: {e or type(e).__name__}") from e
    try:
        return await asyncio.wait_for(client.execute(cmd, args), timeout_s)
    except (OSError, QMPError, asyncio.TimeoutError, EOFError) as e:
        if cmd == "quit":
            return {}
        raise VMError(f"QMP {cmd} failed: {e or type(e).__name__}") from e
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout_s)
        except Exception:
            pass


def qmp_execute(socket_path: str | Path, cmd: str, args: Mapping[str, object] | None = None,
                timeout_s: float = 5.0) -> Any:
    """Synchronous :func:`qmp_execute_async`; safe to call from inside a running event loop."""
    coro = qmp_execute_async(socket_path, cmd, args, timeout_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def hmp(socket_path: str | Path, command_line: str, timeout_s: float = 5.0) -> str:
    """A human-monitor command through QMP (``info mtree -f`` and friends)."""
    return str(qmp_execute(socket_path, "human-monitor-command", {"command-line": command_line}, timeout_s))
