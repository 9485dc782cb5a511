"""The driver daemon over a real Unix socket, with this test process playing the agent.

The "balloon chunk" is an mmap of this very process, so the daemon's pagemap verification
reads real kernel state: pages written and then released (MADV_DONTNEED) count as reclaimed,
written ones do not (and never-touched ones would not either: tests/integration/test_rogue_agent.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import mmap
import os
import socket

import pytest

from heapballoon import protocol, transport
from heapballoon.driver.daemon import Driver
from heapballoon.errors import DaemonUnavailable, RemoteError
from hbtest import holds, until

MIB = 1 << 20


def hello(target_bytes=0, chunks=(), modes=("ksm",)):
    state = protocol.State(heap_max_bytes=1024 * MIB, heap_committed_bytes=1024 * MIB, heap_used_bytes=300 * MIB,
                           live_bytes=200 * MIB, balloon_bytes=sum(c.len for c in chunks), target_bytes=target_bytes,
                           chunks=tuple(chunks), chunks_epoch=1)
    return protocol.Hello(pid=os.getpid(), name="fake", agent_version="test", jvm_version="17", jvm_vendor="t",
                          gc="G1", region_bytes=MIB, address_mode="jni", reclaim_modes=modes,
                          target_bytes=target_bytes, state=state)


class FakeAgent:
    def __init__(self, path):
        self.path = path
        self.targets: list[protocol.Target] = []
        self.errors: list[protocol.Error] = []

    async def connect(self, msg: protocol.Hello):
        self.reader, self.writer = await asyncio.open_unix_connection(self.path)
        self.writer.write(protocol.encode(msg))
        await self.writer.drain()
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        while line := await self.reader.readline():
            msg = protocol.decode(line)
            if isinstance(msg, protocol.Target):
                self.targets.append(msg)
            elif isinstance(msg, protocol.Error):
                self.errors.append(msg)

    async def close(self):
        self.writer.close()
        self.task.cancel()


def released_region(nbytes: int) -> mmap.mmap:
    """An anonymous mapping whose pages were resident (written) and are released now: what a
    balloon chunk's pages are after the agent's madvise. The driver counts them up to what this
    process gave back (peak resident set minus resident now), and the driver runs in this very
    process, allocating as it goes: 16 MiB more is made resident and given back, for headroom."""
    region = mmap.mmap(-1, nbytes + 16 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as a Java heap is
    for off in range(0, len(region), MIB):
        region[off:off + MIB] = b"\x01" * MIB
    region.madvise(mmap.MADV_DONTNEED)
    return region


async def ask(path, msg):
    return await asyncio.to_thread(transport.request, path, msg, 5.0)


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "hb.sock")


async def start(sock_path):
    driver = Driver(sock_path, ksm_mode="off", interval_s=0.1)
    ready = asyncio.Event()
    task = asyncio.create_task(driver.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    return driver, task


async def stop(driver, task):
    driver.stop()
    await asyncio.wait_for(task, 5)


def test_target_status_and_verification(sock_path):
    region = released_region(4 * MIB)

    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    chunk = protocol.Chunk(id=1, addr=addr, len=4 * MIB)

    async def scenario():
        driver, task = await start(sock_path)
        driver.ticker.reverify_s = 0.0  # read the balloon every tick (the schedule is tested below)
        agent = FakeAgent(sock_path)
        await agent.connect(hello(chunks=[chunk]))
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        reply = await ask(sock_path, protocol.SetTarget(pid=os.getpid(), target_bytes=512 * MIB, id=7))
        assert reply.id == 7
        await until(lambda: agent.targets and agent.targets[-1].target_bytes == 512 * MIB)
        assert agent.targets[-1].reclaim == "ksm"
        # Released pages are not present: all 1024 count as reclaimed.
        await until(lambda: driver.registry.get(os.getpid()).reclaimed_bytes == 4 * MIB)
        region[:2 * MIB] = b"\x01" * (2 * MIB)  # the "application" dirties half of it
        await until(lambda: driver.registry.get(os.getpid()).reclaimed_bytes == 2 * MIB)
        status = (await ask(sock_path, protocol.StatusRequest(id=1))).body
        [jvm] = status["jvms"]
        assert jvm["pid"] == os.getpid() and jvm["target_bytes"] == 512 * MIB
        assert jvm["reclaimed_bytes"] == 2 * MIB and jvm["name"] == "fake"
        await agent.close()
        await stop(driver, task)

    asyncio.run(scenario())


def test_node_target_reaches_the_agent_and_deflate_all(sock_path):
    async def scenario():
        driver, task = await start(sock_path)
        agent = FakeAgent(sock_path)
        await agent.connect(hello())
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        await ask(sock_path, protocol.SetTarget(pid=None, target_bytes=300 * MIB))
        await until(lambda: agent.targets and agent.targets[-1].target_bytes == 300 * MIB)
        await ask(sock_path, protocol.SetTarget(pid=None, target_bytes=0))
        await until(lambda: agent.targets[-1].target_bytes == 0)
        await agent.close()
        await stop(driver, task)

    asyncio.run(scenario())


def test_unknown_pid_is_a_clear_error(sock_path):
    async def scenario():
        driver, task = await start(sock_path)
        with pytest.raises(RemoteError, match="no JVM with PID 999999"):
            await ask(sock_path, protocol.SetTarget(pid=999999, target_bytes=1))
        await stop(driver, task)

    asyncio.run(scenario())


def test_each_session_decodes_only_its_own_channel(sock_path):
    """Issue 19: the driver's socket carries two channels; once a peer's first message says
    which it is, a message of the other channel is a bad line with an error naming the channel
    (the session goes on)."""
    async def line_of(reader):
        return protocol.decode(await asyncio.wait_for(reader.readline(), 5))

    async def scenario():
        driver, task = await start(sock_path)
        reader, writer = await asyncio.open_unix_connection(sock_path)  # a CLI client
        writer.write(protocol.encode(protocol.StatusRequest(id=1)) + protocol.encode(hello().state)
                     + protocol.encode(protocol.StatusRequest(id=2)))
        replies = [await line_of(reader) for _ in range(3)]
        assert [type(r) for r in replies] == [protocol.Reply, protocol.Error, protocol.Reply], replies
        assert "'state' does not belong on the control channel" in replies[1].error
        writer.close()
        agent = FakeAgent(sock_path)
        await agent.connect(hello())
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        agent.writer.write(protocol.encode(protocol.StatusRequest(id=3)))
        await agent.writer.drain()
        await until(lambda: agent.errors, what="an error reply to the agent")
        assert "'status_request' does not belong on the agent channel" in agent.errors[0].error
        assert driver.registry.get(os.getpid()).connected
        await agent.close()
        await stop(driver, task)

    asyncio.run(scenario())


def test_garbage_and_oversized_lines_do_not_hurt(sock_path):
    def raw_exchange(payload: bytes) -> bytes:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sock_path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
        except (BrokenPipeError, ConnectionResetError):
            return b""
        finally:
            s.close()

    async def scenario():
        driver, task = await start(sock_path)
        out = await asyncio.to_thread(raw_exchange, b"garbage\n{\"v\":1}\n\xff\xfe\n[1,2]\n")
        replies = [json.loads(line) for line in out.splitlines()]
        assert len(replies) == 4 and all(r["type"] == "error" for r in replies)
        await asyncio.to_thread(raw_exchange, b"x" * (2 * protocol.MAX_LINE_BYTES) + b"\n")
        await asyncio.to_thread(raw_exchange, b"\n".join([b"junk"] * 100) + b"\n")
        status = (await ask(sock_path, protocol.StatusRequest())).body
        assert status["node"]["bad_messages"] >= 4 + 1 + 16
        await stop(driver, task)

    asyncio.run(scenario())


def test_restart_adopts_balloons_agents_still_hold(sock_path):
    async def scenario():
        driver, task = await start(sock_path)
        agent = FakeAgent(sock_path)
        await agent.connect(hello())
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        await ask(sock_path, protocol.SetTarget(pid=os.getpid(), target_bytes=256 * MIB))
        await until(lambda: agent.targets and agent.targets[-1].target_bytes == 256 * MIB)
        await stop(driver, task)
        await agent.close()
        os.unlink(sock_path + ".state.json")  # only the agent remembers now
        driver, task = await start(sock_path)
        agent = FakeAgent(sock_path)
        await agent.connect(hello(target_bytes=256 * MIB))
        await until(lambda: agent.targets and agent.targets[-1].target_bytes == 256 * MIB)
        assert driver.status()["jvms"][0]["target_bytes"] == 256 * MIB
        await agent.close()
        await stop(driver, task)

    asyncio.run(scenario())


def test_no_daemon_is_a_clear_error(sock_path):
    with pytest.raises(DaemonUnavailable, match="no daemon is listening"):
        transport.request(sock_path, protocol.StatusRequest())


def test_tick_splits_a_node_target_among_jvms_by_what_each_can_hold(tmp_path):
    """Three JVMs in the registry (no sockets): the node target is split by idle heap, and the
    Serial JVM, whose old generation holds at most 100 MiB, is never handed more."""
    from heapballoon.driver.registry import JVMRecord  # noqa: F401 - the records tick() reads

    driver = Driver(str(tmp_path / "hb.sock"), ksm_mode="off")
    for pid, gc, live_mib, max_mib in ((1001, "G1", 200, 700), (1002, "G1", 600, 300), (1003, "Serial", 200, 100)):
        h = hello()
        state = protocol.State(heap_max_bytes=1024 * MIB, heap_committed_bytes=1024 * MIB, live_bytes=live_mib * MIB,
                               balloon_max_bytes=max_mib * MIB)
        driver.registry.upsert(pid, 1, protocol.Hello(**{**h.__dict__, "pid": pid, "gc": gc, "state": state}))
    driver.book.node_target_bytes = 900 * MIB
    sent = {rec.pid: t.target_bytes for rec, t in driver.ticker.tick()}
    assert sum(sent.values()) == 900 * MIB
    assert sent[1003] <= 100 * MIB
    assert sent[1001] > sent[1002] > 0  # more idle heap gives more
    assert all(sent[p] <= m * MIB for p, m in ((1001, 700), (1002, 300), (1003, 100)))


def test_a_settled_balloon_is_read_again_only_every_few_seconds(sock_path):
    """pagemap is read every tick for a balloon that changed or is not fully reclaimed yet; a
    settled one only every reverify_s (staggered by pid), and at once when its chunks move."""
    region = released_region(4 * MIB)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
    chunk = protocol.Chunk(id=1, addr=addr, len=4 * MIB)

    async def scenario():
        driver, task = await start(sock_path)
        driver.ticker.reverify_s = 3600.0
        agent = FakeAgent(sock_path)
        await agent.connect(hello(chunks=[chunk]))  # balloon_bytes = 4 MiB
        await until(lambda: (r := driver.registry.get(os.getpid())) is not None and r.reclaimed_bytes == 4 * MIB)
        rec = driver.registry.get(os.getpid())
        assert not driver.ticker.verify_due(rec, driver.clock())  # settled: not read again for a while
        region[:2 * MIB] = b"\x01" * (2 * MIB)
        await holds(lambda: rec.reclaimed_bytes == 4 * MIB, 0.5, what="no re-read (the write not seen yet)")
        driver.ticker.reverify_s = 0.0
        await until(lambda: rec.reclaimed_bytes == 2 * MIB)  # due again: seen
        assert driver.ticker.verify_due(rec, driver.clock())  # not fully reclaimed: read every tick
        driver.stop()
        await task

    asyncio.run(scenario())
