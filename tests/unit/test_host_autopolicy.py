"""hostd's policy loop, its pure parts: VM readings → the engine's observations → decisions.

A simulated host closes the loop (fakes only: the real loop is tests/vm/test_vm_policy.py).
"""

from dataclasses import replace
from types import SimpleNamespace

import pytest

from heapballoon.host.sessions import SessionTable
from heapballoon.host.autopolicy import AutoPolicy, VMReading, guest_reserve_bytes, read_host, workload_of
from heapballoon.policy import HostObservation

MIB = 1 << 20
GIB = 1 << 30


def reading(name="web", **over) -> VMReading:
    r = VMReading(name=name, memory_bytes=GIB, resident_bytes=900 * MIB, guest_available_bytes=200 * MIB,
                  virtio_held_bytes=0, virtio_target_bytes=0, heap_max_bytes=500 * MIB, heap_held_bytes=0,
                  heap_target_bytes=0, active_fraction=0.2)
    return replace(r, **over)


def host(budget_mib: int | None) -> HostObservation:
    return HostObservation(mem_total_bytes=24 * GIB, mem_available_bytes=20 * GIB,
                           memory_budget_bytes=None if budget_mib is None else budget_mib * MIB)


def test_free_memory_above_the_reserve_is_the_cheap_source():
    w = workload_of(reading(virtio_held_bytes=50 * MIB))
    free, heap = w.sources
    assert (free.kind, heap.kind) == ("guest_free", "heap")
    assert free.reclaimable_bytes == 50 * MIB + 200 * MIB - guest_reserve_bytes(GIB) and free.held_bytes == 50 * MIB
    assert heap.reclaimable_bytes == 500 * MIB
    # a guest short of memory: the room falls below what the balloon holds (it gives back)
    short = workload_of(reading(virtio_held_bytes=50 * MIB, guest_available_bytes=10 * MIB)).sources[0]
    assert short.reclaimable_bytes == 60 * MIB - guest_reserve_bytes(GIB) < short.held_bytes
    assert workload_of(reading(virtio_held_bytes=10 * MIB, guest_available_bytes=0)).sources[0].reclaimable_bytes == 0
    # no statistics yet: keep what is held, take nothing more
    assert workload_of(reading(virtio_held_bytes=30 * MIB, guest_available_bytes=None)).sources[0].reclaimable_bytes == 30 * MIB


def test_a_virtio_vms_freed_heap_is_not_free_memory_for_its_virtio_balloon():
    """A --reclaim virtio guest frees heap itself: that is free guest memory, already handed
    back by free page reporting. Its virtio balloon may take only the rest above the reserve."""
    pfn = workload_of(reading(guest_available_bytes=500 * MIB, heap_held_bytes=300 * MIB)).sources[0]
    virtio = workload_of(reading(guest_available_bytes=500 * MIB, heap_held_bytes=300 * MIB,
                                 reclaim="virtio")).sources[0]
    assert pfn.reclaimable_bytes == 500 * MIB - guest_reserve_bytes(GIB)
    assert virtio.reclaimable_bytes == 200 * MIB - guest_reserve_bytes(GIB)
    short = workload_of(reading(guest_available_bytes=250 * MIB, heap_held_bytes=300 * MIB, reclaim="virtio"))
    assert short.sources[0].reclaimable_bytes == 0


def test_a_pinned_vm_gives_only_its_heap_target():
    w = workload_of(reading(pinned_bytes=300 * MIB))
    assert [s.kind for s in w.sources] == ["heap"] and w.pinned_target_bytes == 300 * MIB


def test_host_reading_from_proc(tmp_path):
    from heapballoon.linux.procfs import ProcFS

    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemAvailable:    400 kB\n")
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text("some avg10=12.50 avg60=1.00 avg300=0.10 total=1\n"
                                                  "full avg10=3.25 avg60=0.00 avg300=0.00 total=2\n")
    h = read_host(7 * MIB, ProcFS(str(tmp_path)))
    assert (h.mem_total_bytes, h.mem_available_bytes, h.psi_some_avg10, h.psi_full_avg10, h.memory_budget_bytes) == (
        1000 * 1024, 400 * 1024, 12.5, 3.25, 7 * MIB)
    assert (h.psi_some_total_us, h.psi_full_total_us) == (1, 2)  # the law's rate (issue 16)
    (tmp_path / "pressure" / "memory").unlink()  # no PSI: no pressure
    assert read_host(None, ProcFS(str(tmp_path))).psi_some_avg10 == 0.0


