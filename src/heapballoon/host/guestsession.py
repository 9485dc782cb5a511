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
from dataclasses import replace

from heapballoon import protocol, transport
from heapballoon.errors import HeapballoonError, KernelError, MessageTooLarge, PeerStalled, ProtocolError
from heapballoon.host import vmreclaim
from heapballoon.host.guestlimits import RECONNECT_AFTER_FAULT_S, GuestGuard
from heapballoon.transport import BAD_LINES_WINDOW_S, MAX_BAD_LINES
from heapballoon.units import PAGE_BYTES
from heapballoon.host.vmreclaim import MAX_BALLOON_INTERVALS
from heapballoon.host.vmsession import VMSession
from heapballoon.textsafe import log_text

log = logging.getLogger("heapballoon.hostd")

RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 5.0
KSM_BOOST_S = 30.0
COALESCE_MAX_REPORTS = 16  # pages reports reclaimed together at most (the guest sends ≤ 8 MiB each)
COALESCE_WAIT_S = 0.002  # how long to wait for one more queued report
EDIT_SLICE = 2048  # balloon edits (~5 µs each) between two yields to the event loop
VIRTIO_NO_PAGES = "this VM reclaims through virtio-balloon (--reclaim virtio): the host takes no page numbers"
RECLAIM_FAILED = "reclaim failed on the host (hostd's log has the details)"  # what a guest is told


class GuestChannel(transport.LineChannel):
    """A guest channel with its own target sender: :meth:`want_target` only marks the VM's
    target as due, and the channel's sender task sends the latest one. Nobody else ever waits
    on a guest that does not read (the sender gives up after the transport's send timeout and
    aborts the channel)."""

    def __init__(self, reader, writer) -> None:
        super().__init__(reader, writer, protocol.guest.decode)
        self.target_due = asyncio.Event()
        self.stalled = False
        self.bytes_in = self.bytes_paid = 0  # line bytes received; those charged to the guest's budget

    async def recv_line(self) -> bytes | None:
        line = await super().recv_line()
        self.bytes_in += len(line or b"") + 1
        return line

    def want_target(self) -> None:
        self.target_due.set()


