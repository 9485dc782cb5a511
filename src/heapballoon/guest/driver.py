"""The guest balloon driver (VM mode): the node driver's parts plus an uplink to the host's hostd.

Runs inside the guest (pure standard library: the guest has no PyPI packages). Two ways:

* ``--reclaim direct`` (the default when the VM has no ``org.heapballoon.0`` port: a stock host,
  issue 17): agents free their balloons' pages themselves (``madvise``, as in process mode), a
  guest-local law (:mod:`heapballoon.guest.locallaw`) sets the node target from MemAvailable and
  PSI, and the host's own virtio-balloon or free page reporting takes the freed pages. The
  driver may lower ``page_reporting_order`` (``--report-order``) so single freed 4 KiB pages
  are reported too. An uplink, if there is one, only carries status.
* ``--reclaim report`` (hostd's pfn and ksm ways): the process mode's parts, composed by a
  :class:`~heapballoon.driver.daemon.Driver` (not subclassed), with three differences:
* the node target comes from the host (``guest_target`` on the virtio-serial port), not from
  a CLI;
* agents are told ``reclaim: report``: balloon pages stay zeroed and mapped in the guest;
* after each verification it translates every chunk's pages to *guest physical* frame numbers
  (the guest's /proc/PID/pagemap) and reports changes to the host as compact ranges — ``add``
  for new frames, ``remove`` for frames a chunk no longer owns (deflate, or drift: a GC moved
  the array or the guest kernel migrated a page). The host reclaims what it is told to add,
  after checking each page is zero.

The port is a character device (/dev/vportNpM). Host connects and disconnects are invisible
to the guest, so the guest re-announces itself (``guest_hello`` and a full resync) whenever
hostd pings it, and repeats its hello until the host answers.

Threads: the event loop thread owns every piece of mutable state of :class:`GuestDriver` and
of its parts (see the comments where it is declared). Reading pagemap is the only work done in a worker thread,
by :func:`read_frames`, a pure function that takes a snapshot of the chunks and returns what it
read; the loop thread then applies the result. :class:`Uplink`'s reader and writer threads own
only the port's file descriptor and their buffers, and hand lines to the loop with
``call_soon_threadsafe`` or take them from a thread-safe queue.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass

from heapballoon import protocol
from heapballoon.driver.daemon import Driver
from heapballoon.driver.registry import JVMRecord
from heapballoon.driver.verify import MAX_VERIFY_PAGES_PER_TICK, chunk_frames
from heapballoon.errors import KernelError, ProtocolError
from heapballoon.guest.direct import LocalPolicy, add_direct_arguments, law_from_arguments
from heapballoon.guest.locallaw import LocalLaw
from heapballoon.linux import pagemap
from heapballoon.guest.uplink import Uplink
from heapballoon.linux.pagereporting import PageReporting
from heapballoon.linux.procfs import ProcFS
from heapballoon.linux.virtio import VirtioPorts

log = logging.getLogger("heapballoon.guest")
DRIFT_RESCAN_S = 10.0
HELLO_RETRY_S = 2.0


@dataclass(frozen=True)
class ScanPlan:
    """What to read for one JVM, decided on the loop thread from a snapshot of its chunks."""

    pid: int
    starttime: int
    epoch: int
    keys: frozenset[str]                          # every "pid:chunk" the JVM has now
    jobs: tuple[tuple[str, protocol.Chunk], ...]  # the chunks to read: (key, chunk)
    rescan: bool
    now_s: float


@dataclass(frozen=True)
class FrameScan:
    """One chunk's guest frames as read from pagemap (``frames`` None: unreadable now)."""

    key: str
    addr: int
    frames: frozenset[int] | None


def read_frames(procfs: ProcFS, pid: int, jobs: tuple[tuple[str, protocol.Chunk], ...], starttime: int | None = None,
                budget_pages: int = MAX_VERIFY_PAGES_PER_TICK) -> tuple[FrameScan, ...]:
    """Guest frames behind each chunk of ``jobs``, inside the process's heap mappings only, at
    most ``budget_pages`` pages (the chunks past it read as unreadable now: next time). Pure:
    reads pagemap, touches no driver state, so it is what runs in a worker thread. Nothing counts
    unless ``pid`` is still the process started at ``starttime``."""
    try:
        heap = pagemap.heap_ranges(procfs, pid)
    except KernelError:
        return tuple(FrameScan(key, chunk.addr, None) for key, chunk in jobs)
    out = []
    left = budget_pages
    for key, chunk in jobs:
        frames: frozenset[int] | None = None
        if left > 0:
            try:
                read = chunk_frames(procfs, pid, chunk, heap)
                left -= len(read)
                frames = frozenset(f for f in read if f)
            except KernelError:
                frames = None
        out.append(FrameScan(key, chunk.addr, frames))
    try:
        same = starttime is None or procfs.starttime(pid) == starttime
    except KernelError:
        same = False
    if not same:  # the pid is another process now: what was read is not the JVM's
        return tuple(FrameScan(key, chunk.addr, None) for key, chunk in jobs)
    return tuple(out)


