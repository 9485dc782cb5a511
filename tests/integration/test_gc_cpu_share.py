"""The agent's GC CPU share is real on collectors whose GC work runs in concurrent threads (issue 15).

ZGC does its work in its own threads, whose names differ by JDK and mode: "ZWorker#0" (JDK 17),
"XWorker#0" (JDK 21's non-generational ZGC), "ZWorkerYoung#0" (generational). A JVM allocating
500 MiB/s keeps them working; a share that reads 0 means the agent did not count them (JDK 21's
default ZGC read 0.0 % at 500 MiB/s, and 0.0–0.2 % up to 2 GiB/s in benchmarks/gc_cost.py, before
its thread names were known).
"""

from __future__ import annotations

import time

import pytest

import jdks
from hbtest import require_root, wait_for

# serial: the share is measured on a JVM allocating 500 MiB/s, alone on the machine's cores.
pytestmark = [pytest.mark.jvm, pytest.mark.serial]
ZGC_PAIRS = [(jdk, gc) for jdk, gc in jdks.MATRIX if gc.startswith("ZGC")]
CHURN_MIB_PER_S = 500
# The agent starts counting GcProfile.STARTUP_MS (5 s) after JVM start; this many seconds follow.
MEASURE_S = 12.0
# Measured here at 500 MiB/s (2026-12-04): 0.3–0.6 % of two CPUs (JDK 17 0.004, 21 0.004, 21 generational
# 0.006, 25 0.003): ZGC's work is genuinely small on this workload (64 KiB byte arrays are not scanned, and
# pages of garbage are freed without relocation). Before the X names were known, JDK 21's read 0.0.
# The share is whole permille of the JVM's CPUs: the floor is the smallest non-zero reading, so a
# slower churn on a busy CI machine (less GC work) still passes while a reading of 0 fails.
MIN_GC_CPU_SHARE = 0.001


@pytest.mark.parametrize("jdk,gc", ZGC_PAIRS, ids=[f"jdk{j}-{g}" for j, g in ZGC_PAIRS])
def test_zgc_threads_count_in_the_gc_cpu_share(daemons, apps, jdk, gc):
    java = jdks.require_java(jdk)
    require_root()
    d = daemons.start()
    j = apps.run(d, heap="1g", live_mib=200, churn_mib_per_s=CHURN_MIB_PER_S, gc=None, java_bin=java,
                 extra_jvm=tuple(jdks.GC_FLAGS[gc]), name=f"jdk{jdk}-{gc}-cpu")
    wait_for(lambda: d.jvm(j.pid), 40, 0.2, what=f"JVM {j.pid} registered")
    wait_for(lambda: j.last().get("live_mib") == 200, 60, 0.2, what="application warm-up")
    time.sleep(MEASURE_S)
    s = d.jvm(j.pid)
    why = f"status: {s}\n{j.diagnostics()}"
    print(f"jdk{jdk}-{gc}: gc_cpu_share_no_balloon={s.get('gc_cpu_share_no_balloon')}")
    assert s["gc_cpu_share_no_balloon"] >= MIN_GC_CPU_SHARE, why
