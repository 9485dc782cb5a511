"""The balloon driver daemon (`heapballoon daemon`): agents, targets, verification, control.

One asyncio process per node (process mode) or per guest (VM mode, see ``guest.driver``).

* Agents connect to the Unix socket and say ``hello``; CLI clients send a control request on
  the same socket. The pid of an agent is taken from SO_PEERCRED, never from what it claims.
* :meth:`Driver.tick` is the controller: from the registry and the targets it decides what
  each agent must be told; :meth:`Driver.run` drives it every ``interval_s`` and does the I/O
  (sending targets, verifying reclaim through pagemap, steering KSM). A tick logs one short
  summary line (:meth:`Driver._tick_summary`) when it changed, per-JVM detail only when that
  JVM's control state changed (``driver.tickreport``), and says when a node target cannot be met.
* Targets survive a daemon restart twice over: they are saved to a state file next to the
  socket, and agents report the target they still hold in their ``hello``.
* ``--policy auto`` (:mod:`heapballoon.driver.autopolicy`): the policy engine decides every
  target that is not pinned by hand; SIGHUP reloads its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time

from heapballoon import protocol, transport
from heapballoon.driver import policy
from heapballoon.driver.ksmctl import KsmController
from heapballoon.driver.registry import JVMRecord, Registry
from heapballoon.driver.tickreport import TickLog, Unmet, jvm_detail, node_summary, unmet
from heapballoon.driver.verify import Verification, verify_chunks
from heapballoon.errors import KernelError, MessageTooLarge, ProtocolError
from heapballoon.linux import pagemap
from heapballoon.linux.ksm import KSM
from heapballoon.linux.procfs import ProcFS
from heapballoon.status import DriverStatus, NodeStatus, PolicyReport, TargetsReply
from heapballoon.units import format_size

log = logging.getLogger("heapballoon.driver")
MAX_BAD_LINES = 16
DISCONNECTED_GRACE_S = 60.0
MOVE_GRACE_S = 1.5
REVERIFY_S = 10.0  # a settled, fully reclaimed balloon is read through pagemap this often
REVERIFY_SLACK_BYTES = 1 << 20  # "fully reclaimed": all but this much of the balloon
REAP_SWEEP_TICKS = 30


class Driver:
    """Registry + policy + I/O of one balloon driver.

    Thread confinement: every attribute below, and every JVMRecord in the registry, is owned
    by the event loop thread. Work sent to a thread (pagemap reads, the zero page probe) gets
    copies of what it needs and returns results that the loop applies.
    """

    # Whether balloon pages are verified here through pagemap (the guest driver: no, the
    # host acknowledges them).
    VERIFY_PAGEMAP = True

    def __init__(self, socket_path: str, *, procfs: ProcFS | None = None, ksm: KSM | None = None,
                 ksm_mode: str = "auto", reclaim: str = "auto", interval_s: float = 1.0,
                 socket_mode: int = 0o600, clock=time.monotonic, policy=None) -> None:
        self.socket_path = socket_path
        self.state_path = socket_path + ".state.json"
        self.procfs = procfs or ProcFS()
        self.reclaim_pref = reclaim
        self.interval_s = interval_s
        self.reverify_s = REVERIFY_S  # see _verify_due
        self.socket_mode = socket_mode
        self.clock = clock
        self.registry = Registry()
        self.policy = policy  # an AutoPolicy (--policy auto), or None: targets are set by hand
        self.channels: dict[int, transport.LineChannel] = {}
        self.node_target_bytes: int | None = None
        self.saved_explicit: dict[str, int] = {}
        self.ksmctl = KsmController(ksm or KSM(), ksm_mode, socket_path + ".ksm.json", clock=clock)
        self.zero_pfn: int | None = None
        self.bad_messages = 0
        self.ticks = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.tick_log = TickLog(log)
        self.tick_ms = 0.0  # how long the last step() took

    def _bind_events(self) -> None:
        """Remake the events on the running loop, keeping their state: on Python 3.9 (the guest
        side runs there) an Event belongs to the loop current when it was made, and the driver
        is made before ``asyncio.run`` starts its own loop."""
        for attr in ("_stop", "_wake"):
            was_set = getattr(self, attr).is_set()
            event = asyncio.Event()
            if was_set:
                event.set()
            setattr(self, attr, event)

    # ------------------------------------------------------------------ persistence

    def load_state(self) -> None:
        try:
            with open(self.state_path) as f:
                saved = json.load(f)
            self.node_target_bytes = saved.get("node_target_bytes")
            self.saved_explicit = {str(k): int(v) for k, v in saved.get("explicit", {}).items()}
            log.info("loaded targets from %s: node=%s, %d per-JVM", self.state_path,
                     self.node_target_bytes, len(self.saved_explicit))
        except FileNotFoundError:
            pass
        except (ValueError, OSError, AttributeError, TypeError) as err:
            log.error("ignoring unreadable state file %s: %s", self.state_path, err)

    def save_state(self) -> None:
        explicit = {f"{r.pid}:{r.starttime}": r.explicit_target_bytes
                    for r in self.registry if r.explicit_target_bytes is not None}
        # Keep targets of JVMs that are disconnected right now but may come back.
        for key, value in self.saved_explicit.items():
            pid = int(key.split(":")[0])
            if self.registry.get(pid) is None and self.procfs.exists(pid):
                explicit.setdefault(key, value)
        self.saved_explicit = explicit
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"node_target_bytes": self.node_target_bytes, "explicit": explicit}, f)
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ policy

    def reclaim_mode(self, rec: JVMRecord) -> str:
        modes = rec.hello.reclaim_modes
        if self.reclaim_pref == "report":
            return "report"
        if self.reclaim_pref in ("auto", "direct") and "direct" in modes:
            return "direct"
        return "ksm"

    def targets(self) -> dict[int, int]:
        connected = [r for r in self.registry if r.connected]
        if self.policy is not None:
            return self.policy.targets(connected)
        return policy.effective_targets(
            self.node_target_bytes,
            {r.pid: r.explicit_target_bytes for r in connected},
            {r.pid: r.excess_bytes for r in connected},
            {r.pid: self.room_bytes(r) for r in connected},
        )

    def room_bytes(self, rec: JVMRecord) -> int:
        """Most a balloon may hold in this JVM: what its agent says it can hold (up to the
        maximum heap, or the old generation for Serial and Parallel), since here the kernel
        frees balloon pages (direct or KSM) and a heap that grows to hold them costs nothing."""
        return rec.balloon_max_bytes

    def tick(self) -> list[tuple[JVMRecord, protocol.Target]]:
        """Decide which agents must be sent a new target. Pure: reads only the registry."""
        out = []
        for pid, target_bytes in self.targets().items():
            rec = self.registry.get(pid)
            want = protocol.Target(target_bytes=target_bytes, reclaim=self.reclaim_mode(rec))
            if rec.sent != want:
                out.append((rec, want))
        return out

    # ------------------------------------------------------------------ status

    def status_typed(self) -> DriverStatus:
        targets = self.targets()
        jvms = sorted((r.status(targets.get(r.pid, r.explicit_target_bytes or 0)) for r in self.registry),
                      key=lambda j: j.pid)
        short = self.unmet(targets)
        if self.policy is not None:
            jvms = [dataclasses.replace(j, target_reason=self.policy.reason(j.pid)) for j in jvms]
        report = self.policy_report()
        node = NodeStatus(
            target_bytes=self.node_target_bytes or 0,
            balloon_bytes=sum(j.balloon_bytes for j in jvms),
            reclaimed_bytes=sum(j.reclaimed_bytes for j in jvms),
            ksm=self.ksmctl.reason, ksm_boosted=self.ksmctl.boosted,
            zero_pfn_known=self.zero_pfn is not None, bad_messages=self.bad_messages,
            unmet_bytes=short.bytes, unmet_reason=short.reason, tick_ms=round(self.tick_ms, 2),
            policy=report.mode, policy_state=report.state, budget_bytes=report.budget_bytes,
        )
        return DriverStatus(tuple(jvms), node)

    def unmet(self, targets: dict[int, int]) -> Unmet:
        """What of the node target the split could not hand out, and why."""
        return unmet(self.node_target_bytes, targets, self.registry)

    def policy_report(self) -> PolicyReport:
        if self.policy is not None:
            return self.policy.report()
        return PolicyReport("manual", "manual", None, "policy manual: targets are set by hand (heapballoon target); "
                            "start the daemon with --policy auto to have them decided", self.ticks)

    def reload_policy(self) -> None:
        """SIGHUP: reload the policy file (a bad one keeps the last good policy)."""
        if self.policy is not None and self.policy.reload():
            self._wake.set()

    def status(self) -> dict:
        """The ``status`` reply's body (docs/protocol.md), built from the typed payload."""
        return self.status_typed().to_dict()

    # ------------------------------------------------------------------ connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chan = transport.LineChannel(reader, writer)
        try:
            first = await self._recv_valid(chan)
            if first is None:
                return
            if isinstance(first, protocol.Hello):
                await self._agent_session(chan, first)
            else:
                await self._control_session(chan, first)
        except (ConnectionError, MessageTooLarge) as err:
            log.warning("dropping connection: %s", err)
        except Exception:  # noqa: BLE001 - one bad peer must never take the daemon down
            log.exception("unexpected error on a connection; dropped it")
        finally:
            chan.close()

    async def _recv_valid(self, chan: transport.LineChannel) -> protocol.Message | None:
        """Next valid message; bad lines get an error reply, and too many drop the peer."""
        bad = 0
        while True:
            try:
                return await chan.recv()
            except MessageTooLarge:
                self.bad_messages += 1
                raise
            except ProtocolError as err:
                self.bad_messages += 1
                bad += 1
                log.warning("rejected message: %s (raw: %r)", err, (err.raw or b"")[:80])
                with contextlib.suppress(ConnectionError):
                    await chan.send(protocol.Error(error=str(err)))
                if bad >= MAX_BAD_LINES:
                    raise ConnectionError(f"{bad} bad messages in a row") from err

    async def _agent_session(self, chan: transport.LineChannel, hello: protocol.Hello) -> None:
        pid = transport.peer_pid(chan.writer) or hello.pid
        if pid != hello.pid:
            log.info("agent says pid %d, socket peer is pid %d (pid namespace?): using %d", hello.pid, pid, pid)
        try:
            starttime = self.procfs.starttime(pid)
        except KernelError:
            log.warning("agent pid %d vanished before registering", pid)
            return
        rec = self.registry.upsert(pid, starttime, hello)
        saved = self.saved_explicit.get(f"{pid}:{starttime}")
        if rec.explicit_target_bytes is None:
            if saved is not None:
                rec.explicit_target_bytes = saved
            elif hello.target_bytes and not self.node_target_bytes and self.policy is None:
                rec.explicit_target_bytes = hello.target_bytes  # the balloon survives our restart
        self.channels[pid] = chan
        if self.policy is not None:
            self.policy.on_state(pid, hello.state, self.clock())
        log.info("agent connected: pid=%d name=%s gc=%s jvm=%s address_mode=%s balloon=%s target=%s",
                 pid, rec.name, hello.gc, hello.jvm_version, hello.address_mode,
                 format_size(hello.state.balloon_bytes), format_size(hello.target_bytes))
        self._wake.set()
        try:
            while True:
                msg = await self._recv_valid(chan)
                if msg is None:
                    break
                rec.last_seen_s = self.clock()
                if isinstance(msg, protocol.State):
                    if msg.chunks_epoch != rec.state.chunks_epoch or msg.chunks != rec.state.chunks:
                        self._wake.set()
                    rec.state = msg
                    if self.policy is not None:
                        self.policy.on_state(pid, msg, self.clock())
                elif isinstance(msg, protocol.Event):
                    rec.events[msg.kind] = rec.events.get(msg.kind, 0) + 1
                    if msg.kind == "moved":
                        rec.moved_chunks += 1
                    log.info("pid %d event %s: released %s in %d ms (%s)", pid, msg.kind,
                             format_size(msg.released_bytes), msg.latency_ms, msg.reason)
                    self._wake.set()
                elif isinstance(msg, protocol.Pong):
                    pass
                elif isinstance(msg, protocol.Error):  # the agent rejected something we sent
                    log.warning("agent pid %d rejected a message: %s", pid, msg.error)
                else:
                    await chan.send(protocol.Error(error=f"unexpected {msg.TYPE!r} from an agent"))
        finally:
            if self.channels.get(pid) is chan:
                del self.channels[pid]
                rec.connected = False
                rec.sent = None
                log.info("agent disconnected: pid=%d", pid)
                self._wake.set()

    async def _control_session(self, chan: transport.LineChannel, msg: protocol.Message) -> None:
        while msg is not None:
            await chan.send(self.control(msg))
            msg = await self._recv_valid(chan)

    def control(self, msg: protocol.Message) -> protocol.Message:
        """Answer one control request."""
        req_id = getattr(msg, "id", 0)
        if isinstance(msg, protocol.StatusRequest):
            return protocol.Reply(id=req_id, body=self.status())
        if isinstance(msg, protocol.PolicyExplainRequest):
            return protocol.Reply(id=req_id, body=self.policy_report().to_dict())
        if isinstance(msg, protocol.SetTarget):
            if msg.pid is None and self.policy is not None:
                return protocol.Error(id=req_id, error="the policy sets node targets here (daemon --policy auto): "
                                      "set a budget in the policy file, or pin one JVM with `target PID SIZE`")
            if msg.pid is None:
                self.node_target_bytes = msg.target_bytes
                if msg.target_bytes == 0:
                    for rec in self.registry:
                        rec.explicit_target_bytes = None
            else:
                rec = self.registry.get(msg.pid)
                if rec is None or not rec.connected:
                    return protocol.Error(id=req_id, error=f"no JVM with PID {msg.pid} is registered with this daemon "
                                          "(`heapballoon status` lists them; `heapballoon run` or `attach` adds one)")
                rec.explicit_target_bytes = None if msg.auto else msg.target_bytes
                if self.policy is not None:
                    self.policy.due = True
            self.save_state()
            self._wake.set()
            log.info("target set: %s → %s", "all" if msg.pid is None else f"pid {msg.pid}",
                     "auto" if msg.auto else format_size(msg.target_bytes))
            return protocol.Reply(id=req_id, body=TargetsReply(self.targets()).to_dict())
        return protocol.Error(id=req_id, error=f"{msg.TYPE!r} is not a request this daemon answers")

    # ------------------------------------------------------------------ the loop

    def _reap(self) -> None:
        """Forget JVMs whose process is gone (or whose pid now belongs to another process).

        A connected agent's process cannot be gone: its exit closes the socket, which marks the
        record disconnected at once. So each tick checks the disconnected records, and every
        ``REAP_SWEEP_TICKS`` ticks all of them (a /proc read per JVM is most of an idle tick)."""
        now = self.clock()
        sweep = self.ticks % REAP_SWEEP_TICKS == 1
        for rec in self.registry:
            if rec.connected and not sweep:
                continue
            try:
                alive = self.procfs.starttime(rec.pid) == rec.starttime
            except KernelError:
                alive = False
            if not alive or (not rec.connected and now - rec.last_seen_s > DISCONNECTED_GRACE_S):
                self.registry.remove(rec.pid)
                log.info("forgot JVM pid=%d (%s)", rec.pid, "exited" if not alive else "gone quiet")
                if not alive:
                    self.saved_explicit.pop(f"{rec.pid}:{rec.starttime}", None)

    async def _send_targets(self) -> None:
        for rec, want in self.tick():
            chan = self.channels.get(rec.pid)
            if chan is None:
                continue
            try:
                await chan.send(want)
                rec.sent = want
            except (ConnectionError, OSError) as err:
                log.warning("could not send target to pid %d: %s", rec.pid, err)

    async def _verify_all(self) -> None:
        """Count reclaimed balloon pages of every JVM through pagemap: the pagemap reads run in a
        worker thread as a pure function of (pid, chunks); the records are updated back here,
        on the event loop, which owns them. Off where VERIFY_PAGEMAP is False (the guest)."""
        if not self.VERIFY_PAGEMAP:
            return
        now = self.clock()
        plans = [(rec.pid, rec.state.chunks) for rec in self.registry
                 if rec.state.chunks and rec.hello.address_mode != "none" and self._verify_due(rec, now)]
        for rec in self.registry:
            if not rec.state.chunks or rec.hello.address_mode == "none":
                rec.reclaimed_bytes, rec.balloon_pages = 0, 0
        if not plans:
            return
        results = await asyncio.to_thread(_read_verifications, self.procfs, plans, self.zero_pfn)
        now = self.clock()
        for pid, chunks, v in results:
            rec = self.registry.get(pid)
            if rec is None or rec.state.chunks != chunks or v is None:
                continue  # gone, or its balloon changed while we read: the next tick counts it
            if v.reclaimed_bytes < rec.reclaimed_bytes and rec.verified_epoch == rec.state.chunks_epoch:
                # Fewer pages reclaimed at the same addresses: either the JVM wrote to its
                # balloon, or a collection moved the chunks and the agent's new addresses are
                # on their way (the GC notification runs after the collection). Publish the drop
                # only if no new state came within MOVE_GRACE_S.
                if rec.drop_seen_s is None:
                    rec.drop_seen_s = now
                if now - rec.drop_seen_s < MOVE_GRACE_S:
                    continue
            rec.drop_seen_s = None
            rec.verified_s = now
            rec.verified_epoch = rec.state.chunks_epoch
            rec.reclaimed_bytes = v.reclaimed_bytes
            rec.balloon_pages = v.balloon_pages
            self.after_verify(rec, v)

    def _verify_due(self, rec: JVMRecord, now: float) -> bool:
        """Whether a JVM's balloon is read through pagemap this tick. Reading every page of every
        balloon every tick cost 380 ms a tick with 100 JVMs holding 4.7 GiB; a balloon whose
        chunks did not change and whose pages are all reclaimed is read again every
        ``reverify_s`` (REVERIFY_S, staggered by pid so the JVMs do not all come due on one tick;
        a write into it shows up then), the others every tick: new or moved chunks, a drop
        waiting for the agent's new addresses, KSM still merging."""
        if rec.verified_s is None or rec.verified_epoch != rec.state.chunks_epoch or rec.drop_seen_s is not None:
            return True
        if rec.reclaimed_bytes < rec.state.balloon_bytes - REVERIFY_SLACK_BYTES:
            return True
        return now - rec.verified_s >= self.reverify_s * (0.5 + (rec.pid % 97) / 97)

    def after_verify(self, rec: JVMRecord, v: Verification) -> None:
        """Hook for the guest driver (VM mode), which reports page numbers to the host."""

    def _tick_summary(self, targets: dict[int, int], short: Unmet) -> str:
        """The one short line a tick logs (when it changed, or as a heartbeat): the node's
        state. Whoever adds state to the driver (the policy engine) appends it here."""
        ksm = "boost" if self.ksmctl.boosted else self.ksmctl.reason
        return node_summary(self.ticks, list(self.registry), self.node_target_bytes, short, ksm)

    def _log_tick(self) -> None:
        targets = self.targets()
        short = self.unmet(targets)
        details = {r.pid: jvm_detail(r, targets.get(r.pid, 0)) for r in self.registry}
        self.tick_log.emit(self.ticks, self._tick_summary(targets, short), details, short, self.tick_ms,
                           self.registry)

    async def step(self) -> None:
        started = time.perf_counter()
        self.ticks += 1
        self._reap()
        if self.policy is not None:
            self.policy.maybe_tick([r for r in self.registry if r.connected], self.clock())
        await self._send_targets()
        await self._verify_all()
        waiting = sum(max(0, r.balloon_pages - r.reclaimed_bytes // pagemap.PAGE_SIZE)
                      for r in self.registry if r.state.reclaim == "ksm")
        try:
            self.ksmctl.tick(waiting)
        except KernelError as err:
            log.error("KSM control failed: %s", err)
        if self.policy is None:  # the policy logs its own summary line
            self._log_tick()
        self.tick_ms = (time.perf_counter() - started) * 1000

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._bind_events()
        self.load_state()
        self.zero_pfn = await asyncio.to_thread(pagemap.zero_pfn, self.procfs)
        if self.zero_pfn is None:
            log.warning("the zero page's frame number is hidden (not root?): KSM-merged pages will not count as reclaimed")
        if self.ksmctl.setup():
            log.info("KSM: use_zero_pages on, scanning; originals saved: %s", self.ksmctl.original)
        else:
            log.info("KSM untouched: %s", self.ksmctl.reason)
        server = await transport.listen(self.socket_path, self.handle, self.socket_mode)
        log.info("listening on %s (reclaim=%s, interval=%.1fs)", self.socket_path, self.reclaim_pref, self.interval_s)
        if ready is not None:
            ready.set()
        try:
            while not self._stop.is_set():
                await self.step()
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
        finally:
            server.close()
            for chan in list(self.channels.values()):
                chan.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.ksmctl.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _read_verifications(procfs: ProcFS, plans, zero_pfn):
    """Worker thread: pagemap verification of each (pid, chunks); touches no daemon state."""
    out = []
    for pid, chunks in plans:
        try:
            out.append((pid, chunks, verify_chunks(procfs, pid, chunks, zero_pfn)))
        except KernelError as err:
            log.debug("pagemap of pid %d unreadable: %s", pid, err)
            out.append((pid, chunks, None))
    return out


def serve(driver: Driver) -> int:
    """Run a driver until SIGTERM/SIGINT; the CLI's `heapballoon daemon`."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, driver.stop)
        loop.add_signal_handler(signal.SIGHUP, driver.reload_policy)
        await driver.run()

    asyncio.run(main())
    return 0
