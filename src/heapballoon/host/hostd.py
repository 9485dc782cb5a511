"""``heapballoon hostd``: the host memory manager daemon (asyncio).

This module owns the *daemon*: the registry of VMs (scanned from ``RUN_DIR/vms/NAME/``, as
heapballoon.vm lays them out: ``vm.json`` with ``pid``, ``memory_bytes``, ``reclaim``
(``pfn``: memfd RAM hostd punches; ``ksm``: private RAM left to KSM; ``virtio``: private RAM
its guest frees itself, handed back by free page reporting and the virtio balloon: hostd
takes no page numbers from it and never pauses it)), one guest channel per
VM (hostd connects to ``channel.sock`` as a client, reconnecting with backoff; the sessions are
guestsession.py's), QMP through the VM's ``qmp-hostd.sock`` (``qmp.sock`` if absent; one short
connection per reclaim), the control socket for the CLI (``vm_target``, ``status_request``;
the answers are hostcontrol.py's), the state file that keeps targets across restarts
(``RUN_DIR/hostd-state.json``), start-up and shut-down, and the ``heapballoon hostd`` command.
Reclaiming itself is reclaim.py's.
RUN_DIR is ``--run-dir``, ``$HEAPBALLOON_RUN_DIR`` or ``/run/heapballoon``.

Guest channel, per VM::

    hostd → guest   guest_target        on connect, after guest_hello, on every change
    guest → hostd   guest_hello         first; resets the balloon accounting on a new boot_id
    guest → hostd   pages op=add        → reclaim → pages_ack (every page in one counter)
    guest → hostd   pages op=remove     → accounting only (pages fault back in as zeros)
    guest → hostd   guest_status        stored, shown by status

Status figures, per VM (all measured by hostd, not taken from the guest):

* ``balloon_bytes``: pages the guest reported (add) and has not taken back (remove).
* ``reclaimed_bytes``: of those, the bytes that are holes in the RAM memfd right now — i.e.
  machine memory the host does not spend on the balloon. Pages hostd punched that the guest
  has since touched again are not counted. (ksm VMs: the smaps ``KSM`` figure; virtio VMs:
  what the guest says its JVMs freed, believed up to the guest RAM that is neither resident nor
  in the virtio balloon.)
* ``drift_pages``: balloon pages that are *not* holes (skipped non-zero, touched again, or
  not yet processed).
* ``host_resident_bytes``: allocated blocks of the memfd (ksm and virtio VMs: Rss of the RAM mapping).
* ``pause_breakdown_ms``: p50/p99/max of each pause part (``stop``, ``check``, ``punch``,
  ``cont``, ``total``; ``guest``: QEMU's STOP → RESUME timestamps) over the VM's recent
  pauses; ``pause_ms_per_gib``: all pause time over all bytes punched. Built in vmstatus.py,
  which also serves them to Prometheus (``--metrics``).

Policy (``--policy auto [--memory-budget SIZE] [--policy-file PATH]``): autopolicy.py decides
every VM's targets with the shared engine (heapballoon.policy): the virtio balloon
(virtioballoon.py) for free guest memory first, then the heap target on the guest channel. A
``vm_target`` pins a VM (kept in the state file), ``vm_target auto`` unpins it; SIGHUP
re-reads the policy file; ``status`` carries the state line and each VM's reason.

Engines (``--engine``): ``short`` (default; shortpause.py: pre-check on the running guest,
pauses bounded in time by ``--pause-budget-ms``, the pause path in one worker thread with its
own blocking QMP socket) or ``batch`` (reclaim.Reclaimer: fixed batches, check and punch all
under the pause; kept for comparison).

Limits: what one guest may cost hostd (pages verified, ranges and bytes a second, balloon
intervals, bad lines, sends that must drain) is guestlimits.py's, listed in docs/protocol.md
("Limits", Guest ↔ hostd); no guest can delay another VM's target, status or pauses.

Safety: a VM's memfd is found from its own QEMU process (pid from vm.json, confirmed by the
process start time and its command line naming the VM dir), page numbers are mapped through
that VM's own layout, and pages are punched only while QEMU is stopped and only if zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from heapballoon import protocol, transport
from heapballoon.errors import KernelError, UsageError
from heapballoon.host import vmstatus
from heapballoon.driver.ksmctl import KsmController
from heapballoon.linux import safefs
from heapballoon.linux.ksm import KSM
from heapballoon.host.shortpause import DEFAULT_PAUSE_BUDGET_MS, GIL_SWITCH_INTERVAL_S, PauseModel
from heapballoon.host.guestlimits import GuestGuard
from heapballoon.host.guestsession import GuestSessions
from heapballoon.host.hostcontrol import ControlRequests
from heapballoon.host.vmreclaim import MAX_BALLOON_INTERVALS  # noqa: F401 - part of hostd's API
from heapballoon.host.sessions import SessionTable
from heapballoon.host.vmregistry import RunDirSource, VMSource, load_vm, run_dir_path  # noqa: F401 - hostd's API
from heapballoon.host.vmsession import VMSession

log = logging.getLogger("heapballoon.hostd")

DEFAULT_RUN_DIR = "/run/heapballoon"
VMS_SUBDIR = "vms"
STATE_FILE = "hostd-state.json"
SCAN_INTERVAL_S = 2.0


class HostDaemon(GuestSessions, ControlRequests):
    """The state and tasks of one hostd: every attribute below is owned by its event loop (the
    mixins, guestsession.py and hostcontrol.py, declare none of their own)."""

    def __init__(self, socket_path: str, run_dir: str, batch_pages: int | None = None,
                 engine: str = "short", pause_budget_ms: float | None = None) -> None:
        if engine not in ("short", "batch"):
            raise ValueError(f"unknown reclaim engine {engine!r}")
        self.socket_path = socket_path
        self.run_dir = run_dir
        self.vms_dir = os.path.join(run_dir, VMS_SUBDIR)
        self.batch_pages = batch_pages
        self.engine = engine
        self.pause_budget_ms = pause_budget_ms or DEFAULT_PAUSE_BUDGET_MS
        self.soft_dirty = False
        self.table = SessionTable(on_drop=self._forget_guard)  # sessions and pins (sessions.py)
        self.state_path = os.path.join(run_dir, STATE_FILE)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._guards: dict[str, GuestGuard] = {}  # VM name → its guest's limits (guestlimits.py)
        self._ksm = KsmController(KSM(), "auto", os.path.join(run_dir, "hostd-ksm.json"))
        self._ksm_until = 0.0
        self.autopolicy = None  # autopolicy.AutoPolicy with --policy auto
        self.left_alone: dict[str, str] = {}  # VMs seen but not managed → why (libvirt backend)
        self.source: VMSource = RunDirSource(self.vms_dir)  # or libvirt's (libvirt/backend.py)

    @property
    def vms(self) -> dict[str, VMSession]:
        return self.table.vms

    @property
    def targets(self) -> dict[str, int]:
        return self.table.targets

    @targets.setter
    def targets(self, pins: dict[str, int]) -> None:
        self.table.targets = pins

    # ------------------------------------------------------------ state file

    def load_state(self) -> None:
        try:
            raw = json.loads(safefs.read_small(self.state_path))  # no symlink followed, ≤ 1 MiB
            self.targets = {str(k): int(v) for k, v in raw.get("targets", {}).items() if int(v) >= 0}
        except FileNotFoundError:
            self.targets = {}
        except (OSError, KernelError, ValueError, TypeError, AttributeError) as err:
            log.warning("ignoring unreadable state file %s: %s", self.state_path, err)
            self.targets = {}

    def save_state(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        # O_EXCL|O_NOFOLLOW temp file in the directory's fd, then rename: nothing planted is followed
        safefs.write_atomic(*os.path.split(self.state_path), json.dumps({"targets": self.targets}).encode())

    # ------------------------------------------------------------ registry

    def scan(self) -> None:
        """Bring the sessions in line with the source's VMs: the one place VMs are admitted
        (a new session: its pinned target, engine, pause model and guest channel) and dropped."""
        found = self.source.discover(self.vms)
        if not found.complete:  # the source could not look: keep what we have, but not the dead
            for vm in [v for v in self.vms.values() if not v.alive()]:
                self.table.drop(vm, "its QEMU exited")
            return
        self.left_alone = dict(found.left_alone)
        for vm in found.new:
            known = self.vms.get(vm.name)
            if known is not None:
                self.table.drop(known, "its QEMU exited or was replaced")
            vm.target_bytes = self.targets.get(vm.name, 0)  # with the policy, a manual target pins
            vm.engine, vm.soft_dirty = self.engine, self.soft_dirty
            vm.pause_model = PauseModel(self.pause_budget_ms)
            self.table.add(vm)
            vm.task = asyncio.get_running_loop().create_task(self._channel_loop(vm), name=f"channel-{vm.name}")
            log.info("VM %s: %s, QEMU pid %d, %d bytes of RAM, reclaim %s, target %d bytes", vm.name,
                     vm.describe(), vm.pid, vm.memory_bytes, vm.reclaim, vm.target_bytes)
        admitted = found.keep | {vm.name for vm in found.new}
        for vm in [v for n, v in self.vms.items() if n not in admitted]:
            self.table.drop(vm, "gone")

    def _forget_guard(self, vm: VMSession) -> None:
        guard = self._guards.pop(vm.name, None)
        if guard is not None:
            guard.close()

    async def _scan_loop(self) -> None:
        while True:
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - the registry loop must survive anything
                log.exception("VM scan failed")
            if self._ksm.boosted and time.monotonic() > self._ksm_until:
                try:
                    self._ksm.tick(0)
                except KernelError as err:
                    log.warning("KSM: %s", err)
            await asyncio.sleep(SCAN_INTERVAL_S)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from heapballoon.linux.softdirty import probe_soft_dirty

        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # the pause thread waits less for the GIL
        sd = await asyncio.to_thread(probe_soft_dirty)
        self.soft_dirty = sd.supported
        log.info("engine %s, pause budget %.1f ms; soft-dirty tracking %s (%s); pages are re-checked "
                 "under every pause", self.engine, self.pause_budget_ms,
                 "present" if sd.supported else "absent", sd.reason)
        self.load_state()
        self._server = await transport.listen(self.socket_path, self._control_client)
        self.source.attach(self.vms, self.scan)
        self.scan()
        t = asyncio.get_running_loop().create_task(self._scan_loop(), name="hostd-scan")
        self._tasks.add(t)
        log.info("hostd listening on %s, VMs from %s", self.socket_path,
                 self.source.where)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.autopolicy is not None:
            await self.autopolicy.release()
        self.table.close_all()
        for guard in self._guards.values():
            guard.close()
        self._guards.clear()
        if self._server is not None:
            self._server.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        self._ksm.close()  # the KSM settings hostd found, back (and its save file removed)
        self.source.close()


async def serve(socket_path: str, run_dir: str, batch_pages: int | None = None,
                ready: asyncio.Event | None = None, engine: str = "short",
                pause_budget_ms: float | None = None, metrics: str | None = None,
                metrics_registry=None, policy: str = "manual", memory_budget_bytes: int | None = None,
                policy_file: str | None = None, source: VMSource | None = None) -> None:
    """Run hostd until cancelled (``metrics``: serve Prometheus metrics on ADDR:PORT;
    ``policy="auto"``: autopolicy decides every VM's targets, SIGHUP re-reads its file;
    ``source``: where the VMs come from, default the run dir's; e.g. libvirt's domains)."""
    d = HostDaemon(socket_path, run_dir, batch_pages, engine, pause_budget_ms)
    if source is not None:
        d.source = source
    if policy == "auto":
        from heapballoon.host.autopolicy import AutoPolicy

        d.autopolicy = AutoPolicy(d.table, memory_budget_bytes, policy_file)  # a bad file: hostd does not start
    await d.start()
    loop = asyncio.get_running_loop()
    if d.autopolicy is not None:
        d._tasks.add(loop.create_task(d.autopolicy.run(), name="hostd-policy"))
        try:
            loop.add_signal_handler(signal.SIGHUP, d.autopolicy.reload)
        except (RuntimeError, ValueError):  # not the main thread (tests): no SIGHUP
            pass
    server = None
    if metrics:
        from heapballoon.driver.metrics import parse_listen

        server = vmstatus.start_metrics(d.table, d.autopolicy, *parse_listen(metrics), registry=metrics_registry)
        log.info("Prometheus metrics on http://%s/metrics", metrics)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        if d.autopolicy is not None:
            try:
                loop.remove_signal_handler(signal.SIGHUP)
            except (RuntimeError, ValueError):
                pass
        if server is not None:
            server.shutdown()
            server.server_close()
        await d.stop()


def main(argv: list[str] | None = None, libvirt_source=None) -> int:
    """``heapballoon hostd``. ``libvirt_source(uri, engine)``: the VMSource for ``--libvirt``
    (heapballoon.cli passes libvirt.backend's; host/ does not import libvirt/)."""
    p = argparse.ArgumentParser(prog="heapballoon hostd", description="host memory manager for heapballoon VMs")
    p.add_argument("--socket", help="control socket (default $HEAPBALLOON_HOST_SOCKET or "
                   f"{transport.DEFAULT_HOST_SOCKET})")
    p.add_argument("--run-dir", help=f"heapballoon run dir; VMs are RUN_DIR/vms/NAME (default $HEAPBALLOON_RUN_DIR or {DEFAULT_RUN_DIR})")
    p.add_argument("--batch-pages", type=int, default=None, help="batch engine: pages per VM pause (default 8192)")
    p.add_argument("--engine", choices=("short", "batch"), default="short",
                   help="short: pre-check, then pauses bounded in time (default); batch: the first engine")
    p.add_argument("--pause-budget-ms", type=float, default=None,
                   help=f"short engine: planned length of one pause (default {DEFAULT_PAUSE_BUDGET_MS})")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics, e.g. 127.0.0.1:9478")
    p.add_argument("--policy", choices=("manual", "auto"), default="manual",
                   help="manual: targets by hand (default); auto: hostd decides every VM's targets "
                   "(free guest memory through virtio-balloon first, then idle JVM heap)")
    p.add_argument("--memory-budget", metavar="SIZE", help="--policy auto: cap on the VMs' host-resident "
                   "total, e.g. 1400M (default: from the host's free memory)")
    p.add_argument("--policy-file", metavar="PATH", help="--policy auto: TOML policy file, re-read on SIGHUP "
                   "(default /etc/heapballoon/policy.toml if present)")
    p.add_argument("--libvirt", metavar="URI", nargs="?", const="qemu:///system",
                   help="manage libvirt's domains (default URI qemu:///system) instead of RUN_DIR's VMs")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.libvirt is not None and args.engine != "short":
        p.error("--libvirt works with the short engine only")
    if args.libvirt is not None and libvirt_source is None:
        raise UsageError("this hostd was started without libvirt support: run `heapballoon hostd --libvirt`")
    from heapballoon.policy.config import memory_budget_option

    memory_budget_bytes = memory_budget_option(args.policy, args.memory_budget, args.policy_file)  # UsageError
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await serve(transport.host_socket_path(args.socket), run_dir_path(args.run_dir), args.batch_pages,
                        engine=args.engine, pause_budget_ms=args.pause_budget_ms, metrics=args.metrics,
                        policy=args.policy, memory_budget_bytes=memory_budget_bytes, policy_file=args.policy_file,
                        source=libvirt_source(args.libvirt, args.engine) if args.libvirt is not None else None)
        except asyncio.CancelledError:
            log.info("hostd stopping")

    asyncio.run(run())
    return 0

