"""The short-pause engine on a real memfd with a fake (synchronous) QMP: pre-check, re-check
under the pause, time-budgeted pauses, pause parts, and fault injection — a guest write that
lands between the pre-check and the pause must never be lost."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from heapballoon.errors import KernelError, ReclaimError
from heapballoon.host import resumeguard
from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
from heapballoon.qemu.layout import GuestLayout, RamRange
from heapballoon.host.pausestats import PauseSample, PauseStats, breakdown
from heapballoon.host.shortpause import MIN_PAUSE_BYTES, PauseModel, ShortPauseReclaimer, take_bytes

PAGES = 4096
BASE_PFN = 0x100  # gpa 1 MiB maps to offset 0 (lay_for)




def fill(ram: GuestRam, page: int, count: int, byte: int = 0) -> None:
    os.pwrite(ram.fd, bytes([byte]) * (count * P), page * P)


def lay_for(ram: GuestRam) -> GuestLayout:
    return GuestLayout([RamRange(0x100000, ram.size_bytes, 0)], ram_bytes=ram.size_bytes)


class SyncFakeQMP:
    """A VM's QMP as the engine sees it; ``on_stop`` runs when the VM is paused (the fault
    injection point: the guest's last write before the pause)."""

    def __init__(self, status="running", on_stop=None, fail_on=None):
        self.status = status
        self.resumes = 0
        self.calls: list[str] = []
        self.on_stop = on_stop
        self.fail_on = fail_on

    def execute(self, cmd, arguments=None):
        self.calls.append(cmd)
        if cmd == self.fail_on:
            raise ReclaimError(f"QMP {cmd} failed: injected")
        if cmd == "query-status":
            return {"status": self.status, "running": self.status == "running"}
        if cmd == "stop":
            if self.on_stop is not None:
                self.on_stop()
            self.status = "paused"
        if cmd == "cont":
            self.status = "running"
            self.resumes += 1
        return {}

    def resume_count(self):
        return self.resumes


def test_precheck_classifies_holes_data_and_zero(ram):
    fill(ram, 0, 300)               # dirty zeros
    fill(ram, 7, 1, 0x41)           # data
    os.pwrite(ram.fd, b"\x01", 260 * P + P - 1)  # one byte at a page's end
    pre = ram.precheck([(0, 1000 * P)])
    assert (pre.already_pages, pre.skipped_nonzero_pages, pre.candidate_pages) == (700, 2, 298)
    assert pre.candidates == ((0, 7 * P), (8 * P, 252 * P), (261 * P, 39 * P))
    assert ram.resident_bytes() == 300 * P  # looking allocates nothing, punches nothing
    work = ram.recheck_and_punch(list(pre.candidates))
    assert (work.punched_pages, work.skipped_nonzero_pages) == (298, 0)
    assert ram.resident_bytes() == 2 * P
    assert os.pread(ram.fd, P, 7 * P) == b"\x41" * P


def test_recheck_skips_pages_written_after_the_precheck(ram):
    fill(ram, 0, 512)
    pre = ram.precheck([(0, 512 * P)])
    assert pre.candidates == ((0, 512 * P),)
    os.pwrite(ram.fd, b"late", 300 * P + 17)        # the guest writes after the look
    work = ram.recheck_and_punch(list(pre.candidates))
    assert (work.punched_pages, work.skipped_nonzero_pages) == (511, 1)
    assert os.pread(ram.fd, 4, 300 * P + 17) == b"late"
    assert work.check_s > 0 and work.punch_s > 0


def test_engine_pauses_in_parts_and_counts_every_page_once(ram):
    fill(ram, 0, 2048)
    fill(ram, 100, 3, 0x22)
    qmp = SyncFakeQMP()
    model = PauseModel(budget_ms=5.0, stop_ms=0.0, cont_ms=0.0, other_ms=0.0, work_ns_per_byte=4e6 / (256 * P))
    rec = ShortPauseReclaimer(ram, lay_for(ram), qmp, model)
    assert model.pause_bytes() == 256 * P  # 4 ms of the 5 ms budget at that rate
    res = rec.reclaim([(BASE_PFN, 3000), (BASE_PFN + 5, 5), (BASE_PFN + PAGES, 9)])
    assert res.error == ""
    assert (res.punched_pages, res.skipped_nonzero_pages, res.already_pages, res.rejected_pages) == (2045, 3, 952, 14)
    assert res.reported_pages == 3000 + 5 + 9
    assert len(res.pauses) == res.batches == len(res.pauses_ms) >= 2
    assert res.pauses[0].pages == 256  # the budget, not a page count, cut the first pause
    assert sum(s.pages for s in res.pauses) == 2045  # only candidates are re-checked under pauses
    assert qmp.calls == ["query-status", "stop", "cont"] * res.batches and qmp.status == "running"
    for s in res.pauses:
        assert s.total_ms >= s.stop_ms + s.check_ms + s.punch_ms + s.cont_ms - 1e-6
        assert s.check_ms > 0 and s.punch_ms > 0 and s.pages > 0
    assert ram.resident_bytes() == 3 * P


