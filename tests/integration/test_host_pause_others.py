"""Hostile input rows 6 and 7: hostd's pause when other actors share the VM's monitor.

A fake QEMU monitor (a real Unix socket, QMP greeting, events) plays the VM; the guest RAM is a
real memfd. Row 6: another client's ``cont`` lands between hostd's re-check and its punch, or
the VM stops running just before hostd's ``stop``: nothing that could have been written is
punched. Row 7: hostd's own ``cont`` gets no answer: hostd owes it, retries until the VM runs,
and the next reclaim does not take hostd's own pause for someone else's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

import pytest

from hbtest import wait_for
from heapballoon.host.contdebt import ContDebt
from heapballoon.host.guestram import PAGE_BYTES as P
from heapballoon.qemu.layout import GuestLayout, RamRange
from heapballoon.qemu.monitor import QMPMonitor
from heapballoon.host.shortpause import ShortPauseReclaimer

BASE_PFN = 0x100  # gpa 1 MiB is RAM offset 0


class FakeQMPServer:
    """QEMU's monitor as hostd sees it: one client at a time, ``status`` changed by ``stop``
    (a STOP event if it was running) and ``cont`` (a RESUME event). ``silent_conts``: that many
    ``cont`` commands get no answer (a QMP timeout) and change nothing. ``on_command(cmd)``
    runs before each answer (a hook for the tests)."""

    def __init__(self, path: str, status: str = "running") -> None:
        self.path, self.status = path, status
        self.silent_conts = 0
        self.on_command = None
        self.calls: list[str] = []
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(4)
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def send(self, msg: dict) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.sendall(json.dumps(msg).encode() + b"\n")

    def event(self, name: str) -> None:
        self.send({"event": name, "timestamp": {"seconds": 1, "microseconds": 0}})

    def other_client_cont(self) -> None:
        """Another monitor client's ``cont``: QEMU sends RESUME to every monitor, ours too,
        before the vCPUs run."""
        self.status = "running"
        self.event("RESUME")

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.conn = conn
            self.send({"QMP": {"version": {}, "capabilities": []}})
            buf = b""
            try:
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, _, buf = buf.partition(b"\n")
                        self._answer(json.loads(line)["execute"])
            except OSError:
                pass
            with self.lock:
                self.conn = None
            conn.close()

    def _answer(self, cmd: str) -> None:
        self.calls.append(cmd)
        if self.on_command is not None:
            self.on_command(cmd)
        if cmd == "stop" and self.status == "running":
            self.status = "paused"
            self.event("STOP")
        elif cmd == "cont":
            if self.silent_conts > 0:
                self.silent_conts -= 1
                return
            if self.status != "running":
                self.status = "running"
                self.event("RESUME")
        ret = {"status": self.status, "running": self.status == "running"} if cmd == "query-status" else {}
        self.send({"return": ret})

    def close(self) -> None:
        self._stop = True
        self.srv.close()


@pytest.fixture
def qemu(tmp_path):
    s = FakeQMPServer(str(tmp_path / "qmp.sock"))
    yield s
    s.close()


def lay_for(ram) -> GuestLayout:
    return GuestLayout([RamRange(0x100000, ram.size_bytes, 0)], ram_bytes=ram.size_bytes)


def zeros(ram, page: int, count: int) -> None:
    os.pwrite(ram.fd, bytes(count * P), page * P)


class HookedView:
    """The engine's view of guest RAM, with ``after_check`` run right after a zero check made
    while the VM is paused: the moment between hostd's re-check and its punch."""

    def __init__(self, real, qemu: FakeQMPServer, after_check) -> None:
        self.real, self.qemu, self.after_check = real, qemu, after_check

    def __getattr__(self, name):
        return getattr(self.real, name)

    def is_zero(self, offset: int, length: int) -> bool:
        zero = self.real.is_zero(offset, length)
        if self.qemu.status == "paused" and self.after_check is not None:
            hook, self.after_check = self.after_check, None
            hook(offset, length)
        return zero


def test_another_clients_cont_between_check_and_punch_loses_nothing(ram, qemu):
    """Row 6: hostd stopped the VM and re-checked 64 zero pages; then another client's
    ``cont`` resumes it and the guest writes one of those pages. That page must keep its data:
    hostd sees the RESUME before it punches and punches nothing more."""
    zeros(ram, 0, 64)
    written = (40 * P + 123, b"written after the other client's cont")

    def resume_and_write(offset, length):
        qemu.other_client_cont()
        os.pwrite(ram.fd, written[1], written[0])  # the running guest's write

    ram.view  # noqa: B018 - made now, so the hook wraps the real one
    ram._view = HookedView(ram._view, qemu, resume_and_write)
    with QMPMonitor(qemu.path, 2.0) as q:
        res = ShortPauseReclaimer(ram, lay_for(ram), q).reclaim([(BASE_PFN, 64)])
    assert os.pread(ram.fd, len(written[1]), written[0]) == written[1]
    assert "resumed by another client" in res.error
    assert res.punched_pages == 0 and res.unprocessed_pages == 64
    assert ram.resident_bytes() == 64 * P


