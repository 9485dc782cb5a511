"""QMP events of one monitor, collected on a thread of their own (whether a guest was paused).

Owns: one QMP connection per :class:`EventLog` and the list of event names it saw. Uses
``qemu.qmp`` directly: :mod:`heapballoon.qemu.monitor` answers commands, this only listens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from heapballoon.errors import VMError


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
