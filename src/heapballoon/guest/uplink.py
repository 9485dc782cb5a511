"""The guest end of the host channel: line I/O on the virtio-serial port ``org.heapballoon.0``.

Owns the port's file descriptor and two threads: a reader that hands each line to the guest
driver's event loop (``call_soon_threadsafe``) and a writer that drains a bounded queue (a write
blocks while no host is connected; what cannot be queued is dropped and counted). Pure standard
library: runs in the guest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time

from heapballoon import protocol

log = logging.getLogger("heapballoon.guest")


class Uplink:
    """Line I/O on the virtio-serial port, with a reader thread feeding the asyncio loop."""

    MAX_QUEUED = 4096

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, on_message) -> None:
        self.path = path
        self.loop = loop
        self.on_message = on_message
        self.fd = os.open(path, os.O_RDWR)
        # A write blocks while no host is connected: a writer thread keeps the loop free, and
        # what cannot be queued is dropped (hostd pings on connect and the guest resyncs).
        self.queue: queue.Queue[bytes] = queue.Queue(self.MAX_QUEUED)
        self.dropped = 0
        threading.Thread(target=self._read_loop, name="uplink-reader", daemon=True).start()
        threading.Thread(target=self._write_loop, name="uplink-writer", daemon=True).start()

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as err:
                log.error("uplink read failed: %s", err)
                time.sleep(1)
                continue
            if not data:  # host side not connected: the port reads EOF; poll gently
                time.sleep(0.2)
                continue
            buf += data
            if len(buf) > protocol.MAX_LINE_BYTES and b"\n" not in buf:
                log.warning("dropping an over-long line from the host")
                buf = b""
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self.loop.call_soon_threadsafe(self.on_message, line)

    def _write_loop(self) -> None:
        while True:
            view = memoryview(self.queue.get())
            while view:
                try:
                    view = view[os.write(self.fd, view):]
                except OSError as err:
                    log.error("uplink write failed: %s", err)
                    time.sleep(1)

    def send(self, msg: protocol.Message) -> None:
        try:
            self.queue.put_nowait(protocol.encode(msg))
        except queue.Full:
            self.dropped += 1