def _policy(tmp_path, text="") -> AutoPolicy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return AutoPolicy(SessionTable(), policy_path=str(path), clock=lambda: 0.0)


def simulate(policy: AutoPolicy, vms: list[VMReading], budget_mib: int, ticks: int) -> list[VMReading]:
    """A host where a balloon's target is reached by the next tick; free guest pages were
    resident too (the guest had touched them), so each byte the balloons take leaves residence."""
    for t in range(ticks):
        d = policy.decide(vms, host(budget_mib), float(t))
        out = []
        for r in vms:
            w = d.by_key()[r.name]
            free_t, heap_t = w.target_of("guest_free"), min(w.target_of("heap"), r.heap_max_bytes)
            gained = (free_t - r.virtio_held_bytes) + (heap_t - r.heap_held_bytes)
            out.append(replace(r, virtio_held_bytes=free_t, virtio_target_bytes=free_t, heap_held_bytes=heap_t,
                               heap_target_bytes=heap_t, resident_bytes=r.resident_bytes - gained,
                               guest_available_bytes=r.guest_available_bytes - (free_t - r.virtio_held_bytes)))
        vms = out
    return vms


def test_the_budget_is_met_free_memory_first(tmp_path):
    p = _policy(tmp_path)
    vms = simulate(p, [reading("a"), reading("b")], 1400, 10)
    assert sum(r.resident_bytes for r in vms) <= 1400 * MIB
    for r in vms:  # every guest's free memory down to its reserve before heap was taken
        assert r.guest_available_bytes == guest_reserve_bytes(GIB) and r.heap_held_bytes > 0
    assert p.decisions.state in ("clear", "high") and p.status_text().startswith(p.decisions.state)
    assert all(w.reason for w in p.decisions.workloads)


def test_no_budget_pressure_takes_nothing(tmp_path):
    p = _policy(tmp_path)
    vms = simulate(p, [reading("a")], 4000, 3)
    assert vms[0].virtio_held_bytes == 0 and vms[0].heap_held_bytes == 0


def test_a_bad_policy_file_on_reload_keeps_the_last_good_one(tmp_path, caplog):
    p = _policy(tmp_path, "interval_s = 2.0\n")
    assert p.config.interval_s == 2.0
    (tmp_path / "policy.toml").write_text("interval_s = 2.0\nidle_tax = 7\n")
    assert not p.reload()
    assert p.config.interval_s == 2.0
    assert "keeping the last good policy" in caplog.text and "idle_tax" in caplog.text
    (tmp_path / "policy.toml").write_text("interval_s = 3.0\n")
    assert p.reload() and p.config.interval_s == 3.0


def test_a_bad_policy_file_at_start_is_refused(tmp_path):
    from heapballoon.policy import PolicyConfigError

    with pytest.raises(PolicyConfigError, match="idle_tax"):
        _policy(tmp_path, "idle_tax = 7\n")


def test_active_fraction_from_the_guest_jvms_or_the_guest():
    from heapballoon.host.autopolicy import active_fraction
    from heapballoon.host.virtioballoon import BalloonReading

    # the guest's JVMs as hostd holds them: typed (status.JvmStatus; only these two fields are read)
    jvms = [SimpleNamespace(heap_committed_bytes=768 * MIB, live_bytes=150 * MIB),
            SimpleNamespace(heap_committed_bytes=256 * MIB, live_bytes=106 * MIB)]
    assert active_fraction(jvms, None) == 0.25
    stats = BalloonReading(GIB, 300 * MIB, 256 * MIB, GIB, 0, 1.0, 0.0)
    assert active_fraction([], stats) == 0.75  # no JVM: what the guest does not count as available
    assert active_fraction([], None) is None  # nothing known yet: the engine holds the VM's targets
    assert active_fraction([], BalloonReading(GIB, None, None, None, None, None, 0.0)) is None


def test_heap_only_policy_takes_no_guest_free_memory_and_gives_back_what_it_held(tmp_path):
    p = _policy(tmp_path, 'sources = ["heap"]\n')
    # a virtio balloon a policy with both sources left inflated: given back, then kept at 0
    vms = simulate(p, [reading("a", virtio_held_bytes=64 * MIB), reading("b")], 1400, 10)
    assert sum(r.resident_bytes for r in vms) <= 1400 * MIB
    assert all(r.virtio_held_bytes == 0 and r.heap_held_bytes > 0 for r in vms)
    free_only = workload_of(reading(virtio_held_bytes=50 * MIB), ("guest_free",))
    assert free_only.sources[1].reclaimable_bytes == 0 and free_only.sources[0].reclaimable_bytes > 0
