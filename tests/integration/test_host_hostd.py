"""hostd end to end: a real paused QEMU's memfd, a fake guest driver on the channel socket,
the CLI control socket, hostile guest input and a hostd restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time

import pytest

from heapballoon import protocol, transport
from heapballoon.status import JvmStatus
from heapballoon.errors import RemoteError
from heapballoon.host import hostd
from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
from heapballoon.vm.vmdir import VMDir, VMPaths
from hbtest import until
from scratchvm import ScratchVM

# hostd takes over /sys/kernel/mm/ksm while it serves: one KSM owner at a time (tests/conftest.py).
pytestmark = [pytest.mark.vm, pytest.mark.ksm_owner, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
M = 1 << 20
RAM = 256 * M
GUEST_JVM = JvmStatus(
    pid=42, name="app", gc="Serial", jvm_version="17.0.15", connected=True, heap_max_bytes=768 * M,
    heap_committed_bytes=768 * M, heap_used_bytes=300 * M, live_bytes=150 * M, live_source="MarkSweepCompact",
    excess_bytes=280 * M, balloon_max_bytes=280 * M, target_bytes=280 * M, flaps=0, balloon_bytes=4 * M,
    reclaimed_bytes=4 * M, reclaim="report", address_mode="jni", chunks=1, gc_count=9, gc_time_ms=40,
    moved_chunks=0, drift_pages=0)


class FakeGuest:
    """Plays the guest driver: a Unix-socket server at channel.sock that hostd connects to."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conns: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        async def accept(reader, writer):
            await self.conns.put((reader, writer))
        self.server = await asyncio.start_unix_server(accept, path=self.path, limit=4 * M)

    async def next_conn(self, timeout_s: float = 10.0):
        reader, writer = await asyncio.wait_for(self.conns.get(), timeout_s)
        return Peer(reader, writer)

    async def stop(self) -> None:
        self.server.close()


class Peer:
    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, msg) -> None:
        self.writer.write(msg if isinstance(msg, bytes) else protocol.encode(msg))
        await self.writer.drain()

    async def recv(self, timeout_s: float = 10.0):
        line = await asyncio.wait_for(self.reader.readline(), timeout_s)
        return protocol.decode(line) if line else None

    async def recv_type(self, cls, timeout_s: float = 10.0, missing_ok: bool = False):
        """The next ``cls`` message (None at EOF); TimeoutError after ``timeout_s`` of silence,
        or None then if ``missing_ok`` (an observation: nothing came)."""
        while True:
            try:
                msg = await self.recv(timeout_s)
            except asyncio.TimeoutError:
                if missing_ok:
                    return None
                raise
            if msg is None or isinstance(msg, cls):
                return msg


@contextlib.asynccontextmanager
async def registered_vm(vm_dir: str, reclaim: str = "pfn", devices: tuple[str, ...] = (), **kw):
    """A ScratchVM as hostd finds one in ``vm_dir``: a QMP socket of hostd's own, ``vm.json`` as
    the launcher writes it, and a FakeGuest serving its channel. Yields ``(vm, guest)``."""
    extra = ("-qmp", f"unix:{vm_dir}/qmp-hostd.sock,server=on,wait=off", *devices)
    async with ScratchVM(RAM, vm_dir=vm_dir, extra_args=extra, **kw) as vm:
        await until(lambda: os.path.exists(os.path.join(vm_dir, "qmp-hostd.sock")), 10, what="QMP socket")
        await asyncio.to_thread(vm.save_vm_json, reclaim)
        guest = FakeGuest(os.path.join(vm_dir, "channel.sock"))
        await guest.start()
        yield vm, guest


async def control(sock: str, msg) -> protocol.Reply:
    return await asyncio.to_thread(transport.request, sock, msg)