def read_plans(procfs: ProcFS, plans: tuple[ScanPlan, ...]) -> tuple:
    """Each plan's FrameScans, or the exception its reading raised (that agent alone is dropped)."""
    out = []
    for p in plans:
        try:
            out.append(read_frames(procfs, p.pid, p.jobs, p.starttime))
        except Exception as err:  # noqa: BLE001 - one agent's failure (MemoryError ...) is its own
            out.append(err)
    return tuple(out)


class GuestDriver:
    """The guest driver: a composed :class:`~heapballoon.driver.daemon.Driver` (JVM table,
    targets, agent server, ticker), the local policy (``local``, the direct way), the uplink to
    hostd and the host report. Every attribute below is owned by the event loop thread; the
    report state (``reported`` ... ``drift_pages_total``) is this class's own."""

    GUEST_RESERVE_BYTES = 96 << 20

    def __init__(self, socket_path: str, uplink_path: str | None, reclaim: str = "report",
                 law: LocalLaw | None = None, report_order: int | None = None,
                 page_reporting: PageReporting | None = None, procfs: ProcFS | None = None, **kw) -> None:
        self.procfs = procfs or ProcFS()
        # direct: the agents free balloon pages themselves, counted through pagemap as in
        # process mode; nothing is reported to a host. Otherwise nothing is counted through
        # pagemap here: balloon pages stay mapped and the host reclaims them, so the figure is
        # what the host acknowledged, set by report_to_host.
        self.direct = reclaim == "direct"
        self.local = LocalPolicy(law, self.procfs, report_order, page_reporting)
        self.node = Driver(socket_path, procfs=self.procfs, ksm_mode="off", reclaim=reclaim,
                           verify_pagemap=self.direct, node_target=self.node_target, room_bytes=self.room_bytes,
                           **kw)
        self.registry = self.node.registry
        self.clock = self.node.clock
        self.uplink_path = uplink_path
        self.uplink: Uplink | None = None
        self.reported: dict[str, frozenset[int]] = {}  # "pid:chunk" → guest frames the host was told
        self.reported_addr: dict[str, int] = {}   # "pid:chunk" → chunk address when last reported
        self.acked_pages: dict[str, int] = {}      # "pid:chunk" → pages the host holds reclaimed
        self.pending: dict[int, str] = {}          # seq → key
        self.seq = 0
        self.host_target_seen = False
        self.last_hello_s = 0.0
        self.last_rescan_s: dict[int, float] = {}  # pid → clock() of its last full re-read
        self.drift_pages_total = 0
        self.guest_ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    # ------------------------------------------------------------------ policy

    def node_target(self) -> int | None:
        """The node target the ticker splits: set by hand or by hostd, raised by the local law."""
        return self.local.node_target(self.node.book.node_target_bytes)

    def room_bytes(self, rec: JVMRecord) -> int:
        """In a guest, balloon pages stay allocated (the host frees them behind the guest's back):
        a heap that grows to hold the balloon costs guest memory. So past the committed heap's
        excess, a balloon may only grow into what the guest has available, less a reserve.
        On the direct path the guest frees them itself: as in process mode."""
        if self.direct:
            return rec.balloon_max_bytes
        try:
            available = self.procfs.meminfo().get("MemAvailable", 0)
        except KernelError:
            available = 0
        spare = max(0, available - self.GUEST_RESERVE_BYTES)
        return min(rec.balloon_max_bytes, rec.excess_bytes + spare)

    def apply_law(self) -> None:
        """One step of the local law; a moved node target wakes the ticker."""
        if self.local.apply_law(self.registry):
            self.node.wake()

    def drop_agent(self, pid: int, why: str) -> None:
        self.node.server.drop_agent(pid, why)

    # ------------------------------------------------------------------ host link

    def _send_up(self, msg: protocol.Message) -> None:
        if self.uplink is None:
            return
        try:
            self.uplink.send(msg)
        except OSError as err:
            log.warning("uplink write failed: %s", err)

    def _hello_up(self) -> None:
        self.last_hello_s = self.clock()
        self._send_up(protocol.GuestHello(guest_ram_bytes=self.guest_ram_bytes, page_bytes=pagemap.PAGE_SIZE,
                                          boot_id=_boot_id(self.procfs)))

    def _on_host_line(self, line: bytes) -> None:
        try:
            msg = protocol.guest.decode(line)
        except ProtocolError as err:
            log.warning("rejected message from the host: %s", err)
            return
        if isinstance(msg, protocol.GuestTarget):
            self.host_target_seen = True
            if msg.target_bytes != self.node.book.node_target_bytes:
                log.info("host target: %d bytes", msg.target_bytes)
            self.node.book.node_target_bytes = msg.target_bytes
            self.node.wake()
        elif isinstance(msg, protocol.Ping):
            self._send_up(protocol.Pong(id=msg.id))
            self._hello_up()
            self.reported.clear()  # a (new) hostd: report every page again
            self.reported_addr.clear()
            self.acked_pages.clear()
            self.node.wake()
        elif isinstance(msg, protocol.PagesAck):
            key = self.pending.pop(msg.seq, None)
            if key is not None:
                owned = len(self.reported.get(key, ()))  # a re-report must not count twice
                self.acked_pages[key] = min(owned, self.acked_pages.get(key, 0) + msg.punched + msg.already)
            if msg.skipped_nonzero or msg.rejected or msg.error:
                log.warning("host ack %d: punched=%d already=%d nonzero=%d rejected=%d %s", msg.seq, msg.punched,
                            msg.already, msg.skipped_nonzero, msg.rejected, msg.error)

    def _pages(self, op: str, key: str, frames: set[int]) -> None:
        ranges = pagemap.compact_ranges(frames)
        for i in range(0, len(ranges), protocol.MAX_RANGES):
            self.seq += 1
            if op == "add":
                self.pending[self.seq] = key
            self._send_up(protocol.Pages(seq=self.seq, op=op, ranges=tuple(ranges[i:i + protocol.MAX_RANGES]), key=key))

    # ------------------------------------------------------------------ host report

    def _plan(self, rec: JVMRecord) -> ScanPlan:
        """Which chunks of ``rec`` to read now (loop thread: reads the report state)."""
        now = self.clock()
        epoch = rec.state.chunks_epoch
        rescan = now - self.last_rescan_s.get(rec.pid, 0.0) >= DRIFT_RESCAN_S
        unchanged = not rescan and rec.verified_epoch == epoch
        jobs = tuple((key, c) for c in rec.state.chunks
                     if not ((key := f"{rec.pid}:{c.id}") in self.reported and unchanged))
        keys = frozenset(f"{rec.pid}:{c.id}" for c in rec.state.chunks)
        return ScanPlan(rec.pid, rec.starttime, epoch, keys, jobs, rescan, now)

    def _apply(self, rec: JVMRecord, plan: ScanPlan, scans: tuple[FrameScan, ...]) -> None:
        """Tell the host what changed since the last report (loop thread: owns the report state)."""
        for scan in scans:
            if scan.frames is None:
                continue  # pagemap unreadable now: try again next time
            key, frames = scan.key, scan.frames
            old = self.reported.get(key, frozenset())
            added, removed = frames - old, old - frames
            if self.reported_addr.get(key, scan.addr) != scan.addr:
                # A GC moved the array: the copy wrote every destination page, including frames
                # the chunk owned before (and the host had punched). All of them go back.
                added = frames
            self.reported_addr[key] = scan.addr
            if key in self.reported and (added or removed):
                rec.drift_pages += len(added)
                self.drift_pages_total += len(added)
                log.info("drift: chunk %s moved %d pages", key, len(added))
            if removed:
                self._pages("remove", key, set(removed))
                self.acked_pages[key] = max(0, self.acked_pages.get(key, 0) - len(removed))
            if added:
                self._pages("add", key, set(added))
            self.reported[key] = frames
        prefix = f"{rec.pid}:"
        for key in [k for k in self.reported if k.startswith(prefix) and k not in plan.keys]:
            self.reported_addr.pop(key, None)
            self._pages("remove", key, set(self.reported.pop(key)))
            self.acked_pages.pop(key, None)
        if plan.rescan:
            self.last_rescan_s[rec.pid] = plan.now_s
        rec.verified_epoch = plan.epoch
        rec.reclaimed_bytes = sum(n for k, n in self.acked_pages.items() if k.startswith(prefix)) * pagemap.PAGE_SIZE

    async def report_to_host(self) -> None:
        """Plan on the loop, read pagemap in a worker thread, apply the result on the loop."""
        plans = [self._plan(rec) for rec in self.registry]
        results = await asyncio.to_thread(read_plans, self.procfs, tuple(plans))
        for plan, scans in zip(plans, results):
            rec = self.registry.get(plan.pid)
            if isinstance(scans, BaseException):
                self.drop_agent(plan.pid, f"reading its balloon failed: {type(scans).__name__}: {scans}")
            elif rec is not None and rec.starttime == plan.starttime:  # still the same JVM
                self._apply(rec, plan, scans)

    def _forget_gone(self) -> None:
        live = {str(r.pid) for r in self.registry}
        for key in [k for k in self.reported if k.split(":")[0] not in live]:
            self._pages("remove", key, set(self.reported.pop(key)))
            self.acked_pages.pop(key, None)
            self.reported_addr.pop(key, None)

    async def step(self) -> None:
        self.apply_law()
        await self.node.ticker.step()
        if not self.direct:
            await self.report_to_host()
            self._forget_gone()
        if not self.host_target_seen and self.clock() - self.last_hello_s >= HELLO_RETRY_S:
            self._hello_up()
        if self.uplink is not None:  # its JVMs typed end to end; the node figure is their sum
            jvms = self.node.jvm_statuses(self.node.ticker.targets())
            self._send_up(protocol.GuestStatus(target_bytes=self.node_target() or 0,
                                               balloon_bytes=sum(j.balloon_bytes for j in jvms),
                                               drift_pages=self.drift_pages_total, jvms=jvms))

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self.local.set_report_order()
        if self.uplink_path:
            try:
                self.uplink = Uplink(self.uplink_path, asyncio.get_running_loop(), self._on_host_line)
                self._hello_up()
            except OSError as err:
                log.error("no uplink to the host (%s): running without one", err)
        await self.node.run(ready, step=self.step)

    def stop(self) -> None:
        self.node.stop()

    def reload_policy(self) -> None:  # SIGHUP (serve): the guest has no policy file
        self.node.reload_policy()