def _reclaim_with_writer(ram, writes: dict[int, bytes], pages: int):
    """Fault injection: the guest writes ``writes`` {byte offset: data} after the pre-check,
    just before the VM stops. Returns the result."""
    def inject():
        for off, data in writes.items():
            os.pwrite(ram.fd, data, off)
    qmp = SyncFakeQMP(on_stop=inject)
    res = ShortPauseReclaimer(ram, lay_for(ram), qmp).reclaim([(BASE_PFN, pages)])
    assert qmp.status == "running" and res.error == ""
    return res


def test_fault_injection_a_write_between_precheck_and_pause_is_never_lost(ram):
    fill(ram, 0, 1024)
    writes = {0: b"first byte", 513 * P + P - 1: b"\x7f", 1023 * P + 100: b"tail"}
    res = _reclaim_with_writer(ram, writes, 1024)
    for off, data in writes.items():
        assert os.pread(ram.fd, len(data), off) == data
    assert res.skipped_nonzero_pages == 3 and res.punched_pages == 1021
    assert ram.resident_bytes() == 3 * P


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, 767), max_size=12), st.integers(1, 255))
def test_fault_injection_property_no_write_is_ever_lost(pages_written, byte):
    fd = os.memfd_create("hb-prop")
    os.ftruncate(fd, 1024 * P)
    ram = GuestRam(fd, 1024 * P)
    try:
        fill(ram, 0, 768)
        writes = {p * P + (p * 37) % P: bytes([byte]) for p in pages_written}
        res = _reclaim_with_writer(ram, writes, 1024)
        for off, data in writes.items():
            assert os.pread(fd, 1, off) == data
        assert res.skipped_nonzero_pages == len(pages_written)
        assert res.punched_pages == 768 - len(pages_written) and res.already_pages == 256
    finally:
        ram.close()


@pytest.mark.parametrize("status", ["paused", "prelaunch", "suspended"])
def test_vm_paused_by_others_is_deferred_and_left_paused(ram, status):
    """Hostile input row 6: hostd holds no pause of its own on such a VM, and whoever does may
    resume it (an RTC wake from S3, another client's cont) between a check and a punch. So
    nothing is checked or punched: the pages come back unprocessed, the VM stays as it was."""
    fill(ram, 0, 16)
    qmp = SyncFakeQMP(status)
    res = ShortPauseReclaimer(ram, lay_for(ram), qmp).reclaim([(BASE_PFN, 16)])
    assert res.punched_pages == 0 and res.unprocessed_pages == 16 and "deferred" in res.error
    assert res.pauses == [] and qmp.calls == ["query-status"] and qmp.status == status
    assert ram.resident_bytes() == 16 * P


def test_refuses_a_migrating_vm_and_punches_nothing(ram):
    fill(ram, 0, 16)
    res = ShortPauseReclaimer(ram, lay_for(ram), SyncFakeQMP("inmigrate")).reclaim([(BASE_PFN, 16)])
    assert "inmigrate" in res.error and res.unprocessed_pages == 16 and res.punched_pages == 0
    assert ram.resident_bytes() == 16 * P


def test_failed_stop_still_conts_and_punches_nothing(ram):
    fill(ram, 0, 16)
    qmp = SyncFakeQMP(fail_on="stop")
    res = ShortPauseReclaimer(ram, lay_for(ram), qmp).reclaim([(BASE_PFN, 16)])
    assert "stop" in res.error and qmp.calls == ["query-status", "stop", "cont"]
    assert res.unprocessed_pages == 16 and ram.resident_bytes() == 16 * P
    assert len(res.pauses) == 1 and res.pauses[0].check_ms == 0.0


def test_error_under_the_pause_conts(ram, monkeypatch):
    fill(ram, 0, 64)
    qmp = SyncFakeQMP()

    def boom(fd, off, length):
        raise KernelError("fallocate: injected I/O error")

    monkeypatch.setattr(resumeguard, "punch_holding_gil", boom)
    res = ShortPauseReclaimer(ram, lay_for(ram), qmp).reclaim([(BASE_PFN, 64)])
    assert "injected" in res.error and qmp.calls[-1] == "cont" and qmp.status == "running"
    assert res.unprocessed_pages == 64


