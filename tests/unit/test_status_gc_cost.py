"""Issue 15's per-JVM fields: soft_cleared, the rate-following headroom and the balloon's GC cost
travel from the agent's state to `status --json` and the metrics; an older agent that sends none
of them reads as 0 / not measured."""

from heapballoon import protocol
from heapballoon.driver.metrics import DriverCollector
from heapballoon.driver.registry import Registry
from heapballoon.status import DriverStatus, JvmStatus, NodeStatus

HELLO = {"type": "hello", "pid": 4242, "name": "svc", "agent_version": "0.1.0", "jvm_version": "21.0.8",
         "jvm_vendor": "x", "gc": "G1", "region_bytes": 1 << 20, "address_mode": "jni", "reclaim_modes": ["ksm"],
         "target_bytes": 0, "heap_max_bytes": 1 << 30, "live_bytes": 200 << 20, "balloon_bytes": 512 << 20}
ISSUE15 = {"soft_cleared": 2, "headroom_bytes": 250 << 20, "alloc_bytes_per_s": 1600 << 20,
           "promotion_reserve_bytes": 149 << 20, "gc_cpu_permille": 183,
           "gc_cpu_permille_no_balloon": 141, "pause_p99_ms": 12, "pause_p99_ms_no_balloon": 9}


def status_of(hello: dict) -> JvmStatus:
    reg = Registry()
    rec = reg.upsert(4242, 1, protocol.Hello.parse(hello))
    return JvmStatus.from_dict(rec.status(512 << 20).to_dict())  # through JSON's shape, as `status --json`


def test_agent_fields_reach_status_and_metrics():
    s = status_of({**HELLO, **ISSUE15})
    assert (s.soft_cleared, s.headroom_bytes, s.alloc_bytes_per_s) == (2, 250 << 20, 1600 << 20)
    assert s.promotion_reserve_bytes == 149 << 20
    assert (s.gc_cpu_share, s.gc_cpu_share_no_balloon, s.pause_p99_ms, s.pause_p99_ms_no_balloon) == (0.183, 0.141, 12, 9)

    class FakeDriver:
        def status(self) -> dict:
            node = NodeStatus(target_bytes=0, balloon_bytes=0, reclaimed_bytes=0, ksm="active", ksm_boosted=False,
                              zero_pfn_known=True, bad_messages=0)
            return DriverStatus((s,), node).to_dict()

    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for m in DriverCollector(FakeDriver()).collect() for x in m.samples}
    labels = (("name", "svc"), ("pid", "4242"))
    assert samples[("heapballoon_jvm_soft_cleared_total", labels)] == 2
    assert samples[("heapballoon_jvm_headroom_bytes", labels)] == 250 << 20
    assert samples[("heapballoon_jvm_promotion_reserve_bytes", labels)] == 149 << 20
    assert samples[("heapballoon_jvm_gc_cpu_share", (("balloon", "no"), *labels))] == 0.141
    assert samples[("heapballoon_jvm_pause_p99_ms", (("balloon", "yes"), *labels))] == 12


def test_an_older_agent_reads_as_not_measured():
    s = status_of(HELLO)
    assert (s.soft_cleared, s.headroom_bytes, s.alloc_bytes_per_s, s.promotion_reserve_bytes) == (0, 0, 0, 0)
    assert (s.gc_cpu_share, s.gc_cpu_share_no_balloon, s.pause_p99_ms, s.pause_p99_ms_no_balloon) == (-1, -1, -1, -1)
