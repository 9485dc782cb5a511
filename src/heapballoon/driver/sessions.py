"""The driver's socket side: every connection on the Unix socket of ``heapballoon daemon``.

This module owns the conversation with each peer: the first valid message decides whether it
is an agent (``hello``, then ``state`` and ``event`` messages for as long as it runs; its pid is
taken from SO_PEERCRED, never from what it claims) or a CLI client (control requests:
``status``, ``policy_explain``, ``set_target``, answered by :meth:`AgentSessions.control`); bad
lines get an error reply, and ``MAX_BAD_LINES`` in a row drop the peer. It is a mixin of
:class:`heapballoon.driver.daemon.Driver` and declares no state of its own: the attributes it
reads and writes (``registry``, ``channels``, ``bad_messages``, the targets) are declared in
``Driver.__init__`` and owned by the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from heapballoon import protocol, transport
from heapballoon.errors import KernelError, MessageTooLarge, ProtocolError
from heapballoon.status import TargetsReply
from heapballoon.units import format_size

log = logging.getLogger("heapballoon.driver")
MAX_BAD_LINES = 16


class AgentSessions:
    """The connection half of Driver (uses its ``registry``, ``channels``, ``_wake`` ...)."""

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
