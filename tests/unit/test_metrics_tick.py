"""The driver's Prometheus collector exports the tick duration and an unmet node target."""

from heapballoon.driver.metrics import DriverCollector
from heapballoon.status import DriverStatus, NodeStatus


class FakeDriver:
    def status(self) -> dict:
        node = NodeStatus(target_bytes=2 << 30, balloon_bytes=0, reclaimed_bytes=0, ksm="active", ksm_boosted=False,
                          zero_pfn_known=True, bad_messages=0, unmet_bytes=2 << 30, unmet_reason="no room",
                          tick_ms=2.5)
        return DriverStatus((), node).to_dict()


def test_tick_seconds_and_unmet_bytes():
    values = {m.name: m.samples[0].value for m in DriverCollector(FakeDriver()).collect() if m.samples}
    assert values["heapballoon_tick_seconds"] == 0.0025
    assert values["heapballoon_node_target_unmet_bytes"] == 2 << 30
