"""Issue 17, the guest's direct way: the local law, the page reporting adapter, and the guest
driver turning MemAvailable into JVM balloon targets with no host channel (fixture /proc, /sys)."""

from __future__ import annotations

import pytest

from heapballoon import protocol
from heapballoon.errors import KernelError
from heapballoon.guest import driver as gd
from heapballoon.guest import supervisor
from heapballoon.guest.locallaw import GuestMemory, LocalLaw
from heapballoon.linux.pagereporting import PageReporting
from heapballoon.linux.procfs import ProcFS

MIB = 1 << 20
LAW = LocalLaw(reserve_bytes=100 * MIB, band_bytes=50 * MIB, max_psi_some=10.0)


def mem(available_mib: int, psi: float | None = 0.0) -> GuestMemory:
    return GuestMemory(1024 * MIB, available_mib * MIB, psi)


def test_law_grows_by_the_shortfall_from_what_the_balloons_hold():
    step = LAW.step(mem(40), target_bytes=0, balloon_bytes=0)
    assert (step.target_bytes, step.reason) == (60 * MIB, "short")
    # balloons lagging behind the target: the target does not run away
    assert LAW.step(mem(40), target_bytes=200 * MIB, balloon_bytes=30 * MIB).target_bytes == 200 * MIB
    # the balloons reached it and the host took the freed pages: short again, grow further
    assert LAW.step(mem(40), target_bytes=200 * MIB, balloon_bytes=200 * MIB).target_bytes == 260 * MIB


def test_default_reserve_is_32_mib_or_3_percent_of_the_guest():
    assert LocalLaw().reserve(1 << 30) == 32 * MIB
    assert LocalLaw().reserve(16 << 30) == int((16 << 30) * 0.03)
    assert LocalLaw().step(mem(20), 0, 0).target_bytes == 12 * MIB


def test_law_holds_in_the_band_and_deflates_by_the_surplus_without_pressure():
    assert LAW.step(mem(140), 300 * MIB, 300 * MIB) .reason == "hold"
    step = LAW.step(mem(550), 300 * MIB, 300 * MIB)  # the host gave 400 MiB back
    assert (step.target_bytes, step.reason) == (0, "plenty")
    assert LAW.step(mem(200), 300 * MIB, 300 * MIB).target_bytes == 250 * MIB
    assert LAW.step(mem(550, psi=25.0), 300 * MIB, 300 * MIB).reason == "pressure"
    assert LAW.step(mem(550, psi=None), 300 * MIB, 300 * MIB).target_bytes == 0  # no PSI in the kernel


def test_page_reporting_order_is_read_and_written_through_its_adapter(tmp_path):
    (tmp_path / "page_reporting_order").write_text("9\n")
    pr = PageReporting(str(tmp_path))
    assert pr.available() and pr.order() == 9
    assert pr.set_order(0) == 0 and (tmp_path / "page_reporting_order").read_text() == "0\n"
    for bad in (-1, 11, True, "0"):
        with pytest.raises(KernelError, match="invalid page_reporting_order"):
            pr.set_order(bad)
    missing = PageReporting(str(tmp_path / "none"))
    assert not missing.available()
    with pytest.raises(KernelError, match="cannot read"):
        missing.order()


def test_virtio_vms_run_the_guest_driver_direct_with_4k_reporting():
    assert supervisor.driver_args({"reclaim": "virtio"}) == ["--reclaim", "direct", "--report-order", "0"]
    assert supervisor.driver_args({"reclaim": "pfn"}) == []
    assert supervisor.driver_args({"reclaim": "virtio", "driver_args": ["--reclaim", "direct"]}) == [
        "--reclaim", "direct"]


def fake_proc(tmp_path, available_mib: int):
    root = tmp_path / "proc"
    (root / "pressure").mkdir(parents=True, exist_ok=True)
    (root / "meminfo").write_text(f"MemTotal: {1024 * 1024} kB\nMemAvailable: {available_mib * 1024} kB\n")
    (root / "pressure" / "memory").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                              "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    return ProcFS(str(root))


def jvm_hello(pid: int, committed_mib: int, live_mib: int) -> protocol.Hello:
    state = protocol.State(heap_max_bytes=committed_mib * MIB, heap_committed_bytes=committed_mib * MIB,
                           live_bytes=live_mib * MIB, balloon_bytes=0, reclaim="direct", chunks=(), chunks_epoch=0)
    return protocol.Hello(pid=pid, name=f"j{pid}", agent_version="t", jvm_version="17", jvm_vendor="t", gc="G1",
                          region_bytes=MIB, address_mode="jni", reclaim_modes=("report", "direct"), target_bytes=0,
                          state=state)


def test_direct_driver_splits_the_laws_target_by_idle_heap_and_tells_agents_direct(tmp_path):
    procfs = fake_proc(tmp_path, available_mib=40)
    drv = gd.GuestDriver(str(tmp_path / "hb.sock"), None, reclaim="direct", law=LAW, procfs=procfs,
                         page_reporting=PageReporting(str(tmp_path / "no-sys")))
    assert drv.node.ticker.verify_pagemap  # direct: balloon pages are counted through pagemap, as in process mode
    big = drv.registry.upsert(101, 1, jvm_hello(101, 1024, 200))
    small = drv.registry.upsert(102, 1, jvm_hello(102, 512, 200))
    for rec in (big, small):
        rec.connected = True
    drv.apply_law()
    assert drv.local.law_target_bytes == 60 * MIB and drv.node_target() == 60 * MIB
    targets = dict((rec.pid, t) for rec, t in drv.node.ticker.tick())
    assert targets[101].reclaim == targets[102].reclaim == "direct"
    assert targets[101].target_bytes + targets[102].target_bytes == 60 * MIB
    assert targets[101].target_bytes > targets[102].target_bytes  # more idle heap, bigger share
    # a target set by hand (heapballoon target all) is a floor the law only raises
    drv.node.book.node_target_bytes = 300 * MIB
    assert drv.node_target() == 300 * MIB
    drv.local.set_report_order()  # no page_reporting in this "kernel": a warning, not a crash


def test_guest_driver_without_a_port_defaults_to_direct(tmp_path, monkeypatch):
    seen = {}

    def fake_serve(driver):
        seen["driver"] = driver
        return 0

    monkeypatch.setattr(gd, "find_port", lambda: None)
    monkeypatch.setattr("heapballoon.driver.daemon.serve", fake_serve)
    assert gd.main(["--socket", str(tmp_path / "s"), "--reserve", "128M"]) == 0
    drv = seen["driver"]
    assert drv.direct and drv.node.ticker.reclaim_pref == "direct" and drv.local.law.reserve_bytes == 128 * MIB
    assert gd.main(["--socket", str(tmp_path / "s"), "--uplink", "/dev/vport1p1"]) == 0
    assert not seen["driver"].direct and seen["driver"].local.law is None
    with pytest.raises(SystemExit) as exc:
        gd.main(["--reserve", "lots"])
    assert exc.value.code == 2
