"""Hostile input row 9 (and 4's "never kill the driver"): who a peer is, decided at accept.

Real sockets throughout; the CLI client of the uid test is a forked child running as
``nobody``; the first-message test runs against a real daemon process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import time

import pytest

from heapballoon import protocol, transport
from heapballoon.driver import balloontick, sessions
from heapballoon.driver.daemon import Driver
from heapballoon.errors import KernelError, RemoteError
from heapballoon.linux.procfs import ProcFS
from hbtest import require_root, until

MIB = 1 << 20
NOBODY = 65534


def hello(chunks=()) -> protocol.Hello:
    state = protocol.State(heap_max_bytes=1024 * MIB, heap_committed_bytes=1024 * MIB, live_bytes=100 * MIB,
                           chunks=tuple(chunks), chunks_epoch=1, balloon_bytes=sum(c.len for c in chunks))
    return protocol.Hello(pid=os.getpid(), name="me", agent_version="t", jvm_version="17", jvm_vendor="t", gc="G1",
                          region_bytes=MIB, address_mode="jni", reclaim_modes=("direct",), target_bytes=0, state=state)


async def start(path: str) -> tuple[Driver, asyncio.Task]:
    driver = Driver(path, ksm_mode="off", interval_s=0.1)
    ready = asyncio.Event()
    task = asyncio.create_task(driver.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    return driver, task


async def talk(path: str, msg: protocol.Message, timeout_s: float = 5.0) -> list[protocol.Message]:
    """Connect, send ``msg``, and read what comes back until the daemon closes (or timeout)."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(protocol.encode(msg))
    await writer.drain()
    out = []
    try:
        while line := await asyncio.wait_for(reader.readline(), timeout_s):
            out.append(protocol.decode(line))
    except asyncio.TimeoutError:
        out.append("still connected")
    finally:
        writer.close()
    return out


def test_state_changing_requests_need_root_or_the_daemons_uid(daemons):
    """Row 9a: docs/guest.md suggests a 0666 socket; then any local user could set targets.
    Now ``status`` is open to whoever can connect, ``set_target`` needs root or the daemon's
    uid: the client (a child running as nobody) gets a one-line error."""
    require_root()
    run_dir = tempfile.mkdtemp(prefix="hb-uid-", dir="/tmp")
    try:
        os.chmod(run_dir, 0o755)
        d = daemons.start("--socket-mode", "666", sock=os.path.join(run_dir, "hb.sock"))
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # the CLI client, as nobody
            os.close(r)
            result = {}
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                result["status"] = "node" in transport.request(d.sock, protocol.StatusRequest(id=1), 5.0).body
                try:
                    transport.request(d.sock, protocol.SetTarget(pid=None, target_bytes=MIB, id=2), 5.0)
                    result["set_target"] = "accepted"
                except RemoteError as err:
                    result["set_target"] = str(err)
            except BaseException as err:  # noqa: BLE001 - report anything to the parent
                result["crash"] = repr(err)
            os.write(w, json.dumps(result).encode())
            os._exit(0)
        os.close(w)
        os.waitpid(child, 0)
        with os.fdopen(r) as f:
            result = json.loads(f.read())
        assert result.get("status") is True, result
        assert "needs root or the daemon's user" in result["set_target"], result
        assert transport.request(d.sock, protocol.StatusRequest(), 5.0).body["node"]["target_bytes"] == 0
        # root (the daemon's own uid here) still may
        transport.request(d.sock, protocol.SetTarget(pid=None, target_bytes=MIB, id=3), 5.0)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_peer_that_says_nothing_is_dropped_after_the_first_message_timeout(daemons):
    """Row 9b: no timeout on the first message let a peer hold a connection (and its pid's
    binding) open forever. The daemon closes it after FIRST_MESSAGE_TIMEOUT_S (5 s)."""
    limit_s = 5.0  # sessions.FIRST_MESSAGE_TIMEOUT_S
    d = daemons.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.sock)
    s.settimeout(limit_s + 5)
    t0 = time.monotonic()
    try:
        assert s.recv(100) == b""  # EOF: dropped
    except socket.timeout:
        pytest.fail(f"still connected after {limit_s + 5} s without a message")
    finally:
        s.close()
    assert time.monotonic() - t0 >= limit_s - 0.5
    assert "no valid first message within 5 s" in d.log()


