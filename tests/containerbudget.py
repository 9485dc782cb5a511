"""Issue 18's container scenario, shared by its three tests: plain namespaces on the host
(integration/test_container_budget.py), podman on the host (…_podman.py) and plain namespaces
under cgroup v2 in a QEMU guest (vm/test_vm_container_v2.py).

What they share: the container's limit and JVM, what its PID 1 runs, the sidecar that writes
250 MiB into the container's /tmp at 20 MiB/s, and the verdict (:func:`assert_gave_way`): no
OOM kill, the write intact, the JVM alive with its data intact, its idle heap gave way. Each
test measures an :class:`Outcome` its own way (host /proc and v1 files; `vm exec` and v2 files).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

MIB = 1 << 20
LIMIT_BYTES = 1150 * MIB
MIN_FREE_BYTES = int(LIMIT_BYTES * 0.06)  # the policy's minFree on that limit (ESXi's scale)
LIVE_MIB = 150
WRITE_MIB, WRITE_MIB_PER_S = 250, 20
SIDECAR_TIMEOUT_S = WRITE_MIB / WRITE_MIB_PER_S * 4 + 60
CID = "fedcba9876543210" * 4
POD_UID = "0f1e2d3c-4b5a-4697-8877-665544332211"
JAVA = ["-Xms1g", "-Xmx1g", "-XX:+AlwaysPreTouch"]
APP = ["--live-mib", str(LIVE_MIB), "--churn-mib-per-s", "0"]  # the ChurnApp: 150 MiB live, idle
SIDECAR = f"""
import hashlib, sys, time
h, chunk = hashlib.sha256(), 1 << 20
start = time.monotonic()
with open("/tmp/sidecar.bin", "wb") as f:
    for i in range({WRITE_MIB}):
        block = bytes([1 + i % 251]) * chunk
        f.write(block)
        f.flush()
        h.update(block)
        time.sleep(max(0.0, start + (i + 1) / {WRITE_MIB_PER_S} - time.monotonic()))
print(h.hexdigest())
"""


def container_init(java: str, jar: str, cache_dir: str, java_opts: tuple[str, ...] = ()) -> str:
    """What the container's PID 1 runs (``sh -c`` inside ``unshare --pid --mount --fork
    --mount-proc``): its own tmpfs on /tmp and ``cache_dir``, then the JVM (``JAVA`` and
    ``java_opts``), started without the agent."""
    return (f"mount -t tmpfs -o mode=1777 tmpfs /tmp && mkdir -p {shlex.quote(cache_dir)}"
            f" && mount -t tmpfs tmpfs {shlex.quote(cache_dir)}"
            f" && exec {shlex.quote(java)} {' '.join([*JAVA, *java_opts])} -jar {shlex.quote(jar)} {' '.join(APP)}")


@dataclass(frozen=True)
class Outcome:
    """What a test saw after the sidecar's write."""

    sidecar_rc: int
    sidecar_stderr: str
    sidecar_sha256: str  # what the sidecar says it wrote
    written_bytes: int  # -1: no file in the container's /tmp
    written_sha256: str  # what the file holds
    oom_kills: int  # v1 memory.oom_control / v2 memory.events oom_kill
    under_oom: bool
    jvm_alive: bool
    check: dict  # the ChurnApp's first report after a check that followed the write
    app_errors: list  # its error lines
    reclaimed_bytes: int  # the JVM's reclaimed_bytes in status


def assert_gave_way(o: Outcome) -> None:
    assert o.sidecar_rc == 0, (f"oom_kills {o.oom_kills}, JVM alive {o.jvm_alive}", o.sidecar_stderr[-500:])
    assert o.written_bytes == WRITE_MIB * MIB
    assert o.written_sha256 == o.sidecar_sha256.strip()
    assert (o.oom_kills, o.under_oom) == (0, False), o
    assert o.jvm_alive
    assert o.check.get("errors") == 0 and o.app_errors == [], (o.check, o.app_errors)
    assert o.reclaimed_bytes >= (WRITE_MIB - 100) * MIB  # its idle heap gave way
