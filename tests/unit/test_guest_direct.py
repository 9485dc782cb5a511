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


def test_a_balloon_still_inflating_is_met_ahead_by_what_it_took_last_tick():
    # 150 MiB of guest RAM went into the virtio-balloon (MemTotal fell) and 40 MiB remain
    # available: short 60, and the balloon, going on, takes 150 more before the next tick
    step = LAW.step(GuestMemory(874 * MIB, 40 * MIB, 0.0, 150 * MIB), target_bytes=0, balloon_bytes=0)
    assert (step.target_bytes, step.reason) == (210 * MIB, "short")
    # above the reserve, but the balloon's next 150 MiB would take it 50 below: give that now
    step = LAW.step(GuestMemory(874 * MIB, 200 * MIB, 0.0, 150 * MIB), target_bytes=0, balloon_bytes=0)
    assert (step.target_bytes, step.reason) == (50 * MIB, "taken")
    # plenty left even if it goes on: hold
    assert LAW.step(GuestMemory(874 * MIB, 300 * MIB, 0.0, 150 * MIB), 0, 0).reason == "hold"
    # the old law's answer without the balloon's growth (a balloon with deflate-on-oom: MemTotal stays)
    assert LAW.step(mem(40), 0, 0).target_bytes == 60 * MIB


def test_memtotal_falling_between_ticks_is_the_balloons_growth(tmp_path):
    from heapballoon.guest.direct import LocalPolicy

    procfs = fake_proc(tmp_path, 500)
    local = LocalPolicy(LAW, procfs)
    assert local.guest_memory().balloon_growth_bytes == 0  # first read: nothing to compare with
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: {874 * 1024} kB\nMemAvailable: {40 * 1024} kB\n")
    assert local.guest_memory().balloon_growth_bytes == 150 * MIB
    assert local.guest_memory().balloon_growth_bytes == 0  # it stopped
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: {1024 * 1024} kB\nMemAvailable: {500 * 1024} kB\n")
    assert local.guest_memory().balloon_growth_bytes == 0  # deflating is not growth


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
    assert drv.local.law.free_idle_heap  # the default: idle heap free ahead
    assert gd.main(["--socket", str(tmp_path / "s"), "--idle-heap", "on-demand"]) == 0
    assert not seen["driver"].local.law.free_idle_heap
    assert gd.main(["--socket", str(tmp_path / "s"), "--uplink", "/dev/vport1p1"]) == 0
    assert not seen["driver"].direct and seen["driver"].local.law is None
    with pytest.raises(SystemExit) as exc:
        gd.main(["--reserve", "lots"])
    assert exc.value.code == 2


def balloon_tree(tmp_path, features: str | None, device: str = "0x0005"):
    """A /sys/bus/virtio/devices fixture: a console (0x0003) and, unless None, a balloon."""
    root = tmp_path / "virtio"
    (root / "virtio0").mkdir(parents=True)
    (root / "virtio0" / "device").write_text("0x0003\n")
    (root / "virtio0" / "features").write_text("1" * 64 + "\n")
    if features is not None:
        (root / "virtio3").mkdir()
        (root / "virtio3" / "device").write_text(device + "\n")
        (root / "virtio3" / "features").write_text(features + "\n")
    return str(root)


def test_balloon_features_are_read_from_the_negotiated_bit_string(tmp_path):
    from heapballoon.linux.virtioballoon import BalloonFeatures, VirtioBalloon

    # QEMU's virtio-balloon-pci,free-page-reporting=on as Linux 6.1 negotiated it: bits 1, 5, 32
    libvirt_default = "01000100000000000000000000000000100000000000000000000000000000000"
    assert VirtioBalloon(balloon_tree(tmp_path / "a", libvirt_default)).features() == BalloonFeatures(
        "virtio3", deflate_on_oom=False, free_page_reporting=True)
    ours = "0110010000000000000000000000000010000000000000000000000000000000"  # + deflate-on-oom
    assert VirtioBalloon(balloon_tree(tmp_path / "b", ours)).features().deflate_on_oom
    assert VirtioBalloon(balloon_tree(tmp_path / "c", None)).features() is None  # no balloon device
    assert VirtioBalloon(str(tmp_path / "none")).features() is None  # no virtio bus at all
    with pytest.raises(KernelError, match="not a feature bit string"):
        VirtioBalloon(balloon_tree(tmp_path / "d", "01x")).features()


def test_announce_idle_heap_mode_says_what_the_balloon_can_do(tmp_path, caplog):
    from heapballoon.guest.direct import announce_idle_heap_mode
    from heapballoon.linux.virtioballoon import VirtioBalloon

    caplog.set_level("INFO", logger="heapballoon.guest")
    assert announce_idle_heap_mode("free", VirtioBalloon(balloon_tree(tmp_path / "a", "010001"))) == "free"
    assert "deflate-on-oom off, free page reporting on; keeping the JVMs' idle heap free ahead" in caplog.text
    caplog.clear()
    assert announce_idle_heap_mode("on-demand", VirtioBalloon(balloon_tree(tmp_path / "b", "010001"))) == "on-demand"
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "OOM-kill its largest process" in caplog.text
    caplog.clear()
    assert announce_idle_heap_mode("on-demand", VirtioBalloon(balloon_tree(tmp_path / "c", "011000"))) == "on-demand"
    assert [r.levelname for r in caplog.records] == ["INFO"] and "deflate-on-oom on" in caplog.text
    caplog.clear()
    assert announce_idle_heap_mode("free", VirtioBalloon(balloon_tree(tmp_path / "d", None))) == "free"
    assert "no virtio-balloon in this guest" in caplog.text


def test_free_idle_heap_keeps_the_target_at_the_idle_heap_and_never_shrinks_below_it():
    free = LocalLaw(reserve_bytes=100 * MIB, band_bytes=50 * MIB, free_idle_heap=True)
    # plenty available (nothing asked yet): the idle heap is given all the same
    step = free.step(mem(600), 0, 0, idle_bytes=450 * MIB)
    assert (step.target_bytes, step.reason) == (450 * MIB, "idle")
    assert LAW.step(mem(600), 0, 0, idle_bytes=450 * MIB).target_bytes == 0  # on demand: nothing asked
    # the host gave memory back: the on-demand law would shrink to 0; the idle heap stays given
    assert LAW.step(mem(900), 450 * MIB, 450 * MIB, idle_bytes=450 * MIB).target_bytes == 0
    assert free.step(mem(900), 450 * MIB, 450 * MIB, idle_bytes=450 * MIB).target_bytes == 450 * MIB
    # short beyond the idle heap: the reserve law still grows it
    step = free.step(mem(40), 450 * MIB, 450 * MIB, idle_bytes=450 * MIB)
    assert (step.target_bytes, step.reason) == (510 * MIB, "short")
