"""The balloon driver daemon (`heapballoon daemon`): agents, targets, verification, control.

One asyncio process per node (process mode) or per guest (VM mode, see ``guest.driver``).
This module owns the driver's state and its lifetime: :class:`Driver` declares every piece of
mutable state (all owned by the event loop thread), keeps the targets across restarts, builds
the ``status`` reply, and starts, runs and stops the loop (:func:`serve`). The rest of
``Driver`` is two mixins:

* :mod:`heapballoon.driver.sessions`: the Unix socket. Agents connect and say ``hello``; CLI
  clients send a control request on the same socket. The pid of an agent is taken from
  SO_PEERCRED, never from what it claims.
* :mod:`heapballoon.driver.balloontick`: :meth:`Driver.tick` is the controller: from the
  registry and the targets it decides what each agent must be told; :meth:`Driver.run` drives
  a step every ``interval_s`` that does the I/O (sending targets, verifying reclaim through
  pagemap, steering KSM). A tick logs one short summary line (:meth:`Driver._tick_summary`)
  when it changed, per-JVM detail only when that JVM's control state changed
  (``driver.tickreport``), and says when a node target cannot be met.

Targets survive a daemon restart twice over: they are saved to a state file next to the
socket, and agents report the target they still hold in their ``hello``. With ``--policy
auto`` (:mod:`heapballoon.driver.autopolicy`) the policy engine decides every target that is
not pinned by hand; SIGHUP reloads its file.
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

from heapballoon import transport
from heapballoon.driver.balloontick import REVERIFY_S, BalloonTick
from heapballoon.driver.ksmctl import KsmController
from heapballoon.driver.registry import Registry
from heapballoon.driver.sessions import AgentSessions
from heapballoon.driver.tickreport import TickLog, Unmet, unmet
from heapballoon.linux import pagemap, safefs
from heapballoon.linux.ksm import KSM
from heapballoon.linux.kubelet import KubeletLogs
from heapballoon.linux.procfs import ProcFS
from heapballoon.status import DriverStatus, NodeStatus, PolicyReport

log = logging.getLogger("heapballoon.driver")


class Driver(AgentSessions, BalloonTick):
    """Registry + policy + I/O of one balloon driver.

    Thread confinement: every attribute below, and every JVMRecord in the registry, is owned
    by the event loop thread (the mixins declare none of their own). Work sent to a thread
    (pagemap reads, the zero page probe) gets copies of what it needs and returns results that
    the loop applies.
    """

    def __init__(self, socket_path: str, *, procfs: ProcFS | None = None, ksm: KSM | None = None,
                 ksm_mode: str = "auto", reclaim: str = "auto", interval_s: float = 1.0,
                 socket_mode: int = 0o600, clock=time.monotonic, policy=None,
                 kubelet: KubeletLogs | None = None) -> None:
        self.socket_path = socket_path
        self.state_path = socket_path + ".state.json"
        self.procfs = procfs or ProcFS()
        self.kubelet = kubelet or KubeletLogs()  # pod and container names (docs/kubernetes.md)
        self.reclaim_pref = reclaim
        self.interval_s = interval_s
        self.reverify_s = REVERIFY_S  # see _verify_due
        self.socket_mode = socket_mode
        self.clock = clock
        self.registry = Registry()  # the JVM table: records, agent channels and outboxes
        self.policy = policy  # an AutoPolicy (--policy auto), or None: targets are set by hand
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
        self.tick_errors: set[str] = set()  # kinds of error a tick raised (each logged in full once)

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
            saved = json.loads(safefs.read_small(self.state_path))
            self.node_target_bytes = saved.get("node_target_bytes")
            self.saved_explicit = {str(k): int(v) for k, v in saved.get("explicit", {}).items()}
            log.info("loaded targets from %s: node=%s, %d per-JVM", self.state_path,
                     self.node_target_bytes, len(self.saved_explicit))
        except FileNotFoundError:
            pass
        except (ValueError, OSError, AttributeError, TypeError, safefs.UnsafePath) as err:
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
        data = json.dumps({"node_target_bytes": self.node_target_bytes, "explicit": explicit}).encode()
        safefs.write_atomic(*os.path.split(self.state_path), data)  # no symlink followed

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
            target_bytes=self.node_target() or 0,
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
        return unmet(self.node_target(), targets, self.registry)

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

    # ------------------------------------------------------------------ lifecycle

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._bind_events()
        # The socket's directory also holds the state and KSM files: as root it must be root's
        # alone (UnsafePath, one line, before anything is read or written there).
        safefs.ensure_trusted_dir(os.path.dirname(os.path.abspath(self.socket_path)))
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
                try:
                    await self.step()
                except Exception as err:  # noqa: BLE001 - a tick that fails must not end the daemon
                    self._tick_failed(err)
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

    def _tick_failed(self, err: Exception) -> None:
        """Log a failed tick: with its traceback the first time a kind of error is seen, then
        as one line (a tick runs every second)."""
        kind = type(err).__name__
        if kind not in self.tick_errors:
            self.tick_errors.add(kind)
            log.exception("a tick failed (the daemon goes on; the next %s is logged in one line)", kind)
        else:
            log.warning("a tick failed: %s: %s", kind, err)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


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