def test_take_bytes_cuts_at_pages():
    runs = [(0, 3 * P), (10 * P, 5 * P)]
    assert take_bytes(runs, 4 * P) == ([(0, 3 * P), (10 * P, P)], [(11 * P, 4 * P)])
    assert take_bytes(runs, 100 * P) == (runs, [])
    assert take_bytes(runs, 3 * P) == ([(0, 3 * P)], [(10 * P, 5 * P)])


def test_pause_model_learns_and_stays_bounded():
    m = PauseModel(budget_ms=5.0, stop_ms=1.0, cont_ms=0.5, other_ms=0.0, work_ns_per_byte=1.0)
    first = m.pause_bytes()
    assert first == int(2.5e6) // P * P
    assert m.plan(first + P) == first + P  # a remainder that fits the whole budget: one pause
    assert m.plan(10 * first) == first
    # a slow pause (work twice as costly, 1 ms unexplained) shrinks the next one at once
    m.learn(PauseSample(1.0, 3.0, 2.0, 0.5, 7.5, 0), 2_500_000)
    assert m.work_ns_per_byte == pytest.approx(1.6) and m.other_ms == pytest.approx(0.3)
    assert m.pause_bytes() < first * 0.6
    # a fast one lowers the rate only part of the way
    m.learn(PauseSample(1.0, 0.5, 0.5, 0.5, 2.5, 0), 2_500_000)
    assert 0.4 < m.work_ns_per_byte < 2.0
    # stop alone eats the budget: still 40 % of the budget's worth of work per pause
    m.stop_ms = 10.0
    assert m.pause_bytes() == int(2e6 / m.work_ns_per_byte) // P * P
    m.work_ns_per_byte = 1e6  # and a rate so slow nothing fits: some progress all the same
    assert m.pause_bytes() == MIN_PAUSE_BYTES
    with pytest.raises(ValueError):
        PauseModel(budget_ms=0)