def _boot_id(procfs: ProcFS) -> str:
    try:
        return procfs.boot_id()
    except KernelError:
        return ""


def find_port(name: str = "org.heapballoon.0", ports: VirtioPorts | None = None) -> str | None:
    """The /dev path of the virtio-serial port called ``name`` (no udev in our guest)."""
    try:
        return (ports or VirtioPorts()).find(name)
    except KernelError:
        return None


def octal(text: str) -> int:
    return int(text, 8)


def size_arg(text: str) -> int:
    from heapballoon.units import parse_size

    try:
        return parse_size(text)
    except Exception as err:  # noqa: BLE001 - argparse turns it into one line and exit 2
        raise argparse.ArgumentTypeError(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    from heapballoon.driver.daemon import serve

    p = argparse.ArgumentParser(prog="heapballoon-guest-driver")
    p.add_argument("--socket", default="/run/heapballoon/heapballoon.sock")
    p.add_argument("--uplink", help="virtio-serial port device (default: found by name)")
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--socket-mode", type=octal, default=0o600,
                   help="octal mode of the socket (default 600: JVMs running as root only)")
    p.add_argument("--reclaim", choices=("auto", "report", "direct"), default="auto",
                   help="report: hostd reclaims balloon pages by frame number; direct: the agents free them and the "
                        "host's virtio-balloon or free page reporting takes them (no hostd). auto (default): report "
                        "if the VM has the org.heapballoon.0 port, else direct")
    add_direct_arguments(p, size_arg)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uplink = args.uplink or find_port()
    reclaim = args.reclaim if args.reclaim != "auto" else ("report" if uplink else "direct")
    if uplink is None and reclaim == "report":
        log.error("virtio-serial port org.heapballoon.0 not found: running without a host uplink")
    law = law_from_arguments(args) if reclaim == "direct" else None
    log.info("reclaim %s, uplink %s, local policy %s", reclaim, uplink or "none",
             f"reserve {'default' if args.reserve is None else args.reserve >> 20} MiB band {args.band >> 20} MiB, "
             f"idle heap {'free' if law.free_idle_heap else 'on demand'}" if law else "off")
    return serve(GuestDriver(args.socket, uplink, reclaim=reclaim, law=law, report_order=args.report_order,
                             interval_s=args.interval_s, socket_mode=args.socket_mode))


if __name__ == "__main__":
    raise SystemExit(main())
