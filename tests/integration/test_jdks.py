"""The agent on every JDK: one jar (built once with --release 17) loads through `heapballoon run`
(-javaagent) and through `heapballoon attach` on JDK 17, 21 and 25, and a JVM started with
`heapballoon run` prints no warning about native access or Unsafe."""

from __future__ import annotations

import re

import pytest

import jdks
from hbtest import MIB, run_cli, wait_for

pytestmark = pytest.mark.jvm
WARNING = re.compile(r"WARNING|restricted method|sun\.misc\.Unsafe|--enable-native-access")


@pytest.mark.parametrize("jdk", sorted(jdks.COLLECTORS))
def test_run_loads_the_agent_quietly(daemons, apps, jdk):
    java = jdks.require_java(jdk)
    d = daemons.start()
    # A start-up spike dirties the heap: reclaimed counts only memory that was resident before.
    j = apps.run(d, heap="256m", live_mib=16, churn_mib_per_s=10, gc="G1", java_bin=java, name=f"run{jdk}",
                 spike_mib=200)
    s = wait_for(lambda: d.jvm(j.pid), 40, 0.2, what=f"JDK {jdk} agent registered")
    wait_for(lambda: j.last().get("allocated_mib", 0) >= 200, 30, 0.2, what="the start-up spike")
    assert s["jvm_version"].split(".")[0] == str(jdk)
    # The agent reports its default mode until the driver's first target reaches it (the
    # driver's sender task sends it; registration can be seen a tick before).
    s = wait_for(lambda: (x := d.jvm(j.pid))["reclaim"] == "direct" and x, 10, 0.1, what="reclaim mode direct")
    assert s["address_mode"] == "jni"
    run_cli("target", j.pid, "96M", sock=d.sock, check=True)
    wait_for(lambda: d.jvm(j.pid)["reclaimed_bytes"] >= 80 * MIB, 30, 0.25, what="reclaim")
    assert not WARNING.search(j.stderr()), j.stderr()


@pytest.mark.parametrize("jdk", sorted(jdks.COLLECTORS))
def test_attach_loads_the_agent(daemons, apps, jdk):
    java = jdks.require_java(jdk)
    d = daemons.start()
    j = apps.run(None, heap="256m", live_mib=16, churn_mib_per_s=10, gc="G1", java_bin=java, wrapper=())
    wait_for(lambda: j.lines, 30, what="plain JVM running")
    out = run_cli("attach", j.pid, "--name", f"attached{jdk}", sock=d.sock)
    assert out.returncode == 0, out.stderr
    s = wait_for(lambda: d.jvm(j.pid), 30, 0.2, what=f"JDK {jdk} attached agent registered")
    assert s["name"] == f"attached{jdk}" and s["jvm_version"].split(".")[0] == str(jdk)
    run_cli("target", j.pid, "96M", sock=d.sock, check=True)
    wait_for(lambda: d.jvm(j.pid)["balloon_bytes"] >= 80 * MIB, 30, 0.25, what="inflate after attach")
