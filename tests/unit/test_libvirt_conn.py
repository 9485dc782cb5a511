"""libvirt glue at unit level: a domain's QEMU found by its -uuid in a fake /proc; the monitor
adapter maps libvirt states so the short engine never pauses a migrating domain (fake domain)."""

from __future__ import annotations

import os
import subprocess

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.libvirt import conn as lv
from heapballoon.libvirt import domxml
from heapballoon.linux.procfs import ProcFS
from hbtest import wait_for

UUID = "493b902c-5344-40b0-9e2c-3edd025b2502"


def _proc(tmp_path, pid: int, argv: list[str], state: str = "S", uid: int = 0) -> None:
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "stat").write_text(f"{pid} (x) {state} " + " ".join(["0"] * 40) + "\n")
    (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")


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
        self._state, self._reason = 3, 1  # VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER
        return 0

    def resume(self):
        self.calls.append("resume")
        self._state, self._reason = 1, 0  # VIR_DOMAIN_RUNNING
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
    engine.qmp, engine.name, engine.debt, engine._state_checked = _monitor(dom), "d", None, False
    with pytest.raises(ReclaimError, match="migrate"):
        engine.run_pause([], 0)
    assert dom.calls == []  # never paused


QEMU_UID = 64055  # libvirt-qemu on Debian
LIVE_XML = f"""<domain type='qemu' id='3'><name>victim</name><uuid>{UUID}</uuid>
  <memory unit='KiB'>1048576</memory>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+{QEMU_UID}:+107</label></seclabel>
</domain>"""


def test_a_fake_qemu_of_another_user_is_never_the_domains(tmp_path):
    """A local user's ``qemu -uuid <victim>`` (lower pid, so it came first) is refused: the
    domain's QEMU runs as the uid of libvirt's DAC label, from the live XML."""
    qemu_uid = lv.dac_uid(domxml.facts(LIVE_XML).dac_label)
    assert qemu_uid == QEMU_UID
    _proc(tmp_path, 20, ["/tmp/qemu-system-x86_64", "-uuid", UUID], uid=1000)  # the fake
    procfs = ProcFS(str(tmp_path))
    assert lv.qemu_pid(UUID, procfs, name="victim", qemu_uid=qemu_uid, pid_dir=str(tmp_path / "none")) == 0
    _proc(tmp_path, 30, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], uid=QEMU_UID)
    assert lv.qemu_pid(UUID, procfs, name="victim", qemu_uid=qemu_uid, pid_dir=str(tmp_path / "none")) == 30
    assert lv.qemu_pid(UUID, procfs) == 0  # no label: root only


def test_libvirts_pid_file_is_the_pid_source_when_root_wrote_it(tmp_path):
    proc, run = tmp_path / "proc", tmp_path / "run"
    proc.mkdir()
    run.mkdir(mode=0o755)
    _proc(proc, 20, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], uid=QEMU_UID)
    _proc(proc, 30, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], uid=QEMU_UID)
    procfs = ProcFS(str(proc))
    (run / "victim.pid").write_text("30\n")
    assert lv.qemu_pid(UUID, procfs, name="victim", qemu_uid=QEMU_UID, pid_dir=str(run)) == 30
    (run / "victim.pid").write_text("40\n")  # stale: pid 40 is no QEMU of the domain
    assert lv.qemu_pid(UUID, procfs, name="victim", qemu_uid=QEMU_UID, pid_dir=str(run)) == 0
    if os.geteuid() == 0:  # a pid file someone else could have written is no pid file: scan
        os.chown(run / "victim.pid", 65534, 65534)
        assert lv.qemu_pid(UUID, procfs, name="victim", qemu_uid=QEMU_UID, pid_dir=str(run)) == 20


def test_pid_file_reader_refuses_symlinks_and_writable_files(tmp_path):
    from heapballoon.errors import KernelError
    from heapballoon.linux.pidfile import read_root_pid

    (tmp_path / "real.pid").write_text("123\n")
    (tmp_path / "link.pid").symlink_to(tmp_path / "real.pid")
    (tmp_path / "bad.pid").write_text("12 monkeys\n")
    os.chmod(tmp_path, 0o755)
    if os.geteuid() == 0:
        assert read_root_pid(str(tmp_path), "real.pid") == 123
    for name in ("link.pid", "bad.pid", "../real.pid", "missing.pid"):
        with pytest.raises(KernelError):
            read_root_pid(str(tmp_path), name)
    os.chmod(tmp_path / "real.pid", 0o666)
    with pytest.raises(KernelError, match="writable"):
        read_root_pid(str(tmp_path), "real.pid")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as nobody")
def test_a_real_fake_qemu_run_by_nobody_is_refused(tmp_path):
    """A real process, run as ``nobody`` with argv[0] ``qemu-system-x86_64`` and ``-uuid`` of
    the victim, in the real /proc: hostd must not take it for the domain's QEMU."""
    fake = subprocess.Popen(["qemu-system-x86_64", "-c", "read x", "sh", "-uuid", UUID],  # sh's builtin read
                            executable="/bin/sh", user=65534, group=65534, stdin=subprocess.PIPE, cwd="/")
    try:
        procfs = ProcFS()
        def execd():  # the child has exec'd: its argv is the fake's
            try:
                return procfs.cmdline(fake.pid)[0] == "qemu-system-x86_64"
            except Exception:  # noqa: BLE001 - not there yet
                return False
        wait_for(execd, 5, 0.01, what="the fake QEMU exec'd")
        assert procfs.euid_egid(fake.pid)[0] == 65534
        uid = lv.dac_uid(domxml.facts(LIVE_XML).dac_label)
        assert lv.qemu_pid(UUID, name="victim", qemu_uid=uid, pid_dir=str(tmp_path)) == 0
    finally:
        fake.kill()
        fake.wait()


def test_a_domain_resumed_by_someone_under_hostds_pause_is_not_punched():
    """Row 6 through libvirt: after hostd's virDomainSuspend and the re-check, someone's
    ``virsh resume`` and a guest write; hostd asks libvirt before the punch and stops."""
    from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
    from heapballoon.qemu.layout import GuestLayout, RamRange
    from heapballoon.host.shortpause import ShortPauseReclaimer

    libvirt = lv.import_binding()
    dom = FakeDom(libvirt.VIR_DOMAIN_RUNNING)
    fd = os.memfd_create("hb-test-ram")
    os.ftruncate(fd, 256 * P)
    os.pwrite(fd, bytes(64 * P), 0)
    ram = GuestRam(fd, 256 * P)
    real = ram.view

    class View:
        def __getattr__(self, name):
            return getattr(real, name)

        def is_zero(self, off, length):
            zero = real.is_zero(off, length)
            if dom._state == libvirt.VIR_DOMAIN_PAUSED:  # hostd's pause: someone resumes, the guest writes
                dom._state = libvirt.VIR_DOMAIN_RUNNING
                os.pwrite(fd, b"mine", 10 * P)
            return zero

    ram._view = View()
    layout = GuestLayout([RamRange(0x100000, 256 * P, 0)], ram_bytes=256 * P)
    res = ShortPauseReclaimer(ram, layout, _monitor(dom)).reclaim([(0x100, 64)])
    assert os.pread(fd, 4, 10 * P) == b"mine"
    assert res.punched_pages == 0 and "resumed by another client" in res.error
    ram.close()
