"""libvirt glue at unit level: a domain's QEMU found by its -uuid in a fake /proc; the monitor
adapter maps libvirt states so the short engine never pauses a migrating domain (fake domain)."""

from __future__ import annotations

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.libvirt import conn as lv
from heapballoon.linux.procfs import ProcFS

UUID = "493b902c-5344-40b0-9e2c-3edd025b2502"


def _proc(tmp_path, pid: int, argv: list[str], state: str = "S") -> None:
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "stat").write_text(f"{pid} (x) {state} " + " ".join(["0"] * 40) + "\n")


def test_qemu_pid_is_found_by_uuid_only_for_a_live_qemu(tmp_path):
    _proc(tmp_path, 10, ["/usr/bin/qemu-system-x86_64", "-name", "guest=a", "-uuid", "00000000-0000-0000-0000-000000000000"])
    _proc(tmp_path, 11, ["/bin/sh", "-c", f"echo -uuid {UUID}"])          # names it, but not a QEMU
    _proc(tmp_path, 12, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], state="Z")  # dead
    assert lv.qemu_pid(UUID, ProcFS(str(tmp_path))) == 0
    _proc(tmp_path, 13, ["/usr/bin/qemu-system-x86_64", "-name", "guest=b", "-uuid", UUID.upper()])
    assert lv.qemu_pid(UUID, ProcFS(str(tmp_path))) == 13
    assert lv.qemu_pid(UUID, ProcFS(str(tmp_path / "nope"))) == 0


class FakeDom:
    def __init__(self, state, reason=0, job=None):
        self._state, self._reason, self._job = state, reason, job or {}
        self.calls = []

    def state(self):
        return [self._state, self._reason]

    def jobStats(self):
        return self._job

    def suspend(self):
        self.calls.append("suspend")
        return 0

    def resume(self):
        self.calls.append("resume")
        return 0


def _monitor(dom, flag=False) -> lv.DomainMonitor:
    m = lv.DomainMonitor("test:///default", UUID, lambda: flag)
    m._dom = dom
    return m


def test_monitor_maps_states_and_refuses_migration():
    libvirt = lv.import_binding()
    assert _monitor(FakeDom(libvirt.VIR_DOMAIN_RUNNING)).execute("query-status") == {"status": "running"}
    assert _monitor(FakeDom(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)).execute(
        "query-status") == {"status": "paused"}
    # paused for a migration or a snapshot is not "paused by someone else": the engine refuses it
    assert _monitor(FakeDom(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)).execute(
        "query-status")["status"].startswith("paused-")
    job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT}
    assert _monitor(FakeDom(libvirt.VIR_DOMAIN_RUNNING, job=job)).execute("query-status") == {"status": "migrate"}
    assert _monitor(FakeDom(libvirt.VIR_DOMAIN_RUNNING), flag=True).execute("query-status") == {"status": "migrate"}
    dom = FakeDom(libvirt.VIR_DOMAIN_RUNNING)
    m = _monitor(dom)
    m.execute("stop")
    m.execute("cont")
    assert dom.calls == ["suspend", "resume"]


def test_short_engine_refuses_a_migrating_domain():
    from heapballoon.host.shortpause import ShortPauseReclaimer

    libvirt = lv.import_binding()
    job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN}
    dom = FakeDom(libvirt.VIR_DOMAIN_RUNNING, job=job)
    engine = ShortPauseReclaimer.__new__(ShortPauseReclaimer)
    engine.qmp, engine.name = _monitor(dom), "d"
    with pytest.raises(ReclaimError, match="migrate"):
        engine.run_pause([], 0)
    assert dom.calls == []  # never paused