async def policy_ticks(sock: str) -> int:
    return (await control(sock, protocol.PolicyExplainRequest(id=6))).body["ticks"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.mark.parametrize("engine", ["short", "batch"])
def test_hostd_with_fake_guest(tmp_path, caplog, engine):
    caplog.set_level(logging.INFO, logger="heapballoon")
    run_dir = str(tmp_path / "run")
    vm_dir = os.path.join(run_dir, "vms", "vm1")
    os.makedirs(vm_dir)
    sock = str(tmp_path / "hostd.sock")

    async def main():
        async with registered_vm(vm_dir) as (vm, guest):
            ram = GuestRam.open(vm.pid, RAM)
            base = (64 * M) // P
            os.pwrite(ram.fd, bytes(1024 * P), base * P)  # ram0 offset == gpa below 2 GiB
            os.pwrite(ram.fd, b"keep me", (base + 5) * P + 9)

            await vm.qmp.execute("cont")  # a running VM: hostd must stop/cont around punches
            port = _free_port()
            from prometheus_client import CollectorRegistry

            task = asyncio.create_task(hostd.serve(sock, run_dir, engine=engine, metrics=f"127.0.0.1:{port}",
                                                   metrics_registry=CollectorRegistry()))
            try:
                peer = await guest.next_conn()
                assert await peer.recv() == protocol.Ping(id=1)  # "re-announce yourself"
                assert await peer.recv() == protocol.GuestTarget(0)
                assert oct(os.stat(sock).st_mode & 0o777) == "0o600"

                # pages before hello are refused
                await peer.send(protocol.Pages(1, "add", ((base, 4),)))
                ack = await peer.recv_type(protocol.PagesAck)
                assert ack.rejected == 4 and "hello" in ack.error

                await peer.send(protocol.GuestHello(RAM, 4096, "boot-1"))
                assert await peer.recv() == protocol.GuestTarget(0)
                before = ram.resident_bytes()
                await peer.send(protocol.Pages(2, "add", ((base, 1024), (base, 10), (1 << 40, 1 << 20)), "42:1"))
                ack = await peer.recv_type(protocol.PagesAck)
                assert (ack.seq, ack.punched, ack.skipped_nonzero, ack.already, ack.error) == (2, 1023, 1, 0, "")
                assert ack.rejected == 10 + (1 << 20)
                assert ram.hole_bytes([(base * P, 1024 * P)]) == 1023 * P  # firmware runs too
                assert ram.resident_bytes() <= before - 1023 * P + 4 * M
                assert os.pread(ram.fd, 7, (base + 5) * P + 9) == b"keep me"

                # three reports sent back to back (each acked on its own, with its own counts),
                # then garbage right behind them: handled in order
                b2 = base + 2048
                os.pwrite(ram.fd, bytes(96 * P), b2 * P)
                os.pwrite(ram.fd, b"x", (b2 + 40) * P)
                for i in range(3):
                    await peer.send(protocol.Pages(10 + i, "add", ((b2 + 32 * i, 32),), f"42:{10 + i}"))
                await peer.send(b"not json either\n")
                acks = [await peer.recv_type(protocol.PagesAck) for _ in range(3)]
                assert [(a.seq, a.punched, a.skipped_nonzero) for a in acks] == [(10, 32, 0), (11, 31, 1), (12, 32, 0)]
                assert isinstance(await peer.recv(), protocol.Error)
                await peer.send(protocol.Pages(13, "remove", ((b2, 96),), "42:10"))
                assert (await peer.recv_type(protocol.PagesAck)).seq == 13

                # garbage, then a hostile but well-formed list: errors, no crash
                await peer.send(b"this is not json\n")
                assert isinstance(await peer.recv(), protocol.Error)
                await peer.send(b'{"v":1,"type":"pages","seq":3,"op":"add","ranges":[[1,-5]]}\n')
                assert isinstance(await peer.recv(), protocol.Error)
                await peer.send(b'{"v":1,"type":"pages","seq":3,"op":"add","ranges":' +
                                json.dumps([[i * 7, 3] for i in range(65537)]).encode() + b"}\n")
                assert isinstance(await peer.recv(), protocol.Error)
                # a guest_status whose JVM entry is not a JVM status is refused at the boundary
                await peer.send(b'{"v":1,"type":"guest_status","target_bytes":8,"balloon_bytes":4,"drift_pages":0,'
                                b'"jvms":[{"pid":42,"name":"app"}]}\n')
                assert isinstance(await peer.recv(), protocol.Error)
                await peer.send(protocol.GuestStatus(8 * M, 4 * M, 0, (GUEST_JVM,)))
                await peer.send(protocol.Pages(4, "remove", ((base + 1000, 24),), "42:1"))
                ack = await peer.recv_type(protocol.PagesAck)
                assert ack.seq == 4 and ack.rejected == 0

                # control socket
                reply = await control(sock, protocol.VMTarget("vm1", 64 * M, id=7))
                assert reply.id == 7
                assert await peer.recv_type(protocol.GuestTarget) == protocol.GuestTarget(64 * M)
                with pytest.raises(RemoteError, match="no VM named nope"):
                    await control(sock, protocol.VMTarget("nope", 1, id=8))
                status = (await control(sock, protocol.StatusRequest(id=9))).body
                (s,) = status["vms"]
                assert s["name"] == "vm1" and s["memory_bytes"] == RAM and s["target_bytes"] == 64 * M
                assert s["balloon_bytes"] == 1000 * P
                assert s["reclaimed_bytes"] == 999 * P and s["drift_pages"] == 1
                assert abs(s["host_resident_bytes"] - ram.resident_bytes()) < 4 * M
                assert s["pause_ms_p99"] > 0 and s["jvms"] == [GUEST_JVM.to_dict()]
                b = s["pause_breakdown_ms"]
                assert set(b) == {"stop", "check", "punch", "cont", "total", "guest"}
                if engine == "short":  # QEMU's STOP → RESUME timestamps: within hostd's own figure
                    assert 0 < b["guest"]["p50"] <= b["total"]["p50"] + 0.5
                else:  # the batch engine's asyncio QMP keeps no events
                    assert b["guest"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}
                for part in b.values():
                    assert set(part) == {"p50", "p99", "max"} and 0 <= part["p50"] <= part["p99"] <= part["max"]
                assert b["stop"]["p50"] > 0 and b["check"]["p50"] > 0 and b["punch"]["p50"] > 0
                assert b["total"]["max"] >= b["stop"]["max"] and b["total"]["p99"] == s["pause_ms_p99"]
                assert s["pauses"] >= 1 and s["pause_ms_per_gib"] > 0 and s["engine"] == engine
                text = await asyncio.to_thread(_scrape, port)
                assert f'heapballoon_vm_pause_part_ms{{part="punch",quantile="0.99",vm="vm1"}} {b["punch"]["p99"]}' in text
                assert f'heapballoon_vm_pauses_total{{vm="vm1"}} {float(s["pauses"])}' in text
                assert (await vm.qmp.execute("query-status"))["status"] == "running"

                # an oversized line drops the connection; hostd reconnects and resends the target
                await peer.send(b"x" * (protocol.MAX_LINE_BYTES + 10) + b"\n")
                assert await peer.recv_type(protocol.GuestTarget) is None  # EOF
                peer = await guest.next_conn()
                assert await peer.recv() == protocol.Ping(id=1)
                assert await peer.recv() == protocol.GuestTarget(64 * M)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

            # restart: the target survives in the run dir
            task = asyncio.create_task(hostd.serve(sock, run_dir, engine=engine))
            try:
                peer = await guest.next_conn()
                assert await peer.recv() == protocol.Ping(id=1)
                assert await peer.recv() == protocol.GuestTarget(64 * M)
                status = (await control(sock, protocol.StatusRequest(id=1))).body
                assert status["vms"][0]["target_bytes"] == 64 * M

                # QEMU dies: the VM goes away, hostd stays up
                vm.proc.kill()
                vm.proc.wait()
                status = (await control(sock, protocol.StatusRequest(id=2))).body
                assert status["vms"] == []
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                ram.close()
                await guest.stop()

    asyncio.run(main())
    assert any("punched" in r.getMessage() and "seq 2" in r.getMessage() for r in caplog.records)
    if engine == "short":  # the three reports queued together shared their pauses
        assert any("reports seq 10-12 reclaimed together" in r.getMessage() for r in caplog.records)


def test_vm_json_pid_of_another_process_is_ignored(tmp_path):
    """A well-formed vm.json (written through the VM-directory contract) naming a process that
    is not QEMU, and a junk one: hostd manages neither. Its control socket decodes the control
    channel only (issue 19): a guest's message there is a bad line, answered naming the channel;
    bad lines are counted as on every socket (transport.BadLines: 16 within 60 s drop the client)."""
    run_dir = tmp_path / "run"
    paths = VMPaths.of(run_dir, "x")
    paths.dir.mkdir(parents=True)
    VMDir(paths=paths, pid=os.getpid(), memory_bytes=RAM).save()
    (run_dir / "vms" / "junk").mkdir()
    (run_dir / "vms" / "junk" / "vm.json").write_text("{not json")  # garbage on purpose: no contract writes it
    sock = str(tmp_path / "h.sock")

    async def main():
        task = asyncio.create_task(hostd.serve(sock, str(run_dir)))
        try:
            await until(lambda: os.path.exists(sock), 5, what="hostd's control socket")
            status = (await control(sock, protocol.StatusRequest(id=1))).body
            assert status["vms"] == [] and status["policy"] == ""  # no --policy auto
            with pytest.raises(RemoteError, match="no VM named x"):
                await control(sock, protocol.VMTarget("x", 1))
            with pytest.raises(RemoteError, match="'guest_hello' does not belong on the control channel"):
                await control(sock, protocol.GuestHello(RAM))
            # bad lines, a valid request between each: still the 16th within a minute drops the client
            reader, writer = await asyncio.open_unix_connection(sock)
            for i in range(20):
                writer.write(b"junk\n" + protocol.encode(protocol.StatusRequest(id=i)))
            await writer.drain()
            replies = []
            while line := await asyncio.wait_for(reader.readline(), 10):
                replies.append(protocol.control.decode(line))
            assert [type(r).__name__ for r in replies] == ["Error", "Reply"] * 15 + ["Error"], replies
            writer.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_hostd_policy_auto_meets_a_budget_through_the_guest_channel(tmp_path, caplog):
    """``--policy auto`` with a fake guest on a real (paused) QEMU that has a virtio-balloon:
    the guest sends no balloon statistics, so only its JVM heap can give; hostd sends the
    heap target itself, a manual target pins the VM, ``auto`` unpins it, and status, metrics
    and ``policy explain`` say why."""
    caplog.set_level(logging.INFO, logger="heapballoon")
    run_dir = str(tmp_path / "run")
    vm_dir = os.path.join(run_dir, "vms", "vm1")
    os.makedirs(vm_dir)
    sock = str(tmp_path / "hostd.sock")

    async def main():
        balloon = ("-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on")
        async with registered_vm(vm_dir, devices=balloon) as (vm, guest):
            with GuestRam.open(vm.pid, RAM) as ram:  # 96 MiB of guest data, resident on the host
                os.pwrite(ram.fd, b"\x01" * (96 * M), 64 * M)
            port = _free_port()
            from prometheus_client import CollectorRegistry

            (tmp_path / "policy.toml").write_text("interval_s = 0.5\n")
            task = asyncio.create_task(hostd.serve(sock, run_dir, policy="auto", memory_budget_bytes=48 * M,
                                                   policy_file=str(tmp_path / "policy.toml"), metrics=f"127.0.0.1:{port}",
                                                   metrics_registry=CollectorRegistry()))
            try:
                peer = await guest.next_conn()
                await peer.send(protocol.GuestHello(RAM, 4096, "boot-1"))
                await peer.send(protocol.GuestStatus(0, 0, 0, (GUEST_JVM,)))
                # the policy finds the budget exceeded and asks the guest's JVMs for heap
                target = await peer.recv_type(protocol.GuestTarget)
                while target.target_bytes == 0:
                    target = await peer.recv_type(protocol.GuestTarget)
                assert 0 < target.target_bytes <= GUEST_JVM.balloon_max_bytes
                status = (await control(sock, protocol.StatusRequest(id=1))).body
                (s,) = status["vms"]
                assert status["policy"].startswith(("soft", "hard", "low")) and "budget 48.0 MiB" in status["policy"]
                assert s["policy_reason"] and not s["pinned"] and s["target_bytes"] == target.target_bytes
                assert s["virtio_actual_bytes"] == RAM and s["guest_free_bytes"] is None  # no statistics sent
                text = await asyncio.to_thread(_scrape, port)
                assert 'heapballoon_policy_budget_bytes 5.0331648e+07' in text
                assert 'heapballoon_policy_target_bytes{pinned="0",reason=' in text
                assert 'heapballoon_vm_host_resident_bytes{vm="vm1"}' in text

                # a manual target pins the VM; auto gives it back to the policy
                await control(sock, protocol.VMTarget("vm1", 8 * M, id=2))
                assert await peer.recv_type(protocol.GuestTarget) == protocol.GuestTarget(8 * M)
                # the next policy tick says so; then, observed over three more (0.5 s each), the
                # pin holds all along and the guest is sent no other target (fails at once if it is)
                deadline = time.monotonic() + 10
                while not (await control(sock, protocol.StatusRequest(id=3))).body["vms"][0]["policy_reason"] \
                        .startswith("pinned"):
                    assert time.monotonic() < deadline, "no policy tick saw the pin within 10 s"
                    await asyncio.sleep(0.1)
                ticks_then, deadline = await policy_ticks(sock), time.monotonic() + 10
                while (ticks := await policy_ticks(sock)) < ticks_then + 3:
                    assert time.monotonic() < deadline, f"the policy stopped ticking at {ticks}"
                    sent = await peer.recv_type(protocol.GuestTarget, timeout_s=0.1, missing_ok=True)
                    assert sent in (None, protocol.GuestTarget(8 * M)), f"the policy moved a pinned VM: {sent}"
                    s = (await control(sock, protocol.StatusRequest(id=3))).body["vms"][0]
                    assert s["pinned"] and s["target_bytes"] == 8 * M and s["policy_reason"].startswith("pinned")
                await control(sock, protocol.VMTarget("vm1", 0, id=4, auto=True))
                target = await peer.recv_type(protocol.GuestTarget)
                assert target.target_bytes > 8 * M
                report = (await control(sock, protocol.PolicyExplainRequest(id=5))).body
                assert report["mode"] == "auto" and "vm1" in report["text"]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await guest.stop()
            task = asyncio.create_task(hostd.serve(sock, run_dir))  # manual: "auto" is refused
            try:
                await until(lambda: os.path.exists(sock), 5, what="hostd's control socket")
                with pytest.raises(RemoteError, match="without --policy auto"):
                    await control(sock, protocol.VMTarget("vm1", 0, auto=True))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert any(r.getMessage().startswith("policy ") for r in caplog.records)


def test_a_virtio_vm_is_measured_from_the_host_and_never_paused(tmp_path):
    """A ``--reclaim virtio`` VM (issue 17's third way): its guest frees heap itself, so hostd
    refuses page numbers from it (nothing paused, nothing punched, its RAM untouched) and
    measures it from the host: the RSS of its RAM mapping, and the guest's freed heap believed
    only up to the guest RAM that is not resident."""
    run_dir = str(tmp_path / "run")
    vm_dir = os.path.join(run_dir, "vms", "vv")
    os.makedirs(vm_dir)
    sock = str(tmp_path / "hostd.sock")

    async def main():
        async with registered_vm(vm_dir, "virtio", firmware="halt") as (vm, guest):
            ram = GuestRam.open(vm.pid, RAM)
            base = (64 * M) // P
            os.pwrite(ram.fd, bytes(1024 * P), base * P)  # 4 MiB of zero pages, resident
            await vm.qmp.execute("cont")
            from prometheus_client import CollectorRegistry

            port = _free_port()
            task = asyncio.create_task(hostd.serve(sock, run_dir, metrics=f"127.0.0.1:{port}",
                                                   metrics_registry=CollectorRegistry()))
            try:
                peer = await guest.next_conn()
                await peer.send(protocol.GuestHello(RAM, 4096, "boot-1"))
                await peer.send(protocol.Pages(1, "add", ((base, 1024),), "42:1"))
                ack = await peer.recv_type(protocol.PagesAck)
                assert (ack.seq, ack.punched, ack.rejected) == (1, 0, 1024) and "virtio" in ack.error
                assert ram.hole_bytes([(base * P, 1024 * P)]) == 0  # nothing punched
                # the guest claims 200 MiB freed: believed up to what is not resident (QEMU's
                # mapping of this idle VM's RAM holds next to nothing: the pages above were
                # written through the file, not the mapping)
                await peer.send(protocol.GuestStatus(8 * M, 200 * M, 0, (GUEST_JVM,)))
                s = await hostd_vm(sock, lambda v: v["guest_balloon_bytes"] == 200 * M)
                assert s["reclaim"] == "virtio" and s["pauses"] == 0 and s["balloon_bytes"] == 0
                assert s["host_resident_bytes"] is not None and s["host_resident_bytes"] <= RAM - 200 * M, s
                assert s["reclaimed_bytes"] == 200 * M
                await peer.send(protocol.GuestStatus(8 * M, 2 * RAM, 0, (GUEST_JVM,)))  # more than it has
                s = await hostd_vm(sock, lambda v: v["guest_balloon_bytes"] == 2 * RAM)
                assert s["reclaimed_bytes"] <= RAM - s["host_resident_bytes"], s
                # the metrics' cheap view measures it too (it read nothing for a VM without a RAM memfd)
                text = await asyncio.to_thread(_scrape, port)
                line = next((x for x in text.splitlines() if x.startswith('heapballoon_vm_host_resident_bytes{vm="vv"}')),
                            None)
                assert line is not None and 0 <= float(line.split()[-1]) <= RAM, text[-2000:]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await guest.stop()

    asyncio.run(main())


async def hostd_vm(sock: str, pred, timeout_s: float = 10.0) -> dict:
    """VM ``vv`` in hostd's status, once ``pred`` holds for it (bounded polling)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = (await control(sock, protocol.StatusRequest(id=3))).body
        v = next((v for v in body["vms"] if v["name"] == "vv"), None)
        if v is not None and pred(v):
            return v
        assert time.monotonic() < deadline, v
        await asyncio.sleep(0.1)
