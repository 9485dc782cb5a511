#!/usr/bin/env python3
"""What a 512 MiB balloon costs the collector, per collector and allocation rate (issue 15).

For each (collector, rate): one JVM (-Xms1g -Xmx1g -XX:+AlwaysPreTouch, 200 MiB live, started
with `heapballoon run`), allocating at the rate (64 KiB garbage plus the live set replaced at a
sixteenth of the rate, 64 KiB piece by piece). After warm-up, PHASE_S seconds without a balloon,
then target 512M, SETTLE_S seconds to inflate, and PHASE_S seconds with it: both phases in the
same JVM, one after the other, so they share the machine's noise. Per phase:

* throughput: MiB/s the application allocated (it paces itself to the rate; less means it
  could not keep up),
* GC CPU share: CPU time of the JVM's GC threads (the agent's rule: GcProfile.GC_THREADS) over
  the CPU time it could use (wall time × CPUs), from /proc/<pid>/task over exactly that phase,
* pause p99: the agent's `pause_p99_ms` / `pause_p99_ms_no_balloon` in `status --json` (the last
  2048 pauses with and without a balloon held),

plus the balloon held, soft_cleared and flaps at the end. One JVM at a time.

    .venv/bin/python benchmarks/gc_cost.py [--jdk 21] [--collectors G1,ZGC] [--rates 100,1024,2048]

Needs root (pagemap) and `make jdks` (JDK 21 and 25).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import jdks  # noqa: E402
from hbtest import DaemonFactory, JVMFactory, run_cli, wait_for  # noqa: E402

PHASE_S = 20.0
SETTLE_S = 10.0
def _agent_gc_threads() -> tuple[str, ...]:
    """GcProfile.GC_THREADS, read from the agent's source: one list, the agent's and this benchmark's."""
    java = (REPO / "agent/src/io/heapballoon/agent/GcProfile.java").read_text()
    body = re.search(r"GC_THREADS = \{(.*?)\};", java, re.S)
    return tuple(re.findall(r'"([^"]*)"', body.group(1)))


GC_THREADS = _agent_gc_threads()


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(GC threads' CPU ticks, the whole JVM's CPU ticks) of process ``pid``."""
    def ticks(stat: str) -> int:
        f = stat[stat.rindex(")") + 2:].split()
        return int(f[11]) + int(f[12])

    gc = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip().startswith(GC_THREADS):
                gc += ticks((task / "stat").read_text())
        except (OSError, ValueError):
            pass  # the thread exited
    return gc, ticks(Path(f"/proc/{pid}/stat").read_text())


class Phase:
    def __init__(self, jvm):
        self.jvm = jvm
        self.t0 = time.monotonic()
        self.alloc0 = jvm.last().get("allocated_mib", 0)
        self.gc0, self.cpu0 = cpu_ticks(jvm.pid)

    def end(self) -> tuple[float, float]:
        """(throughput MiB/s, GC CPU share) since the phase began."""
        gc, _ = cpu_ticks(self.jvm.pid)
        wall_s = time.monotonic() - self.t0
        mib_per_s = (self.jvm.last().get("allocated_mib", 0) - self.alloc0) / wall_s
        return mib_per_s, (gc - self.gc0) / 100 / (wall_s * os.cpu_count())


def run_one(jdk: int, gc: str, rate: int, workdir: Path) -> dict:
    daemons, apps = DaemonFactory(workdir), JVMFactory()
    rotate = rate // 16
    try:
        d = daemons.start()
        j = apps.run(d, heap="1g", live_mib=200, churn_mib_per_s=rate - rotate, gc=None, java_bin=jdks.java(jdk),
                     extra_jvm=(*jdks.GC_FLAGS[gc], "-XX:+AlwaysPreTouch"), name=f"jdk{jdk}-{gc}-{rate}",
                     app_args=("--rotate-mib-per-s", rotate))
        wait_for(lambda: d.jvm(j.pid), 40, 0.2, what="agent registered")
        wait_for(lambda: j.last().get("live_mib") == 200 and j.last().get("allocated_mib", 0) > 1500, 90, 0.2,
                 what="warm-up")
        time.sleep(5)
        without = Phase(j)
        time.sleep(PHASE_S)
        tput0, share0 = without.end()
        run_cli("target", j.pid, "512M", sock=d.sock, check=True)
        time.sleep(SETTLE_S)
        with_balloon = Phase(j)
        time.sleep(PHASE_S)
        tput1, share1 = with_balloon.end()
        s = d.jvm(j.pid) or {}
        return {"tput": (tput0, tput1), "share": (share0, share1),
                "p99": (s.get("pause_p99_ms_no_balloon", -1), s.get("pause_p99_ms", -1)),
                "balloon_mib": s.get("balloon_bytes", 0) >> 20, "soft_cleared": s.get("soft_cleared", 0),
                "flaps": s.get("flaps", 0), "headroom_mib": s.get("headroom_bytes", 0) >> 20,
                "oom": j.proc.poll() is not None}
    finally:
        apps.teardown()
        for dm in daemons.daemons:
            daemons.stop(dm)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jdk", type=int, default=21)
    p.add_argument("--collectors", help="comma-separated (default: every collector of that JDK)")
    p.add_argument("--rates", default="100,1024,2048", help="MiB/s, comma-separated")
    args = p.parse_args()
    if jdks.java(args.jdk) is None:
        print(f"error: {jdks.missing(args.jdk)}", file=sys.stderr)
        return 2
    collectors = args.collectors.split(",") if args.collectors else jdks.COLLECTORS[args.jdk]
    rates = [int(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hb-gccost-"))
    print(f"JDK {args.jdk}; per phase {PHASE_S:.0f} s without a balloon, then target 512M, {SETTLE_S:.0f} s to "
          f"inflate, {PHASE_S:.0f} s with it; same JVM.\n")
    print("| collector | rate MiB/s | throughput MiB/s without → with | GC CPU share without → with (points) "
          "| pause p99 ms without → with | balloon MiB | headroom MiB | soft_cleared / flaps |")
    print("|---|---|---|---|---|---|---|---|")
    for gc in collectors:
        for rate in rates:
            r = run_one(args.jdk, gc, rate, Path(tempfile.mkdtemp(dir=work)))
            (t0, t1), (s0, s1), (p0, p1) = r["tput"], r["share"], r["p99"]
            print(f"| {gc} | {rate} | {t0:.0f} → {t1:.0f} | {s0:.1%} → {s1:.1%} ({(s1 - s0) * 100:+.1f}) "
                  f"| {p0} → {p1} | {r['balloon_mib']}{' OOM' if r['oom'] else ''} | {r['headroom_mib']} "
                  f"| {r['soft_cleared']} / {r['flaps']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
