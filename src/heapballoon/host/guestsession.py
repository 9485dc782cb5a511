"""hostd's guest sessions: the virtio-serial channel to each VM's guest driver.

This module owns one VM's conversation with its guest (docs/protocol.md, guest driver ↔
hostd): connecting with backoff, the ping/hello/target handshake, and the ``pages`` reports
— reclaimed through vmreclaim (several queued reports share pauses with the short engine) and
acknowledged one by one — plus the KSM boost for VMs left to KSM. It is a mixin of
:class:`heapballoon.host.hostd.HostDaemon`, whose event loop owns every VM it touches.
"""

from __future__ import annotations

import asyncio
import logging
import time

from heapballoon import protocol, transport
from heapballoon.errors import HeapballoonError, KernelError, MessageTooLarge, ProtocolError
from heapballoon.host import vmreclaim
from heapballoon.host.guestram import PAGE_BYTES
from heapballoon.host.vmregistry import VM

log = logging.getLogger("heapballoon.hostd")

MAX_BAD_LINES = 16
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 5.0
KSM_BOOST_S = 30.0
COALESCE_MAX_REPORTS = 16  # pages reports reclaimed together at most (the guest sends ≤ 8 MiB each)
COALESCE_WAIT_S = 0.002  # how long to wait for one more queued report