def test_vm_paused_by_someone_just_before_hostds_stop_is_not_punched(ram, qemu):
    """Row 6: the VM runs at hostd's query-status, then is suspended (S3) before hostd's stop
    lands: that stop changes nothing (no STOP event), an RTC wake may resume the vCPUs at any
    time, so nothing is punched, and hostd sends no cont (not its pause to end)."""
    zeros(ram, 0, 32)

    def suspend_before_stop(cmd):
        if cmd == "stop":
            qemu.status = "suspended"

    qemu.on_command = suspend_before_stop
    with QMPMonitor(qemu.path, 2.0) as q:
        res = ShortPauseReclaimer(ram, lay_for(ram), q).reclaim([(BASE_PFN, 32)])
    assert res.punched_pages == 0 and res.unprocessed_pages == 32 and "nothing punched" in res.error
    assert "cont" not in qemu.calls and qemu.status == "suspended"
    assert ram.resident_bytes() == 32 * P


def test_a_cont_that_times_out_is_retried_until_the_vm_runs(ram, qemu, caplog):
    """Row 7: hostd's cont gets no answer; the VM must not stay paused. hostd owes the cont,
    retries on a fresh connection, and says so in its log."""
    zeros(ram, 0, 16)
    qemu.silent_conts = 1
    debt = ContDebt("vm1", lambda: QMPMonitor(qemu.path, 2.0), backoff_first_s=0.05)
    caplog.set_level(logging.INFO, "heapballoon.hostd")
    with QMPMonitor(qemu.path, 0.3) as q:
        res = ShortPauseReclaimer(ram, lay_for(ram), q, debt=debt).reclaim([(BASE_PFN, 16)])
    assert res.punched_pages == 16  # punched under our pause, which the failed cont did not end
    wait_for(lambda: qemu.status == "running" and not debt.owed, 10.0, 0.02, "the VM running again")
    assert qemu.calls.count("cont") >= 2
    assert "cont failed" in caplog.text and "settled" in caplog.text
    debt.close()


def test_the_next_reclaim_ends_hostds_own_pause_rather_than_deferring(ram, qemu):
    """Row 7: a reclaim finds the VM paused while hostd owes it a cont: that pause is hostd's,
    not someone else's. The reclaim ends it, then pauses and punches as usual."""
    zeros(ram, 0, 16)
    qemu.status = "paused"
    debt = ContDebt("vm1", lambda: QMPMonitor(qemu.path, 2.0), backoff_first_s=3600)  # no retry thread run
    debt.owe("QMP at x: no answer in 5.0 s")
    with QMPMonitor(qemu.path, 2.0) as q:
        res = ShortPauseReclaimer(ram, lay_for(ram), q, debt=debt).reclaim([(BASE_PFN, 16)])
    assert res.error == "" and res.punched_pages == 16 and not debt.owed
    assert qemu.calls[:3] == ["qmp_capabilities", "query-status", "cont"]
    assert qemu.calls[-2:] == ["stop", "cont"] and qemu.status == "running"
    debt.close()


def test_an_owed_cont_shows_in_status_and_metrics(tmp_path):
    """Row 7: while hostd owes a VM its cont, ``status --json`` says ``cont_owed`` and the
    metrics say ``heapballoon_vm_cont_owed 1``."""
    from heapballoon.host.vmsession import VMIdentity, VMSession
    from heapballoon.host.vmstatus import HostdCollector, snapshot
    from heapballoon.status import HostStatus

    vm = VMSession(VMIdentity("vm1", str(tmp_path), os.getpid(), 0, 1 << 30, "pfn"))
    assert snapshot(vm, measure=False).status.cont_owed is False
    debt = vm.debt()
    debt.backoff_first_s = 3600  # no retry during the test
    debt.owe("QMP at x: no answer in 5.0 s")
    wire = HostStatus((snapshot(vm, measure=False).status,)).to_dict()  # what hostd's status reply carries
    assert HostStatus.from_dict(wire).vms[0].cont_owed is True, wire["vms"][0]
    samples = {(m.name, s.labels.get("vm")): s.value for m in HostdCollector(lambda: [vm]).collect()
               for s in m.samples}
    assert samples[("heapballoon_vm_cont_owed", "vm1")] == 1.0
    vm.close()


def test_qmp_line_over_the_cap_drops_the_connection(qemu):
    """hostd's QMP reader keeps at most MAX_BUFFERED_BYTES of one line, then gives up."""
    from heapballoon.errors import ReclaimError
    from heapballoon.qemu.monitor import MAX_BUFFERED_BYTES

    def flood(cmd):
        if cmd == "query-status":
            qemu.send({"event": "X" * (MAX_BUFFERED_BYTES + 10)})  # sendall of the one line, newline last

    qemu.on_command = flood
    q = QMPMonitor(qemu.path, 5.0).connect()
    with pytest.raises(ReclaimError, match="over"):
        q.execute("query-status")
    with pytest.raises(ReclaimError, match="not connected"):
        q.resume_count()
