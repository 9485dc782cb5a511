"""The balloon driver daemon (`heapballoon daemon`): agents, targets, verification, control.

One asyncio process per node (process mode) or per guest (VM mode, see ``guest.driver``).
This module owns the driver's composition and its lifetime: :class:`Driver` builds its parts,
answers control requests, builds the ``status`` reply, and starts, runs and stops the loop
(:func:`serve`). The parts, each the one owner of its mutable state (all of it owned by the
event loop thread):

* the JVM table, :class:`heapballoon.driver.registry.Registry`: every per-JVM record, and each
  connected agent's channel and outbox;
* the targets set by hand and their state file, :class:`heapballoon.driver.targetbook.TargetBook`;
* the agent server, :class:`heapballoon.driver.sessions.AgentServer`: the Unix socket. Agents
  connect and say ``hello``; CLI clients send a control request on the same socket (answered
  by :meth:`Driver.control`). The pid of an agent is taken from SO_PEERCRED, never from what
  it claims;
* the ticker, :class:`heapballoon.driver.balloontick.Ticker`: from the JVM table and the
  targets it decides what each agent must be told, and each step (every ``interval_s``, or
  when woken) does the I/O: sending targets, verifying reclaim through pagemap, steering KSM,
  logging the tick (``driver.tickreport``);
* the KSM controller, :class:`heapballoon.driver.ksmctl.KsmController`.

Targets survive a daemon restart twice over: they are saved to a state file next to the
socket, and agents report the target they still hold in their ``hello``. With ``--policy
auto`` (:mod:`heapballoon.driver.autopolicy`) the policy engine decides every target that is
not pinned by hand; SIGHUP reloads its file. The guest driver composes a ``Driver`` with its
own hooks (``node_target``, ``room_bytes``, ``verify_pagemap``) and runs it
with its own step; it does not subclass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from typing import Awaitable, Callable

from heapballoon import protocol, transport
from heapballoon.driver.balloontick import Ticker
from heapballoon.driver.ksmctl import KsmController
from heapballoon.driver.registry import JVMRecord, Registry
from heapballoon.driver.sessions import AgentServer
from heapballoon.driver.targetbook import TargetBook
from heapballoon.linux import pagemap, safefs
from heapballoon.linux.ksm import KSM
from heapballoon.linux.kubelet import KubeletLogs
from heapballoon.linux.procfs import ProcFS
from heapballoon.status import DriverStatus, JvmStatus, NodeStatus, PolicyReport, TargetsReply
from heapballoon.units import format_size

log = logging.getLogger("heapballoon.driver")
STATE_CHANGING = (protocol.SetTarget,)


class Driver:
    """The parts of one balloon driver and its loop. Its own mutable state (event loop thread):
    ``_stop`` and ``_wake``, the loop's events; every other piece is a part's (see the module
    docstring). Work sent to a thread (pagemap reads, the zero page probe) gets copies of what
    it needs and returns results that the loop applies."""

    def __init__(self, socket_path: str, *, procfs: ProcFS | None = None, ksm: KSM | None = None,
                 ksm_mode: str = "auto", reclaim: str = "auto", interval_s: float = 1.0,
                 socket_mode: int = 0o600, clock=time.monotonic, policy=None,
                 kubelet: KubeletLogs | None = None, verify_pagemap: bool = True,
                 node_target: Callable[[], int | None] | None = None,
                 room_bytes: Callable[[JVMRecord], int] | None = None) -> None:
        self.socket_path = socket_path
        self.procfs = procfs or ProcFS()
        self.interval_s = interval_s
        self.socket_mode = socket_mode
        self.clock = clock
        self.policy = policy  # an AutoPolicy (--policy auto), or None: targets are set by hand
        self.registry = Registry()
        self.book = TargetBook(socket_path + ".state.json")
        self.ksmctl = KsmController(ksm or KSM(), ksm_mode, socket_path + ".ksm.json", clock=clock)
        self.server = AgentServer(self.registry, self.book, procfs=self.procfs, kubelet=kubelet or KubeletLogs(),
                                  clock=clock, policy=policy, wake=self.wake, control=self.control)
        self.ticker = Ticker(self.registry, self.book, procfs=self.procfs, ksmctl=self.ksmctl, clock=clock,
                             policy=policy, reclaim_pref=reclaim, drop_agent=self.server.drop_agent,
                             verify_pagemap=verify_pagemap, node_target=node_target, room_bytes=room_bytes)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

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

    def wake(self) -> None:
        """Run a tick now rather than at the next interval."""
        self._wake.set()

    def save_state(self) -> None:
        self.book.save(self.registry, self.procfs)

    # ------------------------------------------------------------------ control and status

    def control(self, msg: protocol.Message, privileged: bool = True) -> protocol.Message:
        """Answer one control request (``privileged``: from root or the daemon's uid)."""
        req_id = getattr(msg, "id", 0)
        if isinstance(msg, STATE_CHANGING) and not privileged:
            return protocol.Error(id=req_id, error=f"{msg.TYPE!r} needs root or the daemon's user (uid "
                                  f"{os.geteuid()}); status and policy explain are open to every user")
        if isinstance(msg, protocol.StatusRequest):
            return protocol.Reply(id=req_id, body=self.status())
        if isinstance(msg, protocol.PolicyExplainRequest):
            return protocol.Reply(id=req_id, body=self.policy_report().to_dict())
        if isinstance(msg, protocol.SetTarget):
            return self._set_target(msg, req_id)
        return protocol.Error(id=req_id, error=f"{msg.TYPE!r} is not a request this daemon answers")

    def _set_target(self, msg: protocol.SetTarget, req_id: int) -> protocol.Message:
        if msg.pid is None and self.policy is not None:
            return protocol.Error(id=req_id, error="the policy sets node targets here (daemon --policy auto): "
                                  "set a budget in the policy file, or pin one JVM with `target PID SIZE`")
        if msg.pid is None:
            self.book.node_target_bytes = msg.target_bytes
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
        self.wake()
        log.info("target set: %s → %s", "all" if msg.pid is None else f"pid {msg.pid}",
                 "auto" if msg.auto else format_size(msg.target_bytes))
        return protocol.Reply(id=req_id, body=TargetsReply(self.ticker.targets()).to_dict())

    def jvm_statuses(self, targets: dict[int, int]) -> tuple[JvmStatus, ...]:
        """Every JVM's typed status, by pid (``targets``: the ticker's split, taken once)."""
        jvms = sorted((r.status(targets.get(r.pid, r.explicit_target_bytes or 0)) for r in self.registry),
                      key=lambda j: j.pid)
        if self.policy is not None:
            jvms = [dataclasses.replace(j, target_reason=self.policy.reason(j.pid)) for j in jvms]
        return tuple(jvms)

    def status_typed(self) -> DriverStatus:
        ticker = self.ticker
        targets = ticker.targets()
        jvms = self.jvm_statuses(targets)
        short = ticker.unmet(targets)
        report = self.policy_report()
        node = NodeStatus(
            target_bytes=ticker.node_target() or 0,
            balloon_bytes=sum(j.balloon_bytes for j in jvms),
            reclaimed_bytes=sum(j.reclaimed_bytes for j in jvms),
            ksm=self.ksmctl.reason, ksm_boosted=self.ksmctl.boosted,
            zero_pfn_known=ticker.zero_pfn is not None, bad_messages=self.server.bad_messages,
            unmet_bytes=short.bytes, unmet_reason=short.reason, tick_ms=round(ticker.tick_ms, 2),
            policy=report.mode, policy_state=report.state, budget_bytes=report.budget_bytes,
        )
        return DriverStatus(jvms, node)

    def policy_report(self) -> PolicyReport:
        if self.policy is not None:
            return self.policy.report()
        return PolicyReport("manual", "manual", None, "policy manual: targets are set by hand (heapballoon target); "
                            "start the daemon with --policy auto to have them decided", self.ticker.ticks)

    def reload_policy(self) -> None:
        """SIGHUP: reload the policy file (a bad one keeps the last good policy)."""
        if self.policy is not None and self.policy.reload():
            self.wake()

    def status(self) -> dict:
        """The ``status`` reply's body (docs/protocol.md), built from the typed payload."""
        return self.status_typed().to_dict()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, ready: asyncio.Event | None = None,
                  step: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve until :meth:`stop`: a tick (``step``, by default the ticker's) every interval."""
        step = step or self.ticker.step
        self._bind_events()
        # The socket's directory also holds the state and KSM files: as root it must be root's
        # alone (UnsafePath, one line, before anything is read or written there).
        safefs.ensure_trusted_dir(os.path.dirname(os.path.abspath(self.socket_path)))
        self.book.load()
        self.ticker.zero_pfn = await asyncio.to_thread(pagemap.zero_pfn, self.procfs)
        if self.ticker.zero_pfn is None:
            log.warning("the zero page's frame number is hidden (not root?): KSM-merged pages will not count as reclaimed")
        if self.ksmctl.setup():
            log.info("KSM: use_zero_pages on, scanning; originals saved: %s", self.ksmctl.original)
        else:
            log.info("KSM untouched: %s", self.ksmctl.reason)
        server = await transport.listen(self.socket_path, self.server.handle, self.socket_mode)
        log.info("listening on %s (reclaim=%s, interval=%.1fs)", self.socket_path, self.ticker.reclaim_pref,
                 self.interval_s)
        if ready is not None:
            ready.set()
        try:
            while not self._stop.is_set():
                try:
                    await step()
                except Exception as err:  # noqa: BLE001 - a tick that fails must not end the daemon
                    self.ticker.failed(err)
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
        finally:
            server.close()
            for chan in self.registry.channels():
                chan.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.ksmctl.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def serve(driver) -> int:
    """Run a driver (a :class:`Driver`, or the guest driver) until SIGTERM/SIGINT; the CLI's
    `heapballoon daemon` and `heapballoon guest-driver`."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, driver.stop)
        loop.add_signal_handler(signal.SIGHUP, driver.reload_policy)
        await driver.run()

    asyncio.run(main())
    return 0
