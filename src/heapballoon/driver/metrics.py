"""Prometheus metrics of a driver, served with prometheus_client (`daemon --metrics ADDR:PORT`).

A custom collector reads the driver's status on every scrape, so metrics are never stale and
there is no second copy of the state to keep in step.
"""

from __future__ import annotations

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, REGISTRY

from heapballoon.errors import UsageError

JVM_GAUGES = (
    ("heap_max_bytes", "Maximum heap size"),
    ("heap_committed_bytes", "Committed heap"),
    ("live_bytes", "Live data after the last complete collection, balloon excluded"),
    ("balloon_max_bytes", "The largest balloon the JVM can hold now"),
    ("headroom_bytes", "Free heap the balloon leaves the collector (follows the allocation rate)"),
    ("alloc_bytes_per_s", "Allocation rate the headroom follows (a decaying peak)"),
    ("promotion_reserve_bytes", "Parallel: old-generation space its padded promotion estimate needs free (0 elsewhere)"),
    ("target_bytes", "Balloon target"),
    ("balloon_bytes", "Balloon held in the heap"),
    ("reclaimed_bytes", "Balloon memory verified reclaimed through pagemap"),
)

GC_COST_GAUGES = (
    ("gc_cpu_share", "GC threads' CPU time over the CPU time the JVM could use, with or without a balloon held"),
    ("pause_p99_ms", "99th percentile of recent GC pauses, with or without a balloon held"),
)


class DriverCollector:
    def __init__(self, driver) -> None:
        self.driver = driver

    def collect(self):
        status = self.driver.status()
        for key, doc in JVM_GAUGES:
            g = GaugeMetricFamily(f"heapballoon_jvm_{key}", doc, labels=["pid", "name"])
            for j in status["jvms"]:
                g.add_metric([str(j["pid"]), j["name"]], j[key])
            yield g
        flaps = CounterMetricFamily("heapballoon_jvm_flaps", "Give-backs followed by re-inflation with no rise of the live set",
                                    labels=["pid", "name"])
        for j in status["jvms"]:
            flaps.add_metric([str(j["pid"]), j["name"]], j["flaps"])
        yield flaps
        cleared = CounterMetricFamily("heapballoon_jvm_soft_cleared", "Times the JVM cleared balloon soft references "
                                      "itself (one step from an OutOfMemoryError)", labels=["pid", "name"])
        for j in status["jvms"]:
            cleared.add_metric([str(j["pid"]), j["name"]], j.get("soft_cleared", 0))
        yield cleared
        for key, doc in GC_COST_GAUGES:
            g = GaugeMetricFamily(f"heapballoon_jvm_{key}", doc, labels=["pid", "name", "balloon"])
            for j in status["jvms"]:
                for balloon, suffix in (("yes", ""), ("no", "_no_balloon")):
                    if j.get(key + suffix, -1) >= 0:
                        g.add_metric([str(j["pid"]), j["name"], balloon], j[key + suffix])
            yield g
        node = status["node"]
        yield GaugeMetricFamily("heapballoon_node_target_bytes", "Node balloon target", value=node["target_bytes"])
        yield GaugeMetricFamily("heapballoon_bad_messages", "Rejected protocol messages", value=node["bad_messages"])
        yield GaugeMetricFamily("heapballoon_tick_seconds", "Duration of the last control tick",
                                value=node.get("tick_ms", 0.0) / 1000)
        yield GaugeMetricFamily("heapballoon_node_target_unmet_bytes", "Part of the node target no JVM can hold",
                                value=node.get("unmet_bytes", 0))


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        port_num = int(port)
    except ValueError:
        raise UsageError(f"invalid --metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9477") from None
    if not 0 < port_num < 65536:
        raise UsageError(f"invalid --metrics port {port_num}")
    return host or "127.0.0.1", port_num


def start_metrics(driver, listen: str) -> None:
    host, port = parse_listen(listen)
    REGISTRY.register(DriverCollector(driver))
    try:
        start_http_server(port, addr=host)
    except OSError as err:
        raise UsageError(f"cannot serve metrics on {listen}: {err.strerror or err}") from err
