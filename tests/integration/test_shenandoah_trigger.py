"""The balloon never takes a Shenandoah heap into its trigger zone (issue 15, the jdk25-Shenandoah flake).

Shenandoah starts a cycle when its free set falls below ShenandoahMinFreeThreshold (10 %) of the heap,
and that free set leaves out ShenandoahEvacReserve (5 %). Inside that zone only a running cycle saves
the application's next allocation, and on JDK 25 the free set counts the unusable tails of partly
filled regions, so it may hold no empty region at all. A balloon that inflated into the zone took the
last empty regions; on a busy machine the application's next allocation failed before the cycle began,
and that degenerated collection cleared every soft reference ("2 soft_cleared in the first 8 s").

Here an almost idle application (1 MiB/s) gets a target larger than the heap can give: the balloon
must stop short of the zone, so no cycle is triggered by the minimum-free threshold while it inflates.
Before the fix the heap reached 896–917 MiB used, and Shenandoah started 94 (JDK 17), 143 (21) and 389
(25) cycles on its minimum free while the balloon settled ("Free (66536K) is below minimum threshold
(102M)").
"""

from __future__ import annotations

import time

import pytest

import jdks
from hbtest import MIB, require_root, run_cli, wait_for

pytestmark = [pytest.mark.jvm]
PAIRS = [(jdk, gc) for jdk, gc in jdks.MATRIX if gc == "Shenandoah"]
HEAP_MIB = 1024
LIVE_MIB = 100
TARGET_MIB = 900
STABLE_S = 3.0  # the balloon counts as done growing after this long unchanged
# The zone: (ShenandoahMinFreeThreshold + ShenandoahEvacReserve) % of the heap, the defaults.
TRIGGER_ZONE_MIB = HEAP_MIB * (10 + 5) // 100


def balloon_settled(daemon, pid: int, seen: dict) -> dict | None:
    """The JVM's status once its balloon is non-zero and unchanged for STABLE_S."""
    s = daemon.jvm(pid) or {}
    b = s.get("balloon_bytes", 0)
    now = time.monotonic()
    if b != seen.get("bytes"):
        seen.update(bytes=b, since=now)
        return None
    return s if b > 0 and now - seen["since"] >= STABLE_S else None


@pytest.mark.parametrize("jdk,gc", PAIRS, ids=[f"jdk{j}-{g}" for j, g in PAIRS])
def test_inflation_stops_short_of_shenandoahs_trigger_zone(daemons, apps, tmp_path, jdk, gc):
    java = jdks.require_java(jdk)
    require_root()
    gc_log = tmp_path / "gc.log"
    d = daemons.start()
    j = apps.run(d, heap=f"{HEAP_MIB}m", live_mib=LIVE_MIB, churn_mib_per_s=1, gc=None, java_bin=java,
                 extra_jvm=(*jdks.GC_FLAGS[gc], "-XX:+AlwaysPreTouch", f"-Xlog:gc:file={gc_log}:uptime"),
                 name=f"jdk{jdk}-shen-zone")
    wait_for(lambda: d.jvm(j.pid), 40, 0.2, what=f"JVM {j.pid} registered")
    wait_for(lambda: j.last().get("live_mib") == LIVE_MIB, 60, 0.2, what="application warm-up")
    before_target = len(gc_log.read_text().splitlines())
    run_cli("target", j.pid, f"{TARGET_MIB}M", sock=d.sock, check=True)
    seen: dict = {}
    s = wait_for(lambda: balloon_settled(d, j.pid, seen), 60, 0.25, what="balloon done growing")
    log = gc_log.read_text()
    triggers = [line for line in log.splitlines()[before_target:] if "below minimum threshold" in line]
    why = (f"\nstatus: {s}\nminimum-threshold triggers: {triggers[:5]}\n--- GC log tail ---\n{log[-2000:]}"
           f"{j.diagnostics()}")
    print(f"jdk{jdk}-{gc}: balloon {s['balloon_bytes'] >> 20} MiB, heap used {s['heap_used_bytes'] >> 20} MiB, "
          f"minimum-threshold triggers {len(triggers)}")
    # The balloon took most of the heap it could (so the checks below are not met by doing nothing)…
    assert s["balloon_bytes"] >= (HEAP_MIB - TRIGGER_ZONE_MIB - 2 * LIVE_MIB) * MIB, why
    # …and none of the zone Shenandoah keeps for its own trigger (before the fix: 896–917 MiB used)…
    assert s["heap_used_bytes"] <= (HEAP_MIB - TRIGGER_ZONE_MIB) * MIB, why
    # …so no cycle started from the minimum free while it inflated (before: 94–389 such cycles). JDK 25's
    # trigger is exactly the zone; JDK 17's and 21's free sets leave out more (their trigger fired at
    # 839 MiB used, 1.5 MiB past the balloon's stop), so there the almost idle application may cross it.
    if jdk >= 25:
        assert not triggers, why
    assert s.get("soft_cleared", 0) == 0, why