class GuestSessions:
    """The guest-channel half of HostDaemon (uses its ``vms``, ``engine``, ``_drop`` ...)."""

    async def _channel_loop(self, vm: VM) -> None:
        delay = RECONNECT_MIN_S
        while vm.alive():
            try:
                reader, writer = await asyncio.open_unix_connection(vm.channel_path, limit=transport.STREAM_LIMIT)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            vm.channel = transport.LineChannel(reader, writer)
            log.info("VM %s: guest channel connected", vm.name)
            try:
                # The guest cannot see us connect: a ping makes it re-announce itself and resend
                # its whole balloon (what is already a hole is answered as "already").
                await vm.channel.send(protocol.Ping(id=1))
                await self._send_target(vm)
                await self._serve_guest(vm, vm.channel)
            except (OSError, ConnectionError) as err:
                log.info("VM %s: guest channel lost: %s", vm.name, err)
            except Exception:  # noqa: BLE001 - one VM's trouble must not end hostd
                log.exception("VM %s: guest channel handler failed", vm.name)
            finally:
                vm.channel.close()
                vm.channel = None
            await asyncio.sleep(RECONNECT_MIN_S)

    def _coalesces(self, vm: VM, msg) -> bool:
        """A report the short engine may merge with the reports queued right behind it."""
        return (self.engine == "short" and vm.reclaim == "pfn" and vm.hello is not None
                and isinstance(msg, protocol.Pages) and msg.op == "add")

    async def _recv_or_error(self, ch: transport.LineChannel, timeout_s: float | None = None):
        """Next message, None at EOF, or the ProtocolError it raised (as a value);
        asyncio.TimeoutError if ``timeout_s`` passes first (nothing is lost: a line is only
        taken from the stream once complete)."""
        try:
            if timeout_s is None:
                return await ch.recv()
            return await asyncio.wait_for(ch.recv(), timeout_s)
        except ProtocolError as err:
            return err

    async def _serve_guest(self, vm: VM, ch: transport.LineChannel) -> None:
        bad = 0
        pushback: list = []
        while True:
            msg = pushback.pop() if pushback else await self._recv_or_error(ch)
            if self._coalesces(vm, msg):
                # reports already queued behind this one share its pauses (fewer, fuller pauses)
                batch = [msg]
                while len(batch) < COALESCE_MAX_REPORTS:
                    try:
                        nxt = await self._recv_or_error(ch, COALESCE_WAIT_S)
                    except asyncio.TimeoutError:
                        break
                    if not self._coalesces(vm, nxt):
                        pushback.append(nxt)
                        break
                    batch.append(nxt)
                bad = 0
                for ack in await self._pages_add_many(vm, batch):
                    await ch.send(ack)
                continue
            try:
                if isinstance(msg, ProtocolError):
                    raise msg
            except MessageTooLarge as err:
                log.warning("VM %s: %s; dropping the guest connection", vm.name, err)
                return
            except ProtocolError as err:
                bad += 1
                log.warning("VM %s: bad guest message (%s): %r", vm.name, err, err.raw)
                await ch.send(protocol.Error(str(err)))
                if bad >= MAX_BAD_LINES:
                    log.warning("VM %s: %d bad lines in a row; dropping the guest connection", vm.name, bad)
                    return
                continue
            if msg is None:
                log.info("VM %s: guest channel closed", vm.name)
                return
            bad = 0
            reply = await self._guest_message(vm, msg)
            if reply is not None:
                await ch.send(reply)

    async def _guest_message(self, vm: VM, msg: protocol.Message) -> protocol.Message | None:
        if isinstance(msg, protocol.GuestHello):
            if msg.page_bytes != PAGE_BYTES:
                return protocol.Error(f"page_bytes {msg.page_bytes} unsupported (hostd handles {PAGE_BYTES})")
            if vm.hello is None or msg.boot_id != vm.hello.boot_id or not msg.boot_id:
                if vm.hello is not None:
                    log.info("VM %s: a new guest boot (boot_id %s): forgetting the old balloon's %d pages",
                             vm.name, msg.boot_id or "none", len(vm.balloon))
                vm.balloon.clear()  # a new boot: the old balloon's pages mean nothing now
                vm.layout = None  # and re-read the memory map
            if msg.guest_ram_bytes != vm.memory_bytes:
                log.info("VM %s: guest sees %d bytes of RAM, QEMU was given %d",
                         vm.name, msg.guest_ram_bytes, vm.memory_bytes)
            vm.hello = msg
            await self._send_target(vm)
            return None
        if isinstance(msg, protocol.GuestStatus):
            vm.guest_status = msg
            return None
        if isinstance(msg, protocol.Pong):
            return None
        if isinstance(msg, protocol.Pages):
            if vm.hello is None:
                return protocol.PagesAck(msg.seq, rejected=sum(c for _, c in msg.ranges),
                                         error="guest_hello must come first")
            if msg.op == "remove":
                return await self._pages_remove(vm, msg)
            return await self._pages_add(vm, msg)
        return protocol.Error(f"unexpected message {msg.TYPE!r} on the guest channel")

    async def _pages_add(self, vm: VM, msg: protocol.Pages) -> protocol.PagesAck:
        if vm.reclaim == "ksm":
            self._boost_ksm()
            return protocol.PagesAck(msg.seq)  # pages stay mapped for KSM to merge
        return (await self._pages_add_many(vm, [msg]))[0]

    async def _pages_add_many(self, vm: VM, msgs: list[protocol.Pages]) -> list[protocol.PagesAck]:
        """Reclaim one or more ``add`` reports (several only with the short engine: they share
        pauses), one ack per report with its own counts."""
        async with vm.lock:
            try:
                if self.engine == "short":
                    extents_list, results = await asyncio.to_thread(
                        vmreclaim.reclaim_short, vm, [m.ranges for m in msgs], self.pause_budget_ms)
                else:
                    extents_list, results = [], []
                    for m in msgs:
                        extents, res = await vmreclaim.reclaim_batch(vm, m.ranges, self.batch_pages)
                        extents_list.append(extents)
                        results.append(res)
                for extents in extents_list:
                    for off, length in extents:
                        vm.balloon.add(off // PAGE_BYTES, length // PAGE_BYTES)
            except (HeapballoonError, OSError) as err:
                for m in msgs:
                    log.warning("VM %s: pages seq %d (%d pages) not reclaimed: %s", vm.name, m.seq,
                                sum(c for _, c in m.ranges), err)
                if not vm.alive():
                    self._drop(vm, "its QEMU exited during a reclaim")
                return [protocol.PagesAck(m.seq, error=str(err)[:1000]) for m in msgs]
        if len(msgs) > 1:
            log.info("VM %s: reports seq %d-%d reclaimed together", vm.name, msgs[0].seq, msgs[-1].seq)
        acks = [vmreclaim.account(vm, m, r) for m, r in zip(msgs, results)]
        if any(r.error for r in results) and not vm.alive():
            self._drop(vm, "its QEMU exited during a reclaim")
        return acks

    async def _pages_remove(self, vm: VM, msg: protocol.Pages) -> protocol.PagesAck:
        if vm.layout is None:
            return protocol.PagesAck(msg.seq, rejected=sum(c for _, c in msg.ranges))
        extents, rejected = vm.layout.ranges_to_offsets(msg.ranges)
        removed = 0
        for off, length in extents:
            removed += vm.balloon.remove(off // PAGE_BYTES, length // PAGE_BYTES)
        log.info("VM %s: pages seq %d key %s: guest took back %d pages (%d were in the balloon, %d rejected)",
                 vm.name, msg.seq, msg.key or "-", sum(c for _, c in msg.ranges), removed, rejected)
        return protocol.PagesAck(msg.seq, rejected=rejected)

    def _boost_ksm(self) -> None:
        """A ksm VM reported balloon pages: KSM on and boosted (the one KSM controller, taken
        over lazily so a host without ksm VMs keeps its settings) for KSM_BOOST_S."""
        self._ksm_until = time.monotonic() + KSM_BOOST_S
        try:
            if not self._ksm.active and not self._ksm.setup():
                log.info("KSM untouched: %s", self._ksm.reason)
                return
            self._ksm.tick(1)
        except KernelError as err:
            log.warning("KSM boost failed: %s", err)
