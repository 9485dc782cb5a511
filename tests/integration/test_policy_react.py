"""Issue 16, "react in seconds", on real JVMs: a budget that the JVMs' RSS breaches (set by
SIGHUP, as an operator would) is met within a few seconds, not the ~15 s seen before.

Two JVMs ``-Xms512m -Xmx512m -XX:+AlwaysPreTouch``, 100 MiB live, barely allocating, under
``daemon --policy auto`` with no budget; once their agents know their live sets, the policy
file sets a budget 400 MiB under their RSS sum. Expected: one tick to see it (1 s) plus the
inflation (~1.3 GiB/s), ~1.5 s; the bound (5 s) is generous for a shared 2-core machine and
still fails a policy that needs more than a couple of ticks.
"""

from __future__ import annotations

import signal
import time

import pytest

from hbtest import MIB, require_java, require_root, rss_bytes, wait_for

# serial: a 5 s bound on reacting, measured on the wall clock.
pytestmark = [pytest.mark.jvm, pytest.mark.serial]

SHORT_MIB = 400
MET_WITHIN_S = 5.0


def test_a_breached_budget_is_met_in_seconds(daemons, apps, tmp_path):
    require_java()
    require_root()
    policy = tmp_path / "policy.toml"
    policy.write_text('budget = "none"\n')
    d = daemons.start("--policy", "auto", "--policy-file", str(policy))
    jvms = [apps.run(d, heap="512m", live_mib=100, churn_mib_per_s=1, extra_jvm=("-XX:+AlwaysPreTouch",),
                     name=f"idle{i}") for i in range(2)]
    for j in jvms:
        wait_for(lambda: j.last().get("live_mib") == 100 and (s := d.jvm(j.pid)) and s.get("balloon_max_bytes", 0) > 0,
                 60, 0.25, what=f"{j.pid} up, its live set known")
    time.sleep(3)  # activity measured: the policy is in its steady state (no budget, no balloon)
    before = sum(rss_bytes(j.pid) for j in jvms)
    budget = before - SHORT_MIB * MIB
    policy.write_text(f'budget = "{budget >> 20}M"\n')
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sum(rss_bytes(j.pid) for j in jvms) <= budget, 30, 0.1,
             what=f"RSS sum ≤ the budget {budget >> 20} MiB (from {before >> 20} MiB)")
    met_s = time.monotonic() - t0
    print(f"budget {budget >> 20} MiB (RSS {before >> 20} MiB) met in {met_s:.1f} s")
    assert met_s <= MET_WITHIN_S, f"met in {met_s:.1f} s"
    for j in jvms:
        assert j.proc.poll() is None and "OutOfMemoryError" not in j.stderr(), j.diagnostics()
