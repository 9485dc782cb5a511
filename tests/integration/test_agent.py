"""The Java agent in real JVMs, against an in-test fake driver (conftest.FakeDriver).

Every agent line goes through heapballoon.protocol.decode; a line it rejects fails the test.
Chunk addresses are checked against the JVM itself: the range must lie in a readable mapping
of the process, and the int just before the payload (the array's length field in /proc/PID/mem)
must equal the chunk's len.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MiB, FakeDriver
from hbtest import wait_for
from heapballoon.agent import build

pytestmark = [pytest.mark.jvm, pytest.mark.timeout(120)]

HEAP = ["-Xms1g", "-Xmx1g"]
COLLECTORS = {"G1": "-XX:+UseG1GC", "Parallel": "-XX:+UseParallelGC", "Serial": "-XX:+UseSerialGC",
              "ZGC": "-XX:+UseZGC"}


def start_jvm(jvms, artifacts, driver: FakeDriver, *jvm_flags: str, native: str | None = "default",
              live_mib: int = 0, churn_mib_per_s: int = 0, name: str = "test"):
    agent_jar, native_lib, demo_jar = artifacts
    lib = native_lib if native == "default" else native
    options = build.agent_options(str(driver.path), name, lib, interval_ms=200)
    return jvms.start(["java", *jvm_flags, f"-javaagent:{agent_jar}={options}", "-jar", str(demo_jar),
                       "--live-mib", str(live_mib), "--churn-mib-per-s", str(churn_mib_per_s)], stdin=True)


def hello_of(driver: FakeDriver, jvm, timeout_s: float = 20):
    return wait_for(lambda: driver.hellos[-1] if driver.hellos else None, timeout_s,
                    what="the agent's hello" + jvm.diagnostics())


def check_chunk_addresses(jvm, state, gc: str) -> None:
    assert state.chunks, "no chunks"
    maps = jvm.maps()
    for chunk in state.chunks:
        assert chunk.addr != 0, f"chunk {chunk.id} has no address"
        inside = [m for m in maps if m[0] <= chunk.addr and chunk.addr + chunk.len <= m[1]]
        assert inside, f"chunk {chunk.id} at {chunk.addr:#x}+{chunk.len} is in no mapping"
        start, end, perms, path = inside[0]
        assert perms.startswith("r"), f"chunk {chunk.id} lies in a non-readable mapping {perms}"
        if gc == "ZGC":
            assert "memfd:java_heap" in path, f"ZGC chunk {chunk.id} outside the heap memfd: {path!r}"
        length_field = int.from_bytes(jvm.read_mem(chunk.addr - 4, 4), "little")
        assert length_field == chunk.len, f"chunk {chunk.id}: heap says length {length_field}, agent says {chunk.len}"


def test_hello_ping_garbage_and_driver_restart(jvms, artifacts, driver):
    jvm = start_jvm(jvms, artifacts, driver, "-XX:+UseG1GC", *HEAP, name="orders")
    hello = hello_of(driver, jvm)
    assert hello.pid == jvm.pid
    assert hello.name == "orders"
    assert hello.gc == "G1"
    assert hello.region_bytes > 0 and hello.region_bytes & (hello.region_bytes - 1) == 0
    assert hello.jvm_version.startswith("17") or hello.jvm_version[:2].isdigit()
    assert hello.address_mode == ("jni" if artifacts[1] else "unsafe")
    assert hello.target_bytes == 0 and hello.state.balloon_bytes == 0
    assert hello.state.heap_max_bytes == 1 << 30

    # junk the agent must survive: not JSON, unknown type, a line over 1 MiB
    driver.send_raw(b"not json\n" + b'{"v":1,"type":"surprise"}\n' + b"x" * (1 << 20) + b"\n")
    driver.send_target(128 * MiB)
    state = driver.wait_state(lambda s: s.balloon_bytes == 128 * MiB, 30, "balloon of 128 MiB" + jvm.diagnostics())
    ids = [c.id for c in state.chunks]

    driver.stop()
    driver.start()
    again = wait_for(lambda: driver.hellos[1] if len(driver.hellos) > 1 else None, 10,
                     what="a second hello after the driver restarted" + jvm.diagnostics())
    assert again.target_bytes == 128 * MiB
    assert [c.id for c in again.state.chunks] == ids
    assert again.state.balloon_bytes == 128 * MiB
    assert not driver.bad_lines, driver.bad_lines


@pytest.mark.parametrize("gc", list(COLLECTORS))
def test_inflate_addresses_deflate(jvms, artifacts, driver, gc):
    jvm = start_jvm(jvms, artifacts, driver, COLLECTORS[gc], *HEAP, live_mib=50, churn_mib_per_s=20)
    hello = hello_of(driver, jvm)
    assert hello.gc == gc
    driver.send_target(256 * MiB)
    state = driver.wait_state(lambda s: s.balloon_bytes == 256 * MiB, 30, f"{gc}: 256 MiB balloon" + jvm.diagnostics())
    assert state.target_bytes == 256 * MiB
    assert len(state.chunks) == 32  # 8 MiB chunks
    if gc == "G1":  # each chunk fills whole regions: the object starts on a region boundary
        assert all((c.addr - 16) % hello.region_bytes == 0 for c in state.chunks)
    check_chunk_addresses(jvm, driver.last_state(), gc)
    driver.send_target(0)
    driver.wait_state(lambda s: s.balloon_bytes == 0 and not s.chunks, 10, f"{gc}: deflated" + jvm.diagnostics())
    assert "inflate_done" in driver.event_kinds()
    assert not driver.bad_lines, driver.bad_lines


def test_unsafe_and_jni_addresses_agree(jvms, artifacts, driver, tmp_path):
    if artifacts[1] is None:
        pytest.skip("native library not built (gcc or JNI headers missing)")
    other = FakeDriver(tmp_path / "unsafe.sock")
    try:
        jni_jvm = start_jvm(jvms, artifacts, driver, "-XX:+UseG1GC", *HEAP)
        unsafe_jvm = start_jvm(jvms, artifacts, other, "-XX:+UseG1GC", *HEAP, native="none")
        assert hello_of(driver, jni_jvm).address_mode == "jni"
        assert hello_of(other, unsafe_jvm).address_mode == "unsafe"
        for d in (driver, other):
            d.send_target(128 * MiB)
        for d in (driver, other):
            d.wait_state(lambda s: s.balloon_bytes == 128 * MiB, 30, "128 MiB balloon")
        # both modes are confirmed by the same oracle: the array length field in the JVM's memory
        check_chunk_addresses(jni_jvm, driver.last_state(), "G1")
        check_chunk_addresses(unsafe_jvm, other.last_state(), "G1")
        assert not other.bad_lines
    finally:
        other.stop()


def test_direct_mode_releases_rss(jvms, artifacts, driver):
    if artifacts[1] is None:
        pytest.skip("native library not built (gcc or JNI headers missing)")
    jvm = start_jvm(jvms, artifacts, driver, "-XX:+UseG1GC", *HEAP)
    hello_of(driver, jvm)
    balloon = 512 * MiB
    driver.send_target(balloon, "ksm")
    driver.wait_state(lambda s: s.balloon_bytes == balloon, 30, "512 MiB balloon" + jvm.diagnostics())
    rss_mapped = jvm.rss_bytes()
    driver.send_target(balloon, "direct")
    state = driver.wait_state(lambda s: s.reclaim == "direct" and s.chunks and all(c.released for c in s.chunks),
                              10, "all chunks released" + jvm.diagnostics())
    assert state.balloon_bytes == balloon
    drop = rss_mapped - jvm.rss_bytes()
    print(f"RSS with the balloon mapped {rss_mapped / MiB:.0f} MiB; direct release dropped {drop / MiB:.0f} MiB")
    assert drop > 0.8 * balloon, f"RSS fell by only {drop / MiB:.0f} MiB for a {balloon / MiB:.0f} MiB balloon"


def test_pressure_gives_memory_back(jvms, artifacts, driver):
    jvm = start_jvm(jvms, artifacts, driver, "-XX:+UseG1GC", "-Xmx1g", live_mib=200, churn_mib_per_s=50)
    hello_of(driver, jvm)
    driver.send_target(512 * MiB, "direct" if artifacts[1] else "ksm")
    driver.wait_state(lambda s: s.balloon_bytes == 512 * MiB, 30, "512 MiB balloon" + jvm.diagnostics())
    jvm.send("live 700")
    wait_for(lambda: any('"live_mib":700' in line for line in jvm.stdout_lines) or jvm.proc.poll() is not None,
             60, what="the app to grow to 700 MiB" + jvm.diagnostics())
    assert jvm.proc.poll() is None, "the app died" + jvm.diagnostics()
    checks_before = max(json.loads(line).get("checks", 0) for line in jvm.stdout_lines if line.startswith('{"live'))
    jvm.send("check")
    wait_for(lambda: any(json.loads(line).get("checks", 0) > checks_before
                         for line in jvm.stdout_lines if line.startswith('{"live')), 10, what="a verification pass")
    assert not any('"error"' in line for line in jvm.stdout_lines), jvm.diagnostics()
    state = driver.last_state()
    assert state.balloon_bytes <= (1024 - 700) * MiB, f"balloon still {state.balloon_bytes / MiB:.0f} MiB"
    kinds = driver.event_kinds()
    assert "pressure_release" in kinds or "soft_cleared" in kinds, kinds
    latencies = [e.latency_ms for e in driver.events if e.kind == "pressure_release" and "live" in e.reason]
    print(f"pressure releases: {len(latencies)}, latency_ms max {max(latencies, default=-1)}")
    assert not driver.bad_lines, driver.bad_lines


def test_jdk_tools_run_quietly_and_a_module_graph_without_unsafe_is_named(java, artifacts, driver):
    """Where ``JAVA_TOOL_OPTIONS`` carries the agent for every JVM (our guest images, a service's
    drop-in), the JDK's own tools load it too: ``jcmd`` lists JVMs with no agent line in its output
    (it printed "setup failed ... NoClassDefFoundError: sun/misc/Unsafe"). A JVM whose module graph
    lacks jdk.unsupported gets one line that names the module and the option that adds it."""
    agent_jar, _native, demo_jar = artifacts
    jcmd = Path(os.path.realpath(java)).parent / "jcmd"
    if not jcmd.exists():
        pytest.skip(f"no jcmd beside {java}")
    env = dict(os.environ, JAVA_TOOL_OPTIONS=f"-javaagent:{agent_jar}=socket={driver.path}")
    out = subprocess.run([str(jcmd), "-l"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Picked up JAVA_TOOL_OPTIONS" in out.stdout + out.stderr  # the tool did load the option
    assert "sun.tools.jcmd.JCmd" in out.stdout
    assert "[heapballoon-agent]" not in out.stdout + out.stderr

    err_path = driver.path.parent / "limited.err"
    with open(err_path, "w") as err:
        limited = subprocess.Popen(
            [java, "--limit-modules", "java.base,java.instrument,java.management,jdk.management",
             f"-javaagent:{agent_jar}=socket={driver.path}", "-jar", str(demo_jar), "--live-mib", "1",
             "--churn-mib-per-s", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        wait_for(lambda: "[heapballoon-agent]" in err_path.read_text(), 30, 0.1, what="the agent's line")
    finally:
        limited.communicate("quit\n", timeout=30)
    lines = [line for line in err_path.read_text().splitlines() if line.startswith("[heapballoon-agent]")]
    assert lines == ["[heapballoon-agent] WARNING agent inactive: module jdk.unsupported (sun.misc.Unsafe) is not in "
                     "this JVM's module graph; start java with --add-modules jdk.unsupported"], err_path.read_text()
