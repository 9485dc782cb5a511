"""`--policy auto`'s control requests over a real socket, with this test process playing the
agent (no JVM): pins and `auto`, node targets refused, `policy_explain`, status fields."""

from __future__ import annotations

import asyncio
import os

import pytest

from heapballoon import protocol
from heapballoon.driver.autopolicy import AutoPolicy
from heapballoon.driver.daemon import Driver
from heapballoon.errors import RemoteError
from hbtest import until
from test_daemon import FakeAgent, ask, hello

MIB = 1 << 20


async def start(sock_path, policy):
    driver = Driver(sock_path, ksm_mode="off", interval_s=0.1, policy=policy)
    ready = asyncio.Event()
    task = asyncio.create_task(driver.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    return driver, task


def test_pins_auto_and_explain_over_the_socket(tmp_path):
    sock = str(tmp_path / "hb.sock")
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('budget = "64G"\ninterval_s = 0.1\n')  # plenty: nothing to take

    async def scenario():
        driver, task = await start(sock, AutoPolicy(str(policy_file)))
        agent = FakeAgent(sock)
        await agent.connect(hello(target_bytes=32 * MIB))  # a balloon held across a restart
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        status = (await ask(sock, protocol.StatusRequest(id=1))).body
        assert status["node"]["policy"] == "auto" and status["node"]["budget_bytes"] == 64 << 30
        [jvm] = status["jvms"]
        assert jvm["target_reason"] and "pinned" not in jvm["target_reason"]  # adopted, not pinned

        with pytest.raises(RemoteError, match="the policy sets node targets"):
            await ask(sock, protocol.SetTarget(pid=None, target_bytes=100 * MIB))
        await ask(sock, protocol.SetTarget(pid=os.getpid(), target_bytes=100 * MIB, id=2))
        await until(lambda: agent.targets and agent.targets[-1].target_bytes == 100 * MIB)
        await until(lambda: "pinned" in driver.policy.reason(os.getpid()))
        await ask(sock, protocol.SetTarget(pid=os.getpid(), target_bytes=0, id=3, auto=True))
        await until(lambda: agent.targets[-1].target_bytes == 0)  # no pressure: the policy says 0
        assert "no pressure" in driver.policy.reason(os.getpid()) or "not measured" in driver.policy.reason(os.getpid())

        body = (await ask(sock, protocol.PolicyExplainRequest(id=4))).body
        assert body["mode"] == "auto" and "who gives" in body["text"] and "fake" in body["text"]
        await agent.close()
        driver.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_manual_mode_explains_itself_and_auto_unpins(tmp_path):
    sock = str(tmp_path / "hb.sock")

    async def scenario():
        driver, task = await start(sock, None)
        agent = FakeAgent(sock)
        await agent.connect(hello())
        await until(lambda: driver.registry.get(os.getpid()) is not None)
        body = (await ask(sock, protocol.PolicyExplainRequest(id=1))).body
        assert body["mode"] == "manual" and "--policy auto" in body["text"]
        await ask(sock, protocol.SetTarget(pid=os.getpid(), target_bytes=64 * MIB))
        assert driver.registry.get(os.getpid()).explicit_target_bytes == 64 * MIB
        await ask(sock, protocol.SetTarget(pid=os.getpid(), target_bytes=0, auto=True))
        assert driver.registry.get(os.getpid()).explicit_target_bytes is None
        await agent.close()
        driver.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
