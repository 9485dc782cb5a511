"""Hostile input rows 3 and 5: a peer that stops reading must not hold its sender forever."""

import asyncio
import os
import socket
import time

import pytest

from heapballoon import protocol, transport
from heapballoon.errors import PeerStalled


def test_send_to_a_peer_that_never_reads_times_out_and_drops_it():
    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reader, writer = await asyncio.open_unix_connection(sock=a)
        chan = transport.LineChannel(reader, writer, protocol.control.decode)
        big = protocol.Error(error="x" * 4000)
        t0 = time.monotonic()
        with pytest.raises(PeerStalled, match="did not read"):
            for _ in range(10_000):  # b never reads: the buffers fill, then drain() waits
                await chan.send(big, timeout_s=0.3)
        took_s = time.monotonic() - t0
        assert took_s < 5, took_s
        await asyncio.sleep(0.05)
        assert writer.transport.is_closing()
        b.close()

    asyncio.run(main())


def test_send_to_a_reading_peer_is_unaffected():
    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, writer = await asyncio.open_unix_connection(sock=a)
        chan = transport.LineChannel(reader, writer, protocol.control.decode)
        await chan.send(protocol.Ping(id=7), timeout_s=0.3)
        b.settimeout(2)
        assert protocol.decode(b.recv(1000).rstrip(b"\n")) == protocol.Ping(id=7)
        chan.close()
        b.close()

    asyncio.run(main())