def test_pause_breakdown_and_totals():
    stats = PauseStats(window=3)
    samples = [PauseSample(1.0, 2.0, 3.0, 0.5, 7.0 + i, 10, 5.0) for i in range(4)]
    stats.add(samples, punched_bytes=1 << 29)
    b = stats.breakdown()
    assert set(b) == {"stop", "check", "punch", "cont", "total", "guest"}
    assert b["total"] == {"p50": 9.0, "p99": 10.0, "max": 10.0}  # the window keeps the last 3
    assert stats.pauses == 4 and stats.pause_ms_sum == 7 + 8 + 9 + 10
    assert stats.pause_ms_per_gib == pytest.approx(68.0) and stats.guest_ms_per_gib == pytest.approx(40.0)
    assert breakdown([])["stop"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_pause_boost_raises_and_restores_priority():
    import threading

    from heapballoon.host.shortpause import PAUSE_NICE, PauseBoost

    ready, done = threading.Event(), threading.Event()
    vcpu = threading.Thread(target=lambda: (ready.set(), done.wait(10)))  # plays a vCPU thread
    vcpu.start()
    ready.wait(10)
    try:
        tid, vtid = threading.get_native_id(), vcpu.native_id
        before, vbefore = os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(os.PRIO_PROCESS, vtid)
        boost = PauseBoost((999_999_999,), vcpu_tids=(vtid,))  # no such thread: ignored
        with boost:
            inside = os.getpriority(os.PRIO_PROCESS, tid)
            v_paused = os.getpriority(os.PRIO_PROCESS, vtid)
            with boost.stopping():
                v_stopping = os.getpriority(os.PRIO_PROCESS, vtid)
            v_after = os.getpriority(os.PRIO_PROCESS, vtid)
        assert os.getpriority(os.PRIO_PROCESS, tid) == before
        assert v_paused == v_after == vbefore == os.getpriority(os.PRIO_PROCESS, vtid)
        if os.geteuid() == 0:  # lowering nice needs CAP_SYS_NICE
            assert inside == min(before, PAUSE_NICE) and v_stopping == min(vbefore, PAUSE_NICE)
        else:
            assert inside == before and v_stopping == vbefore
    finally:
        done.set()
        vcpu.join()


def test_several_reports_share_pauses_and_keep_their_own_counts(ram):
    fill(ram, 0, 1000)
    fill(ram, 10, 1, 0x01)     # in report A
    fill(ram, 600, 2, 0x02)    # in report B
    writes = {700 * P: b"late"}  # report B, written after the pre-check

    def inject():
        for off, data in writes.items():
            os.pwrite(ram.fd, data, off)
    qmp = SyncFakeQMP(on_stop=inject)
    class FixedModel(PauseModel):
        def learn(self, sample, work_bytes):
            pass

    model = FixedModel(budget_ms=5.0, stop_ms=0.0, cont_ms=0.0, other_ms=0.0, work_ns_per_byte=4e6 / (400 * P))
    a, b, c = ShortPauseReclaimer(ram, lay_for(ram), qmp, model).reclaim_many(
        [[(BASE_PFN, 500)], [(BASE_PFN + 500, 500), (BASE_PFN + 2 * PAGES, 3)], [(BASE_PFN + 1000, 100)]])
    assert (a.punched_pages, a.skipped_nonzero_pages, a.already_pages) == (499, 1, 0)
    assert (b.punched_pages, b.skipped_nonzero_pages, b.already_pages, b.rejected_pages) == (497, 3, 0, 3)
    assert (c.punched_pages, c.already_pages) == (0, 100)
    assert a.error == b.error == c.error == ""
    assert b.pauses == c.pauses == [] and len(a.pauses) == a.batches
    # 997 candidate pages of both reports in pauses of 400: 3 pauses (one per report: 4)
    assert [s.pages for s in a.pauses] == [400, 400, 197]
    assert os.pread(ram.fd, 4, 700 * P) == b"late"
    assert ram.resident_bytes() == 4 * P


def test_procfs_lists_this_process_threads():
    import threading

    from heapballoon.linux.procfs import ProcFS

    ready, done = threading.Event(), threading.Event()

    def park():
        ready.set()
        done.wait(10)

    t = threading.Thread(target=park)
    t.start()
    ready.wait(10)
    try:
        tids = ProcFS().tasks(os.getpid())
        assert os.getpid() in tids and t.native_id in tids and tids == sorted(tids)
    finally:
        done.set()
        t.join()


def test_one_stalled_pause_does_not_shrink_the_next_ones_to_nothing():
    m = PauseModel(budget_ms=5.0, stop_ms=0.5, cont_ms=0.5, other_ms=0.2, work_ns_per_byte=0.3)
    before = m.pause_bytes()
    m.learn(PauseSample(0.5, 1.0, 1.0, 300.0, 302.7, 0), 6_000_000)  # cont stalled 300 ms
    assert m.cont_ms < 1.5 and m.pause_bytes() > before // 2
    for _ in range(3):  # a host that really got slower is followed
        m.learn(PauseSample(3.0, 1.0, 1.0, 3.0, 8.0, 0), 6_000_000)
    assert m.stop_ms > 1.5 and m.cont_ms > 1.5


def test_pause_boost_raises_and_restores_a_session_autogroup(tmp_path):
    import subprocess
    import sys

    from heapballoon.host.shortpause import PAUSE_NICE, PauseBoost
    from heapballoon.linux.procfs import ProcFS

    procfs = ProcFS()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        before = procfs.autogroup(child.pid)
        if before is None:
            pytest.skip("kernel without scheduler autogroups (CONFIG_SCHED_AUTOGROUP)")
        print(f"child autogroup {before}")
        with PauseBoost(autogroup_pids=(child.pid, child.pid)):  # the same group twice: once
            inside = procfs.autogroup(child.pid)
        assert procfs.autogroup(child.pid) == before
        if os.geteuid() == 0:
            assert inside == (before[0], min(before[1], PAUSE_NICE))
    finally:
        child.kill()
        child.wait()
    # a /proc without autogroup files: nothing to do, no error
    (tmp_path / "1").mkdir()
    with PauseBoost(autogroup_pids=(1,), procfs=ProcFS(str(tmp_path))):
        pass


def test_guest_pause_from_qemu_event_timestamps():
    from heapballoon.host.shortpause import _guest_ms

    def ev(name, s, us):
        return {"event": name, "timestamp": {"seconds": s, "microseconds": us}}

    assert _guest_ms([ev("STOP", 100, 999_000), ev("RESUME", 101, 2_500)]) == pytest.approx(3.5)
    assert _guest_ms([ev("RESUME", 100, 0)]) == 0.0 and _guest_ms([]) == 0.0 and _guest_ms(None) == 0.0
    assert _guest_ms([ev("STOP", 5, 0), {"event": "RESUME"}]) == 0.0  # no timestamp
