#!/usr/bin/env python3
"""Stock-host benchmark (issue 17): 400 MiB back from a guest JVM with no hostd, side by side.

Run (root, QEMU installed): `.venv/bin/python benchmarks/stock_vm.py [--rounds 1] [--ways a,b]`

Every way gets a fresh, identical guest started with `vm start --reclaim virtio` (1 GiB, 1 vCPU,
private RAM, virtio-balloon with free-page-reporting=on) running the same JVM (`-Xms768m
-Xmx768m -XX:+AlwaysPreTouch`, its default collector, 150 MiB live, churning 50 MiB/s):

* **virtio-alone** — the host asks (QMP `balloon` to 624 MiB); the guest driver runs with no
  law and no target, so the JVMs give nothing: the stock virtio-balloon on its own.
* **virtio+hb** — the same request; the guest driver's local law frees idle heap so the
  balloon finds free pages (the default of `--reclaim virtio`, report order 0).
* **fpr+hb order 0** — no host request: `heapballoon target all 400M` in the guest, the agent
  frees the balloon, free page reporting with `page_reporting_order` 0 hands every freed 4 KiB
  page to the host.
* **fpr+hb order 9** — the same with the kernel's default order (2 MiB blocks only): what the
  order changes.

Reported per way: seconds from the request until QEMU's RSS is down by 90 % of 400 MiB (or
how far it fell in the time limit), VM pauses (QMP STOP events; none expected), the guest's
oom_kill and pswpout counters, whether the JVM and its data survived. The pfn way (hostd) is
benchmarked by benchmarks/reclaim_vm.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from hbtest import run_cli, wait_for  # noqa: E402

from heapballoon.agent import build  # noqa: E402
from heapballoon.linux.procfs import ProcFS  # noqa: E402

MIB = 1 << 20
WANT = 400 * MIB
LIMIT_S = 90
APP = ["java", "-Xms768m", "-Xmx768m", "-XX:+AlwaysPreTouch", "-jar", "/opt/churn.jar", "--live-mib", "150",
       "--churn-mib-per-s", "50"]
WAYS = {
    # way: (guest driver arguments, how the memory is asked for)
    "virtio-alone": (["--reclaim", "direct", "--no-local-policy"], "host"),
    "virtio+hb": (["--reclaim", "direct", "--report-order", "0"], "host"),
    "fpr+hb order 0": (["--reclaim", "direct", "--report-order", "0", "--no-local-policy"], "guest"),
    "fpr+hb order 9": (["--reclaim", "direct", "--no-local-policy"], "guest"),
}


def cli(*args, check=True):
    return run_cli(*args, timeout_s=300, check=check).stdout


def guest(name, *argv):
    """A command in the guest; "" when it does not answer (a guest drained to its watermarks)."""
    try:
        return run_cli("vm", "exec", name, "--", *argv, timeout_s=90).stdout
    except subprocess.TimeoutExpired:
        return ""


def guest_jvm(name):
    out = guest(name, "python3", "-m", "heapballoon", "status", "--json")
    jvms = json.loads(out).get("jvms") if out.strip() else None
    return jvms[0] if jvms else None


def one(way, idx):
    from heapballoon.vm.launcher import start_vm, stop_vm
    from heapballoon.vm.qmp import EventLog, qmp_execute

    driver_args, ask = WAYS[way]
    name = f"s{idx}"
    info = start_vm(name, 1 << 30, cpus=1, reclaim="virtio", copies=[(build.demo_jar(), "/opt/churn.jar")], cmd=APP,
                    driver_args=driver_args)
    try:
        wait_for(lambda: guest_jvm(name), 240, 1.0, what="guest JVM")
        wait_for(lambda: '"allocated_mib"' in cli("vm", "logs", name), 240, 1.0, what="guest app")
        time.sleep(10)
        procfs = ProcFS()
        before = procfs.rss_bytes(info.pid)
        events = EventLog(info.paths.hostd_qmp_socket)
        t0 = time.monotonic()
        if ask == "host":
            qmp_execute(info.paths.qmp_socket, "balloon", {"value": info.memory_bytes - WANT})
        else:
            guest(name, "python3", "-m", "heapballoon", "target", "all", "400M")
        done_s, fell = None, 0
        while time.monotonic() - t0 < LIMIT_S:
            fell = before - procfs.rss_bytes(info.pid)
            if done_s is None and fell >= 0.9 * WANT:
                done_s = time.monotonic() - t0
                break
            time.sleep(0.5)
        stops = events.stop().count("STOP")
        jvm = guest_jvm(name) or {}
        vmstat = dict(line.split() for line in guest(name, "cat", "/proc/vmstat").splitlines() if len(line.split()) == 2)
        logs = cli("vm", "logs", name)
        return {"way": way, "done_s": done_s, "fell_mib": fell / MIB, "before_mib": before / MIB, "stops": stops,
                "balloon_mib": jvm.get("balloon_bytes", 0) / MIB, "oom_kill": int(vmstat.get("oom_kill", -1)),
                "pswpout": int(vmstat.get("pswpout", -1)), "jvm_alive": "HEAPBALLOON-CMD-EXIT" not in logs,
                "data_ok": '"error"' not in logs}
    finally:
        stop_vm(name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    args = p.parse_args()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        raise SystemExit(f"benchmark: unknown way {bad[0]!r}: one of {', '.join(WAYS)}")
    os.environ["HEAPBALLOON_RUN_DIR"] = tempfile.mkdtemp(prefix="hbstock-", dir="/tmp")
    results = {w: [] for w in ways}
    for r in range(args.rounds):
        for i, way in enumerate(ways if r % 2 == 0 else list(reversed(ways))):
            res = one(way, r * 10 + i)
            results[way].append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)

    print(f"### 400 MiB back from a guest JVM on a stock host (1 GiB guest, 1 vCPU, -Xms768m pre-touched, default "
          f"collector, 150 MiB live; TCG; no hostd), {args.rounds} round(s)\n")
    print("| way | time to QEMU RSS −360 MiB, median | RSS fell (in the limit) | JVM balloon | VM pauses | "
          "guest oom_kill / pswpout | JVM alive, data intact |")
    print("|---|---|---|---|---|---|---|")
    for w in ways:
        print(table_row(w, results[w]))


def table_row(way: str, rs: list[dict]) -> str:
    times = [x["done_s"] for x in rs if x["done_s"] is not None]
    took = f"{statistics.median(times):.1f} s" if len(times) == len(rs) else f"not within {LIMIT_S} s ({len(times)}/{len(rs)})"
    cells = [way, took, f"{statistics.median(x['fell_mib'] for x in rs):.0f} MiB",
             f"{statistics.median(x['balloon_mib'] for x in rs):.0f} MiB", str(sum(x["stops"] for x in rs)),
             f"{max(x['oom_kill'] for x in rs)} / {max(x['pswpout'] for x in rs)}",
             f"{all(x['jvm_alive'] for x in rs)}, {all(x['data_ok'] for x in rs)}"]
    return "| " + " | ".join(cells) + " |"

if __name__ == "__main__":
    main()