def test_an_agent_without_a_peer_pid_is_refused(tmp_path, monkeypatch):
    """Row 9c: ``peer_pid() or hello.pid`` trusted the claimed pid when SO_PEERCRED gave none.
    Now such an agent is refused with a one-line error, and nothing is registered."""
    monkeypatch.setattr(transport, "peer_pid", lambda writer: None)  # what the old code asked
    def no_pid(sock):
        from heapballoon.linux.peercred import PeerCred

        return PeerCred(0, 0, 0)  # SO_PEERCRED without a pid (the peer is in no pid namespace of ours)

    monkeypatch.setattr(sessions, "peer_cred", no_pid, raising=False)
    path = str(tmp_path / "hb.sock")

    async def scenario():
        driver, task = await start(path)
        try:
            replies = await talk(path, hello(), timeout_s=3)
            assert len(driver.registry) == 0, "registered under the pid it claimed"
            assert any(isinstance(m, protocol.Error) and "SO_PEERCRED" in m.error for m in replies), replies
        finally:
            driver.stop()
            await task

    asyncio.run(scenario())


def test_a_pid_reused_between_accept_and_hello_is_refused(tmp_path, monkeypatch):
    """Row 9b: the start time was read only at ``hello``, so a pid recycled after connect bound
    the new process (whose pagemap root then read). Now it is read at accept and checked at
    hello: a process that is not the one that connected is refused."""
    path = str(tmp_path / "hb.sock")
    real = ProcFS.starttime
    calls = {"n": 0}

    def starttime(self, pid):
        calls["n"] += 1
        value = real(self, pid)
        return value + 1 if pid == os.getpid() and calls["n"] > 1 else value  # "another process" after accept

    async def scenario():
        driver, task = await start(path)
        try:
            monkeypatch.setattr(ProcFS, "starttime", starttime)
            replies = await talk(path, hello(), timeout_s=3)
            assert driver.registry.get(os.getpid()) is None, "bound to the process that took the pid"
            assert "still connected" not in replies
        finally:
            driver.stop()
            await task

    asyncio.run(scenario())


def test_pagemap_is_read_only_of_the_process_bound_at_accept():
    """Row 9b: verification opens the pagemap, then checks the start time: a process that took
    the pid is never read."""
    from heapballoon.driver.verify import verify_step

    procfs = ProcFS()
    me = os.getpid()
    chunk = protocol.Chunk(1, 1 << 30, MIB)
    with pytest.raises(KernelError, match="another process"):
        verify_step(procfs, me, procfs.starttime(me) + 1, (chunk,), None, None, 0)


def test_an_agent_whose_verification_raises_is_dropped_and_the_daemon_goes_on(tmp_path, monkeypatch):
    """Row 4: a MemoryError in one agent's pagemap verification escaped step() and ended the
    driver. Now that agent is dropped, logged once, and the ticks go on."""
    def boom(*args, **kwargs):
        raise MemoryError("a rogue agent's 1 TiB chunk")

    monkeypatch.setattr(balloontick, "verify_step", boom, raising=False)
    monkeypatch.setattr(balloontick, "verify_chunks", boom, raising=False)  # the old code's name
    path = str(tmp_path / "hb.sock")

    async def scenario():
        driver, task = await start(path)
        try:
            replies = asyncio.create_task(talk(path, hello([protocol.Chunk(1, 1 << 30, 4 * MIB)]), timeout_s=10))
            await until(lambda: replies.done() or task.done(), 8, what="the agent dropped")
            assert not task.done(), task
            ticks = driver.ticker.ticks
            await until(lambda: driver.ticker.ticks > ticks + 3, 5, what="ticks going on")
            assert not driver.registry.channels()
        finally:
            driver.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_control_client_flooding_requests_is_dropped(tmp_path):
    """CLI ↔ driver limit: a connection may send CONTROL_RATE_PER_S requests a second (burst
    CONTROL_BURST); a status flood (each reply builds the whole status) is dropped, logged once."""
    path = str(tmp_path / "hb.sock")

    async def scenario():
        driver, task = await start(path)
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
            writer.write(protocol.encode(protocol.StatusRequest(id=1)) * 1000)
            await writer.drain()
            replies = 0
            while await asyncio.wait_for(reader.readline(), 5):
                replies += 1
            writer.close()
            assert 50 <= replies <= 200, replies  # the burst, then dropped
            assert not task.done()
        finally:
            driver.stop()
            await task

    asyncio.run(scenario())
