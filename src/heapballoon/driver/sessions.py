"""The driver's socket side: every connection on the Unix socket of ``heapballoon daemon``.

This module owns the conversation with each peer. At accept, before any message, the peer is
identified from ``SO_PEERCRED`` (pid, uid) and its process start time is read. The first
valid message, which must come within ``FIRST_MESSAGE_TIMEOUT_S``, decides whether it is an
agent (``hello``, then ``state`` and ``event`` messages for as long as it runs) or a CLI
client (control requests: ``status``, ``policy_explain``, ``set_target``, handed to the
``control`` callable the server was given: :meth:`heapballoon.driver.daemon.Driver.control`).

Identity: an agent *is* the process that connected. Its pid comes from SO_PEERCRED, never
from what it claims (no peer pid: refused), and at ``hello`` the process must still be the
one that connected (same start time), so a recycled pid can never bind another process.
Requests that change state (``set_target``) need root or the daemon's own uid; ``status`` and
``policy_explain`` are open to whoever can connect.

Limits (docs/protocol.md, "Limits"): ``transport.MAX_BAD_LINES`` bad lines within
``BAD_LINES_WINDOW_S`` drop a peer (a peer's errors are logged once, then counted); an agent
may spend ``AGENT_RATE_PER_S`` units a second (a message, plus one per ``CHUNKS_PER_UNIT``
chunks of a new state), a CLI connection ``CONTROL_RATE_PER_S`` requests. Over a limit the
peer is dropped and logged once. :class:`AgentServer` owns ``bad_messages`` and each
session's own limits; it writes what an agent says into the JVM table (``Registry``: records,
channels, outboxes). All of it is owned by the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

from heapballoon import protocol, transport
from heapballoon.transport import BAD_LINES_WINDOW_S, BadLines
from heapballoon.driver.peerlimits import LogBudget, Outbox, TokenBucket
from heapballoon.driver.registry import Registry
from heapballoon.driver.targetbook import TargetBook
from heapballoon.errors import KernelError, MessageTooLarge, PeerStalled, ProtocolError
from heapballoon.linux.kubelet import KubeletLogs
from heapballoon.linux.peercred import peer_cred
from heapballoon.linux.procfs import ProcFS
from heapballoon.textsafe import log_text
from heapballoon.units import format_size

log = logging.getLogger("heapballoon.driver")
FIRST_MESSAGE_TIMEOUT_S = 5.0
AGENT_RATE_PER_S = 200.0  # a real agent sends at most ~20 states a second (its loop ticks every 50 ms)
AGENT_BURST = 2000.0
CHUNKS_PER_UNIT = 64  # parsing a state costs one unit per this many chunks (a full state: 1,025)
MAX_EVENT_KINDS = 16  # distinct event kinds counted per JVM (docs name 5); the rest count as "other"
AGENT_LOG_LINES = 10  # events and rejections an agent may have logged a minute; the rest are counted
CONTROL_RATE_PER_S = 20.0
CONTROL_BURST = 100.0
MAX_ERROR_REPLY_CHARS = 300


class PeerDropped(ConnectionError):
    """A peer went over one of its limits; the message says which, for the one log line."""


@dataclass(frozen=True)
class Peer:
    """Who connected, as the kernel says at accept: ``pid`` None when SO_PEERCRED has none (or
    the process was gone, or is another user's, by the time we looked)."""

    pid: int | None
    uid: int | None
    starttime: int | None

    def describe(self) -> str:
        return f"pid {self.pid}" if self.pid else "a peer without a pid"


class AgentServer:
    """Accepts every connection on the driver's socket and owns the agent sessions. Mutable
    state of its own (event loop thread): ``bad_messages``. ``wake`` asks for a tick now;
    ``control`` answers one control request (``privileged``: from root or the daemon's uid)."""

    def __init__(self, registry: Registry, book: TargetBook, *, procfs: ProcFS, kubelet: KubeletLogs, clock,
                 policy, wake: Callable[[], None],
                 control: Callable[[protocol.Message, bool], protocol.Message]) -> None:
        self.registry = registry
        self.book = book
        self.procfs = procfs
        self.kubelet = kubelet  # pod and container names (docs/kubernetes.md)
        self.clock = clock
        self.policy = policy
        self.wake = wake
        self.control = control
        self.bad_messages = 0

    def identify(self, writer: asyncio.StreamWriter) -> Peer:
        """The peer's pid, uid and start time, read at accept (before any message)."""
        cred = peer_cred(writer.get_extra_info("socket"))
        if cred is None:
            return Peer(None, None, None)
        if not cred.pid:
            return Peer(None, cred.uid, None)
        try:
            starttime = self.procfs.starttime(cred.pid)
            euid = self.procfs.euid_egid(cred.pid)[0]
        except KernelError:
            return Peer(None, cred.uid, None)  # gone already: its pid may be anyone's soon
        if euid != cred.uid:  # the pid is another user's process now (recycled)
            return Peer(None, cred.uid, None)
        return Peer(cred.pid, cred.uid, starttime)

    def privileged(self, peer: Peer) -> bool:
        return peer.uid is not None and peer.uid in (0, os.geteuid())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chan = transport.LineChannel(reader, writer, protocol.decode_first)
        peer = self.identify(writer)
        bad = BadLines(self.clock)
        try:
            try:
                first = await asyncio.wait_for(self._recv_valid(chan, peer, bad), FIRST_MESSAGE_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise PeerDropped(f"no valid first message within {FIRST_MESSAGE_TIMEOUT_S:g} s") from None
            if first is None:
                return
            if isinstance(first, protocol.Hello):
                chan.switch(protocol.agent.decode)  # a control request from an agent: a bad line
                await self._agent_session(chan, peer, first, bad)
            else:
                chan.switch(protocol.control.decode)  # and an agent's message from a CLI client
                await self._control_session(chan, peer, first, bad)
        except (ConnectionError, MessageTooLarge, PeerStalled) as err:
            log.warning("dropping %s: %s", peer.describe(), log_text(err))
        except Exception:  # noqa: BLE001 - one bad peer must never take the daemon down
            log.exception("unexpected error on a connection of %s; dropped it", peer.describe())
        finally:
            chan.close()

    async def _recv_valid(self, chan: transport.LineChannel, peer: Peer, bad: BadLines) -> protocol.Message | None:
        """Next valid message; bad lines get an error reply, and too many in the window drop
        the peer. The first bad line is logged with its text, the next ones only counted."""
        while True:
            try:
                return await chan.recv()
            except MessageTooLarge:
                self.bad_messages += 1
                raise
            except ProtocolError as err:
                self.bad_messages += 1
                over = bad.add()
                if bad.total == 1:
                    log.warning("%s sent a bad message: %s (raw: %s); more are counted, not logged",
                                peer.describe(), log_text(err), log_text(repr((err.raw or b"")[:80])))
                with contextlib.suppress(ConnectionError):  # cut: a bad line never earns a large reply
                    await chan.send(protocol.Error(error=log_text(err, MAX_ERROR_REPLY_CHARS)))
                if over:
                    raise PeerDropped(f"{len(bad.times)} bad messages within {BAD_LINES_WINDOW_S:g} s "
                                      f"({bad.total} in all)") from err

    async def _agent_session(self, chan: transport.LineChannel, peer: Peer, hello: protocol.Hello,
                             bad: BadLines) -> None:
        if peer.pid is None:
            with contextlib.suppress(ConnectionError):
                await chan.send(protocol.Error(error="cannot tell which process this agent is (no pid from "
                                               "SO_PEERCRED: another pid namespace, or it exited): refused"))
            log.warning("refused an agent (%s): no peer pid from SO_PEERCRED", log_text(hello.name))
            return
        pid = peer.pid
        try:
            same = self.procfs.starttime(pid) == peer.starttime
        except KernelError:
            same = False
        if not same:
            log.warning("agent pid %d exited (or its pid was reused) before its hello; refused", pid)
            return
        if pid != hello.pid:
            log.info("agent says pid %d, socket peer is pid %d (pid namespace?): using %d", hello.pid, pid, pid)
        rec = self.registry.upsert(pid, peer.starttime, hello)
        with contextlib.suppress(KernelError):  # its identity in status: cgroup, container, pod
            rec.cgroup = self.procfs.cgroup(pid)
        names = self.kubelet.names(rec.cgroup)
        rec.pod, rec.container = names.pod, names.container
        self.book.adopt(rec, hello, policy_decides=self.policy is not None)
        outbox = Outbox(chan, pid, log)
        self.registry.attach(pid, chan, outbox)
        if self.policy is not None:
            self.policy.on_state(pid, hello.state, self.clock())
        log.info("agent connected: pid=%d name=%s gc=%s jvm=%s address_mode=%s balloon=%s target=%s",
                 pid, log_text(rec.name), hello.gc, log_text(hello.jvm_version), hello.address_mode,
                 format_size(hello.state.balloon_bytes), format_size(hello.target_bytes))
        self.wake()
        rate = TokenBucket(AGENT_RATE_PER_S, AGENT_BURST, self.clock)
        logged = LogBudget(AGENT_LOG_LINES, 60.0, self.clock)
        last = None
        try:
            while True:
                msg = await self._recv_valid(chan, peer, bad)
                if msg is None:
                    break
                cost = 1 + (len(msg.chunks) // CHUNKS_PER_UNIT if isinstance(msg, protocol.State) and msg is not last
                            else 0)
                last = msg
                if not rate.take(cost):
                    raise PeerDropped(f"agent over its rate ({AGENT_RATE_PER_S:g} units/s, a message plus one per "
                                      f"{CHUNKS_PER_UNIT} chunks of a new state)")
                rec.last_seen_s = self.clock()
                if isinstance(msg, protocol.State):
                    if msg.chunks_epoch != rec.state.chunks_epoch or msg.chunks != rec.state.chunks:
                        self.wake()
                    rec.state = msg
                    if self.policy is not None:
                        self.policy.on_state(pid, msg, self.clock())
                elif isinstance(msg, protocol.Event):
                    kind = msg.kind if msg.kind in rec.events or len(rec.events) < MAX_EVENT_KINDS else "other"
                    rec.events[kind] = rec.events.get(kind, 0) + 1
                    if msg.kind == "moved":
                        rec.moved_chunks += 1
                    ok, skipped = logged.allow()
                    if ok:
                        log.info("pid %d event %s: released %s in %d ms (%s)%s", pid, log_text(msg.kind, 64),
                                 format_size(msg.released_bytes), msg.latency_ms, log_text(msg.reason),
                                 f" [{skipped} more events/rejections not logged]" if skipped else "")
                    self.wake()
                elif isinstance(msg, protocol.Pong):
                    pass
                elif isinstance(msg, protocol.Error):  # the agent rejected something we sent
                    ok, skipped = logged.allow()
                    if ok:
                        log.warning("agent pid %d rejected a message: %s%s", pid, log_text(msg.error),
                                    f" [{skipped} more events/rejections not logged]" if skipped else "")
                else:
                    await chan.send(protocol.Error(error=f"unexpected {msg.TYPE!r} from an agent"))
        finally:
            outbox.close()
            if self.registry.detach(pid, chan, outbox):
                rec.connected = False
                rec.sent = None
                rec.scan = None
                log.info("agent disconnected: pid=%d", pid)
                self.wake()

    def drop_agent(self, pid: int, why: str) -> None:
        """Drop one agent's connection now (its session ends and cleans up), logged once."""
        chan = self.registry.channel(pid)
        if chan is not None:
            log.warning("dropping agent pid %d: %s", pid, log_text(why))
            chan.abort()

    async def _control_session(self, chan: transport.LineChannel, peer: Peer, msg: protocol.Message,
                               bad: BadLines) -> None:
        rate = TokenBucket(CONTROL_RATE_PER_S, CONTROL_BURST, self.clock)
        privileged = self.privileged(peer)
        while msg is not None:
            if not rate.take():
                raise PeerDropped(f"more than {CONTROL_RATE_PER_S:g} control requests a second")
            await chan.send(self.control(msg, privileged))
            msg = await self._recv_valid(chan, peer, bad)
