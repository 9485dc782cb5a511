"""The guest end of the host channel: line I/O on the virtio-serial port ``org.heapballoon.0``.

Owns the open port (a :class:`heapballoon.linux.virtio.PortFile`, the one port reader) and two
threads: a reader that hands each line to the guest driver's event loop
(``call_soon_threadsafe``) and a writer that drains a bounded queue (a write blocks while no host
is connected; what cannot be queued is dropped and counted). Pure standard library: runs in the
guest.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from heapballoon import protocol
from heapballoon.linux.virtio import PortFile

log = logging.getLogger("heapballoon.guest")
NO_HOST_WAIT_S = 0.2  # no host connected: the port reads EOF; poll gently


class Uplink:
    """Line I/O on the virtio-serial port, with a reader thread feeding the asyncio loop."""

    MAX_QUEUED = 4096

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, on_message) -> None:
        self.path = path
        self.loop = loop
        self.on_message = on_message
        self.port = PortFile(path, protocol.MAX_LINE_BYTES)
        # A write blocks while no host is connected: a writer thread keeps the loop free, and
        # what cannot be queued is dropped (hostd pings on connect and the guest resyncs).
        self.queue: queue.Queue[bytes] = queue.Queue(self.MAX_QUEUED)
        self.dropped = 0
        threading.Thread(target=self._read_loop, name="uplink-reader", daemon=True).start()
        threading.Thread(target=self._write_loop, name="uplink-writer", daemon=True).start()

    def _read_loop(self) -> None:
        while True:
            try:
                for line in self.port.lines(NO_HOST_WAIT_S):
                    if line is None:
                        log.warning("dropping an over-long line from the host")
                    elif line.strip():
                        self.loop.call_soon_threadsafe(self.on_message, line)
            except OSError as err:
                log.error("uplink read failed: %s", err)
                time.sleep(1)

    def _write_loop(self) -> None:
        while True:
            self.port.write_all(self.queue.get(), on_error=self._write_failed)

    @staticmethod
    def _write_failed(err: OSError) -> None:
        log.error("uplink write failed: %s", err)
        time.sleep(1)

    def send(self, msg: protocol.Message) -> None:
        try:
            self.queue.put_nowait(protocol.encode(msg))
        except queue.Full:
            self.dropped += 1