class GuestSessions:
    """The guest-channel half of HostDaemon (uses its ``table``, ``engine``, ``_guards`` ...)."""

    def _guard(self, vm: VMSession) -> GuestGuard:
        guard = self._guards.get(vm.name)
        if guard is None:
            guard = self._guards[vm.name] = GuestGuard(vm.name)
        vm.balloon.max_intervals = MAX_BALLOON_INTERVALS  # removes too: accounting never grows past it
        return guard

    async def _channel_loop(self, vm: VMSession) -> None:
        delay = RECONNECT_MIN_S
        guard = self._guard(vm)
        while vm.alive():
            try:
                reader, writer = await asyncio.open_unix_connection(vm.channel_path, limit=transport.STREAM_LIMIT)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            ch = vm.channel = GuestChannel(reader, writer)
            guard.note("connected", "guest channel connected", level=logging.INFO)
            sender = asyncio.get_running_loop().create_task(self._target_sender(vm, ch, guard),
                                                            name=f"target-{vm.name}")
            faulted = False
            try:
                # The guest cannot see us connect: a ping makes it re-announce itself and resend
                # its whole balloon (what is already a hole is answered as "already").
                await ch.send(protocol.Ping(id=1))
                ch.want_target()
                faulted = await self._serve_guest(vm, ch, guard)
            except PeerStalled as err:
                ch.stalled = True
                guard.note("stalled", "%s", err)
            except (OSError, ConnectionError) as err:
                guard.note("lost", "guest channel lost: %s", err, level=logging.INFO)
            except Exception:  # noqa: BLE001 - one VM's trouble must not end hostd
                log.exception("VM %s: guest channel handler failed", vm.name)
            finally:
                sender.cancel()
                ch.close()
                if vm.channel is ch:
                    vm.channel = None
            faulted = faulted or ch.stalled
            guard.faults += faulted
            await asyncio.sleep(RECONNECT_AFTER_FAULT_S if faulted else RECONNECT_MIN_S)

    async def _target_sender(self, vm: VMSession, ch: GuestChannel, guard: GuestGuard) -> None:
        """Send the VM's current target whenever it is due; a guest that stops reading is
        dropped (the transport aborts the channel, which ends its session)."""
        while True:
            await ch.target_due.wait()
            ch.target_due.clear()
            try:
                await ch.send(protocol.GuestTarget(vm.target_bytes))
            except PeerStalled as err:
                ch.stalled = True
                guard.note("stalled", "%s", err)
                return
            except (OSError, ConnectionError):
                return

    def _coalesces(self, vm: VMSession, msg) -> bool:
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

    async def _within_budget(self, vm: VMSession, guard: GuestGuard, ch: transport.LineChannel,
                             msgs: list[protocol.Pages]) -> None:
        """Charge what the guest sent since the last charge (bytes; and of ``pages`` messages,
        ranges and pages to verify) to its budgets and wait until they are paid: a guest over
        its budget is not read meanwhile (docs/protocol.md, Limits)."""
        wait_s = guard.ranges.charge(sum(len(m.ranges) for m in msgs)) if msgs else 0.0
        if isinstance(ch, GuestChannel):
            wait_s = max(wait_s, guard.bytes_in.charge(ch.bytes_in - ch.bytes_paid))
            ch.bytes_paid = ch.bytes_in
        if vm.reclaim == "pfn" and vm.hello is not None:
            ram_pages = vm.memory_bytes // PAGE_BYTES
            pages = sum(min(ram_pages, sum(c for _, c in m.ranges)) for m in msgs if m.op == "add")
            if pages:
                wait_s = max(wait_s, guard.add_pages.charge(pages))
        if wait_s > 0:
            guard.note("budget", "guest over its budget; not read for %.2f s", wait_s, level=logging.INFO)
            await asyncio.sleep(wait_s)

    async def _serve_guest(self, vm: VMSession, ch: transport.LineChannel, guard: GuestGuard | None = None) -> bool:
        """Serve one connection until EOF; True when it was dropped for a fault."""
        guard = guard or self._guard(vm)
        pushback: list = []
        while True:
            msg = pushback.pop() if pushback else await self._recv_or_error(ch)
            if self._coalesces(vm, msg):
                # reports already queued behind this one share its pauses (fewer, fuller pauses)
                batch = [msg]
                ranges = len(msg.ranges)
                while len(batch) < COALESCE_MAX_REPORTS and ranges < protocol.MAX_RANGES:
                    try:
                        nxt = await self._recv_or_error(ch, COALESCE_WAIT_S)
                    except asyncio.TimeoutError:
                        break
                    if not self._coalesces(vm, nxt):
                        pushback.append(nxt)
                        break
                    batch.append(nxt)
                    ranges += len(nxt.ranges)
                await self._within_budget(vm, guard, ch, batch)
                for ack in await self._pages_add_many(vm, batch, guard):
                    await ch.send(ack)
                continue
            await self._within_budget(vm, guard, ch, [msg] if isinstance(msg, protocol.Pages) else [])
            if isinstance(msg, MessageTooLarge):
                guard.note("too_large", "%s; dropping the guest connection", msg)
                return True
            if isinstance(msg, ProtocolError):
                guard.note("bad_line", "bad guest message (%s): %s", log_text(msg), log_text(msg.raw))
                await ch.send(protocol.Error(str(msg)))
                if guard.bad_line():
                    guard.note("bad_lines", "%d bad lines within %.0f s; dropping the guest connection",
                               MAX_BAD_LINES, BAD_LINES_WINDOW_S)
                    return True
                continue
            if msg is None:
                guard.note("closed", "guest channel closed", level=logging.INFO)
                return False
            reply = await self._guest_message(vm, msg)
            if reply is not None:
                await ch.send(reply)

    async def _guest_message(self, vm: VMSession, msg: protocol.Message) -> protocol.Message | None:
        if isinstance(msg, protocol.GuestHello):
            if msg.page_bytes != PAGE_BYTES:
                return protocol.Error(f"page_bytes {msg.page_bytes} unsupported (hostd handles {PAGE_BYTES})")
            if vm.hello is None or msg.boot_id != vm.hello.boot_id or not msg.boot_id:
                if vm.hello is not None:
                    log.info("VM %s: a new guest boot (boot_id %s): forgetting the old balloon's %d pages",
                             vm.name, log_text(msg.boot_id or "none"), vm.balloon.pages)
                vm.balloon.clear()  # a new boot: the old balloon's pages mean nothing now
                vm.layout = None  # and re-read the memory map
            if msg.guest_ram_bytes != vm.memory_bytes:
                log.info("VM %s: guest sees %d bytes of RAM, QEMU was given %d",
                         vm.name, msg.guest_ram_bytes, vm.memory_bytes)
            vm.hello = msg
            self.table.want_target(vm)
            return None
        if isinstance(msg, protocol.GuestStatus):
            vm.set_guest_status(msg)
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

    async def _pages_add(self, vm: VMSession, msg: protocol.Pages) -> protocol.PagesAck:
        if vm.reclaim == "virtio":  # its guest frees pages itself: nothing is paused or punched
            return protocol.PagesAck(msg.seq, rejected=sum(c for _, c in msg.ranges), error=VIRTIO_NO_PAGES)
        if vm.reclaim == "ksm":
            self._boost_ksm()
            return protocol.PagesAck(msg.seq)  # pages stay mapped for KSM to merge
        return (await self._pages_add_many(vm, [msg]))[0]

    async def _pages_add_many(self, vm: VMSession, msgs: list[protocol.Pages],
                              guard: GuestGuard | None = None) -> list[protocol.PagesAck]:
        """Reclaim one or more ``add`` reports (several only with the short engine: they share
        pauses), one ack per report with its own counts. The work runs on the VM's own worker
        thread. A failure's details go to the log; the guest is told only that it failed."""
        guard = guard or self._guard(vm)
        async with vm.lock:
            try:
                if self.engine == "short":
                    extents_list, results = await asyncio.get_running_loop().run_in_executor(
                        guard.executor, vmreclaim.reclaim_short, vm, [m.ranges for m in msgs], self.pause_budget_ms)
                else:
                    extents_list, results = [], []
                    for m in msgs:
                        extents, res = await vmreclaim.reclaim_batch(vm, m.ranges, self.batch_pages)
                        extents_list.append(extents)
                        results.append(res)
                await self._balloon_edit(vm.balloon.add, [e for extents in extents_list for e in extents])
            except (HeapballoonError, OSError) as err:
                for m in msgs:
                    log.warning("VM %s: pages seq %d (%d pages) not reclaimed: %s", vm.name, m.seq,
                                sum(c for _, c in m.ranges), err)
                if not vm.alive():
                    self.table.drop(vm, "its QEMU exited during a reclaim")
                return [protocol.PagesAck(m.seq, error=RECLAIM_FAILED) for m in msgs]
        if len(msgs) > 1:
            log.info("VM %s: reports seq %d-%d reclaimed together", vm.name, msgs[0].seq, msgs[-1].seq)
        acks = [vmreclaim.account(vm, m, r) for m, r in zip(msgs, results)]  # logs the details
        if any(r.error for r in results) and not vm.alive():
            self.table.drop(vm, "its QEMU exited during a reclaim")
        return [replace(a, error=RECLAIM_FAILED) if a.error else a for a in acks]

    async def _pages_remove(self, vm: VMSession, msg: protocol.Pages) -> protocol.PagesAck:
        """Accounting only, in slices with the event loop's other work in between; past the
        balloon's interval cap a split forgets its smaller piece (pageset.py says why that is safe)."""
        if vm.layout is None:
            return protocol.PagesAck(msg.seq, rejected=sum(c for _, c in msg.ranges))
        guard = self._guard(vm)
        layout = vm.layout
        extents, rejected = await asyncio.get_running_loop().run_in_executor(
            guard.executor, layout.ranges_to_offsets, msg.ranges)
        forgotten = vm.balloon.forgotten_pages
        removed = await self._balloon_edit(vm.balloon.remove, extents)
        if vm.balloon.forgotten_pages > forgotten:
            guard.note("fragmented", "balloon at its cap of %d intervals: %d pages forgotten by hostd's "
                       "accounting (guest RAM untouched)", MAX_BALLOON_INTERVALS,
                       vm.balloon.forgotten_pages - forgotten)
        log.debug("VM %s: pages seq %d key %s: guest took back %d pages (%d were in the balloon, %d rejected)",
                  vm.name, msg.seq, log_text(msg.key or "-"), sum(c for _, c in msg.ranges), removed, rejected)
        return protocol.PagesAck(msg.seq, rejected=rejected)

    @staticmethod
    async def _balloon_edit(edit, extents: list[tuple[int, int]]) -> int:
        """``edit`` (the balloon's add or remove) of each extent, EDIT_SLICE at a time with
        the event loop's other work in between; the sum of what the edits returned."""
        total = 0
        for k in range(0, len(extents), EDIT_SLICE):
            if k:
                await asyncio.sleep(0)  # other VMs' work runs between slices
            for off, length in extents[k:k + EDIT_SLICE]:
                total += edit(off // PAGE_BYTES, length // PAGE_BYTES)
        return total

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
