"""LineChannel decodes a repeated line once (an idle agent's heartbeat), and only an exact repeat."""

import asyncio

import pytest

from heapballoon import protocol, transport
from heapballoon.errors import ProtocolError


def test_a_repeated_line_is_decoded_once_and_others_as_usual():
    async def main():
        reader = asyncio.StreamReader()
        a = protocol.encode(protocol.State(heap_used_bytes=1))
        b = protocol.encode(protocol.State(heap_used_bytes=2))
        reader.feed_data(a + a + b + b"{bad\n" + b"{bad\n" + a)
        reader.feed_eof()
        chan = transport.LineChannel(reader, None, protocol.agent.decode)
        first, again, other = await chan.recv(), await chan.recv(), await chan.recv()
        assert first is again and first.heap_used_bytes == 1 and other.heap_used_bytes == 2
        for _ in range(2):  # a bad line is refused every time it comes
            with pytest.raises(ProtocolError):
                await chan.recv()
        assert (await chan.recv()).heap_used_bytes == 1
        assert await chan.recv() is None

    asyncio.run(main())
