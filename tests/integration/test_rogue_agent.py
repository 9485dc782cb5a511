"""Hostile input (issue 14): a rogue agent against a real driver daemon, over its real socket.

The rogue is a separate Python process (tests/integration/rogue_agent.py), so SO_PEERCRED and
/proc/PID/pagemap are real, and it maps and touches memory of its own, so what it "really had
resident" is known. Rows: 4 (huge chunks: the daemon survives, reclaimed is what was really
given back), 5 (an agent that never reads holds up no tick), 13 (bad-line and message floods
are dropped and logged once).
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from heapballoon import protocol, transport
from heapballoon.errors import RemoteError
from hbtest import PY, cli_env, require_root, wait_for

MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40
ROGUE = str(Path(__file__).with_name("rogue_agent.py"))


class Rogue:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([PY, ROGUE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=cli_env(), bufsize=1)
        self.answers: queue.Queue = queue.Queue()
        self.got: list[str] = []
        self.eof = False
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "got" in msg:
                self.got.append(msg["got"])
            elif "eof" in msg:
                self.eof = True
            else:
                self.answers.put(msg)

    def cmd(self, op: str, wait_s: float = 60.0, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self.answers.get(timeout=wait_s)

    def hello(self, chunks: list[tuple[int, int]], heap_max_bytes: int, name: str = "rogue") -> str:
        state = protocol.State(heap_max_bytes=heap_max_bytes, heap_committed_bytes=GIB, heap_used_bytes=GIB // 2,
                               live_bytes=GIB // 4, balloon_bytes=sum(n for _, n in chunks),
                               chunks=tuple(protocol.Chunk(i, a, n) for i, (a, n) in enumerate(chunks)),
                               chunks_epoch=1, reclaim="direct")
        return protocol.encode(protocol.Hello(pid=self.pid, name=name, agent_version="rogue", jvm_version="17",
                                              jvm_vendor="x", gc="G1", region_bytes=MIB, address_mode="jni",
                                              reclaim_modes=("direct",), target_bytes=0,
                                              state=state)).decode().rstrip("\n")

    def state(self, chunks: list[tuple[int, int]], heap_max_bytes: int, epoch: int) -> str:
        return protocol.encode(protocol.State(
            heap_max_bytes=heap_max_bytes, heap_committed_bytes=GIB, heap_used_bytes=GIB // 2, live_bytes=GIB // 4,
            balloon_bytes=sum(n for _, n in chunks), reclaim="direct", chunks_epoch=epoch,
            chunks=tuple(protocol.Chunk(i, a, n) for i, (a, n) in enumerate(chunks)))).decode().rstrip("\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def rogues():
    made: list[Rogue] = []

    def make() -> Rogue:
        r = Rogue()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def jvm(d, pid: int) -> dict | None:
    body = transport.request(d.sock, protocol.StatusRequest(), 5.0).body
    return next((j for j in body["jvms"] if j["pid"] == pid), None)


def test_rogue_agent_huge_chunks_leave_the_daemon_running_and_reclaimed_true(daemons, rogues):
    """Row 4 and its "done when": a rogue claims a 16 GiB chunk, then a 1 TiB one. The daemon
    keeps running, reads no unmapped or never-touched page as reclaimed (it once said
    "reclaimed 16.0 GiB"), and the figure follows what the rogue really gave back."""
    require_root()
    d = daemons.start()
    rogue = rogues()
    addr = rogue.cmd("map", mib=64, touch_mib=16)["addr"]  # 16 MiB resident, 48 MiB never touched
    rogue.cmd("release", off_mib=0, mib=8)  # gives 8 MiB back: really reclaimed
    rogue.cmd("connect", path=d.sock)
    rogue.cmd("send", lines=[rogue.hello([(addr, 16 * GIB)], heap_max_bytes=32 * GIB)])
    wait_for(lambda: (j := jvm(d, rogue.pid)) and j["reclaimed_bytes"] >= 7 * MIB, 15, 0.2,
             what="the 8 MiB given back counted")
    assert jvm(d, rogue.pid)["reclaimed_bytes"] <= 12 * MIB, jvm(d, rogue.pid)

    rogue.cmd("send", lines=[rogue.state([(addr, TIB)], heap_max_bytes=2 * TIB, epoch=2)])
    rogue.cmd("release", off_mib=8, mib=4)  # 4 MiB more given back
    wait_for(lambda: (j := jvm(d, rogue.pid)) and j["reclaimed_bytes"] >= 11 * MIB, 15, 0.2,
             what="the 12 MiB given back counted under a 1 TiB claim")
    assert jvm(d, rogue.pid)["reclaimed_bytes"] <= 16 * MIB, jvm(d, rogue.pid)
    # Overlapping claims count once, and a state past its heap is rejected.
    rogue.cmd("send", lines=[rogue.state([(addr, 64 * MIB)] * 1000, heap_max_bytes=TIB, epoch=3),
                             rogue.state([(addr, TIB)] * 4, heap_max_bytes=TIB, epoch=4)])
    wait_for(lambda: jvm(d, rogue.pid)["chunks"] == 1000, 10, 0.2, what="the overlapping state taken")
    assert 11 * MIB <= jvm(d, rogue.pid)["reclaimed_bytes"] <= 16 * MIB, jvm(d, rogue.pid)
    assert d.proc.poll() is None, d.log()
    assert "Traceback" not in d.log(), d.log()


def test_rogue_agent_that_never_reads_holds_up_no_tick(daemons, rogues):
    """Row 5: an agent that stops reading once wedged the whole tick loop (and, with the send
    timeout, its PeerStalled ended the daemon). Its socket is filled (it floods requests that
    each get an error reply, reading none), then it is given a target: another agent still gets
    its own target within a second, and the daemon goes on."""
    require_root()
    d = daemons.start()
    honest, rogue = rogues(), rogues()
    for r in (honest, rogue):
        r.cmd("map", mib=8, touch_mib=0)
        r.cmd("connect", path=d.sock, rcvbuf=4096)
    honest.cmd("read")
    honest.cmd("send", lines=[honest.hello([], heap_max_bytes=GIB, name="honest")])
    rogue.cmd("send", lines=[rogue.hello([], heap_max_bytes=GIB)])
    wait_for(lambda: jvm(d, rogue.pid) and jvm(d, honest.pid), 10, what="both agents registered")
    # Each of these valid-but-unexpected lines gets an error reply the rogue never reads: its
    # socket fills, every send to it waits, and the daemon stops reading it (the rogue's own
    # send then times out), or the daemon drops it first (over its rate).
    flood = rogue.cmd("send", lines=['{"v":1,"type":"status_request","id":1}'] * 1000, repeat=500, timeout_s=0.3)
    assert flood["error"], flood
    with contextlib.suppress(RemoteError):  # "no JVM with PID ...": dropped already (over its rate)
        transport.request(d.sock, protocol.SetTarget(pid=rogue.pid, target_bytes=512 * MIB), 5.0)
    for target_mib in (256, 128, 64):  # ticks after the one that found the rogue stalled, too
        t0 = time.monotonic()
        transport.request(d.sock, protocol.SetTarget(pid=honest.pid, target_bytes=target_mib * MIB), 5.0)
        want = f'"target_bytes":{target_mib * MIB}'
        wait_for(lambda: any(want in g for g in honest.got), 5, 0.02, what=f"the honest agent's {target_mib} MiB")
        assert time.monotonic() - t0 < 1.0, "the tick waited on the agent that does not read"
    assert d.proc.poll() is None, d.log()
    wait_for(lambda: jvm(d, rogue.pid) is None or not jvm(d, rogue.pid)["connected"], 10,
             what="the stalled agent dropped")
    assert d.proc.poll() is None and "Traceback" not in d.log(), d.log()


def test_rogue_agent_floods_are_dropped_and_logged_once(daemons, rogues):
    """Rows 13 and 12: bad lines (deep JSON, garbage) with a valid line between each once reset
    the 16-bad-lines counter forever, each logged (2,810 warnings in a probe); a message flood
    was never limited. Now bad lines are counted in a window and the peer is dropped, logged
    once; events are counted, only a few logged; a flood of states is dropped for its rate;
    peer text cannot fake log lines, and error replies stay short."""
    require_root()
    d = daemons.start()
    bad, flood = rogues(), rogues()
    for r in (bad, flood):
        r.cmd("map", mib=8, touch_mib=0)
        r.cmd("connect", path=d.sock)
        r.cmd("read")
    bad.cmd("send", lines=[bad.hello([], heap_max_bytes=GIB, name="x\nFAKE heapballoon.driver ERROR owned")])
    wait_for(lambda: jvm(d, bad.pid), 10, what="registered")
    valid = bad.state([], heap_max_bytes=GIB, epoch=1)
    big_type = '{"v":1,"type":"' + "x" * 5000 + '"}'  # its error once quoted all 5,000 characters back
    bad.cmd("send", lines=["[" * 5000, valid, "not json\nFAKE heapballoon.driver ERROR x", valid, big_type] * 40,
            timeout_s=2.0)
    wait_for(lambda: bad.eof, 10, what="the bad-line peer dropped")
    assert bad.got and max(len(g) for g in bad.got) < 500
    log = d.log()
    assert "\nFAKE" not in log, log[-2000:]
    assert log.count("sent a bad message") == 1, log[-3000:]

    flood.cmd("send", lines=[flood.hello([], heap_max_bytes=GIB, name="flood")])
    wait_for(lambda: jvm(d, flood.pid), 10, what="registered")
    events = [protocol.encode(protocol.Event(kind="inflate_done", reason=f"r{i}")).decode().rstrip("\n")
              for i in range(1000)]
    flood.cmd("send", lines=events)
    wait_for(lambda: (j := jvm(d, flood.pid)) and j["events"].get("inflate_done") == 1000, 10, what="events counted")
    assert d.log().count("event inflate_done") <= 10, "every event of a flood logged"
    kinds = [protocol.encode(protocol.Event(kind=f"k{i}")).decode().rstrip("\n") for i in range(100)]
    flood.cmd("send", lines=kinds)
    wait_for(lambda: jvm(d, flood.pid)["events"].get("other") == 100 - 15, 10, what="odd kinds counted as other")
    assert len(jvm(d, flood.pid)["events"]) == 17
    states = [flood.state([], heap_max_bytes=GIB, epoch=e) for e in range(2, 12)]
    flood.cmd("send", lines=states * 1000, timeout_s=2.0)
    wait_for(lambda: flood.eof, 10, what="the flooding agent dropped")
    assert "over its rate" in d.log()
    assert d.proc.poll() is None and "Traceback" not in d.log(), d.log()
