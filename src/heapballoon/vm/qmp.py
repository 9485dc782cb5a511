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


class EventLog:
    """Every QMP event of one monitor, collected by a thread of its own until :meth:`stop`
    (e.g. ``STOP``/``RESUME``: whether a guest was paused). Use a monitor nobody else holds:
    a VM's second one (``qmp-hostd.sock``) when no hostd runs."""

    def __init__(self, socket_path: str | Path, timeout_s: float = 10.0) -> None:
        import threading

        self.socket_path = str(socket_path)
        self.events: list[str] = []
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._done: asyncio.Future | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._listen(),),
                                        name="qmp-events", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.error is not None:
            raise VMError(f"QMP event monitor {self.socket_path}: {self.error or 'no connection'}")

    async def _listen(self) -> None:
        from qemu.qmp import QMPClient

        client = QMPClient("heapballoon-events")
        try:
            await client.connect(self.socket_path)
        except Exception as err:  # noqa: BLE001 - reported by __init__ as one VMError
            self.error = err
            self._ready.set()
            return
        self._done = self._loop.create_future()

        async def collect():
            async for event in client.events:
                self.events.append(str(event["event"]))

        task = asyncio.ensure_future(collect())
        self._ready.set()
        await self._done
        task.cancel()
        await client.disconnect()

    def stop(self) -> list[str]:
        """Stop listening; the names of every event seen, in order."""
        if self._done is not None and not self._done.done():
            self._loop.call_soon_threadsafe(self._done.set_result, None)
        self._thread.join(10)
        return list(self.events)
