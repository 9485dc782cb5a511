"""The balloon holds on every HotSpot collector and JDK (issue 6's acceptance, every pair).

Each pair runs the whole scenario of scenario.py: a 1 GiB pre-touched heap, 200 MiB live,
churning 100 MiB/s, started with `heapballoon run`, target 512M, sampled every 2 s for a
minute; then the live set grows to 700 MiB and shrinks back. Marked ``matrix``: `make test`
runs these two at a time.
"""

from __future__ import annotations

import pytest

import jdks
import scenario
from hbtest import MIB, require_root

pytestmark = [pytest.mark.jvm, pytest.mark.matrix]


@pytest.mark.parametrize("jdk,gc", jdks.MATRIX, ids=[f"jdk{j}-{g}" for j, g in jdks.MATRIX])
def test_balloon_holds_on_every_collector(daemons, apps, jdk, gc):
    java = jdks.require_java(jdk)
    require_root()
    d = daemons.start()
    j = apps.run(d, heap="1g", live_mib=200, churn_mib_per_s=100, gc=None, java_bin=java,
                 extra_jvm=(*jdks.GC_FLAGS[gc], "-XX:+AlwaysPreTouch"), name=f"jdk{jdk}-{gc}")
    out = scenario.run(d, j, jdk, gc)
    table = "\n".join(f"  t={s.t_s:5.1f}s balloon={s.balloon_bytes >> 20} max={s.balloon_max_bytes >> 20} "
                      f"reclaimed={s.reclaimed_bytes >> 20} live={s.live_bytes >> 20} flaps={s.flaps}"
                      for s in out.samples)
    why = f"\n{table}\nnotes: {out.notes}\n--- daemon log tail ---\n{d.log()[-2500:]}\n--- JVM stderr ---\n{j.stderr()[-1500:]}"

    assert out.reported_gc == jdks.REPORTED_GC.get(gc, gc), why
    assert out.window, why
    # The largest balloon it can hold: the heap for region collectors, the old generation otherwise.
    floor_mib = 300 if gc in ("Serial", "Parallel") else 512
    assert min(s.balloon_max_bytes for s in out.window) >= floor_mib * MIB, why
    # From 20 s to 60 s: every sample holds ≥ 90 % of min(512 MiB, balloon_max), ≥ 85 % reclaimed.
    assert out.balloon_ratio_min() >= 0.90, why
    assert out.reclaimed_ratio_min() >= 0.85, why
    assert out.flaps_in_window() == 0 and out.samples[-1].flaps == 0, why
    # Growing to 700 MiB live: the balloon gives way, no OutOfMemoryError; back to 200 MiB: it re-inflates.
    assert not out.oom, why
    assert out.gave_way, why
    assert out.reinflate_s is not None and out.reinflate_s <= scenario.REINFLATE_WITHIN_S, why
    assert out.data_errors == 0, why
