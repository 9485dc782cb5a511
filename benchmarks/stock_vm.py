#!/usr/bin/env python3
"""Stock-host benchmark (issue 17): 400 MiB back from a guest JVM with no hostd, side by side.

Run (root, QEMU installed): `.venv/bin/python benchmarks/stock_vm.py [--rounds 1] [--ways a,b] [--gc G1]`

Every way gets a fresh, identical guest started with `vm start --reclaim virtio` (1 GiB, 1 vCPU,
private RAM, virtio-balloon with free-page-reporting=on and deflate-on-oom) running the same JVM
(`-Xms768m -Xmx768m -XX:+AlwaysPreTouch`, its default collector or `--gc`, 150 MiB live,
churning 50 MiB/s):

* **virtio-alone** — the host asks (QMP `balloon` to 624 MiB); the guest driver runs with no
  law and no target, so the JVMs give nothing: the stock virtio-balloon on its own.
* **virtio+hb** — the same request; the guest driver's default (`--reclaim virtio`): the JVM's
  idle heap kept free ahead (`--idle-heap free`), report order 0.
* **virtio+hb on-demand** — the same with `--idle-heap on-demand`: the JVM gives only once
  the guest's MemAvailable falls under the reserve.
* **fpr+hb order 0** — no host request: `heapballoon target all 400M` in the guest (local law
  off), free page reporting with `page_reporting_order` 0 hands every freed 4 KiB page over.
* **fpr+hb order 9** — the same with the kernel's default order (2 MiB blocks only).
* **pfn (hostd)** — our own host: hostd runs, the guest (`vm start --reclaim pfn`: memfd RAM)
  reports the balloon's frame numbers, and `heapballoon target --vm NAME 400M` asks; hostd
  pauses the VM to check and punch the pages.

The guest RAM's host-resident size (the Rss of QEMU's guest-RAM mapping in its smaps; not
QEMU's whole RSS, which also holds TCG's translation buffer, growing when a starved guest
re-reads its files) is sampled from the host every 0.25 s from the VM's start; its peak is the
pre-touched guest. Reported per way: guest RAM resident under that peak just before the request and at
the end; seconds from the request until it is 360 MiB (90 % of 400) under the peak (0 if it
already was); the virtio-balloon at the end (QMP query-balloon); VM pauses (QMP STOP events);
the guest's oom_kill and pswpout; whether the JVM and its data survived; the application's
stalls from the request to the end (the demo application times every 5 ms step of its churn
loop, its allocations and its sleep: a collection, a guest waiting for memory and a VM pause all
show; per second it prints the p99 and the worst): the median of those per-second p99s, and the
worst stall.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from hbtest import parse_app_lines, run_cli, wait_for  # noqa: E402

from heapballoon.agent import build  # noqa: E402
from heapballoon.host.ksm import guest_rss_bytes  # noqa: E402

MIB = 1 << 20
WANT = 400 * MIB
LIMIT_S = 90
APP = ["java", "-Xms768m", "-Xmx768m", "-XX:+AlwaysPreTouch", "-jar", "/opt/churn.jar", "--live-mib", "150",
       "--churn-mib-per-s", "50"]
WAYS = {
    # way: (guest driver arguments, how the memory is asked for)
    "virtio-alone": (["--reclaim", "direct", "--no-local-policy"], "host"),
    "virtio+hb": (["--reclaim", "direct", "--report-order", "0"], "host"),
    "virtio+hb on-demand": (["--reclaim", "direct", "--report-order", "0", "--idle-heap", "on-demand"], "host"),
    "fpr+hb order 0": (["--reclaim", "direct", "--report-order", "0", "--no-local-policy"], "guest"),
    "fpr+hb order 9": (["--reclaim", "direct", "--no-local-policy"], "guest"),
    "pfn (hostd)": (None, "hostd"),
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


def one(way, idx, app):
    from heapballoon.vm.launcher import start_vm, stop_vm
    from heapballoon.vm.qmp import EventLog, qmp_execute

    driver_args, ask = WAYS[way]
    name = f"s{idx}"
    hostd = start_hostd() if ask == "hostd" else None
    info = start_vm(name, 1 << 30, cpus=1, reclaim="pfn" if hostd else "virtio",
                    copies=[(build.demo_jar(), "/opt/churn.jar")], cmd=app, driver_args=driver_args)
    rss, done = [], threading.Event()

    def sample():
        while not done.wait(0.25):
            try:
                rss.append(guest_rss_bytes(info.pid, info.memory_bytes)["rss_bytes"])
            except Exception:  # noqa: BLE001 - QEMU gone
                return

    threading.Thread(target=sample, daemon=True).start()
    try:
        wait_for(lambda: guest_jvm(name), 240, 1.0, what="guest JVM")
        wait_for(lambda: '"allocated_mib"' in cli("vm", "logs", name), 240, 1.0, what="guest app")
        time.sleep(15)
        peak = max(rss)
        before = peak - rss[-1]
        events = EventLog(info.paths.qmp_socket if hostd else info.paths.hostd_qmp_socket)
        lines_before = len(app_lines(name))
        t0 = time.monotonic()
        if ask == "host":
            qmp_execute(info.paths.qmp_socket, "balloon", {"value": info.memory_bytes - WANT})
        elif hostd:
            cli("target", "--vm", name, "400M")
        else:
            guest(name, "python3", "-m", "heapballoon", "target", "all", "400M")
        done_s = None
        while time.monotonic() - t0 < LIMIT_S:
            if peak - rss[-1] >= 0.9 * WANT:
                done_s = time.monotonic() - t0
                break
            time.sleep(0.25)
        if done_s is not None:
            time.sleep(10)  # the end state, not the first moment past the line
        fell = peak - rss[-1]
        stops = events.stop().count("STOP")
        actual = qmp_execute(info.paths.qmp_socket, "query-balloon").get("actual", info.memory_bytes)
        stalls = [x for x in app_lines(name)[lines_before:] if "stall_p99_ms" in x]
        jvm = guest_jvm(name) or {}
        vmstat = dict(line.split() for line in guest(name, "cat", "/proc/vmstat").splitlines() if len(line.split()) == 2)
        logs = cli("vm", "logs", name)
        return {"way": way, "done_s": done_s, "before_mib": before / MIB, "fell_mib": fell / MIB,
                "peak_mib": peak / MIB, "virtio_mib": (info.memory_bytes - actual) / MIB, "stops": stops,
                "balloon_mib": jvm.get("balloon_bytes", 0) / MIB, "oom_kill": int(vmstat.get("oom_kill", -1)),
                "pswpout": int(vmstat.get("pswpout", -1)), "jvm_alive": "HEAPBALLOON-CMD-EXIT" not in logs,
                "data_ok": '"error"' not in logs,
                "stall_lines": len(stalls),  # a frozen guest's application prints none: its stalls go unseen
                "stall_p99_ms": statistics.median(x["stall_p99_ms"] for x in stalls) if stalls else None,
                "stall_max_ms": max(x["stall_max_ms"] for x in stalls) if stalls else None}
    finally:
        done.set()
        stop_vm(name)
        if hostd is not None:
            hostd.terminate()
            hostd.wait(15)
            os.environ.pop("HEAPBALLOON_HOST_SOCKET", None)  # the next way has no hostd


def start_hostd() -> subprocess.Popen:
    """hostd in the benchmark's run dir (the pfn way only), its log next to the VMs."""
    run_dir = os.environ["HEAPBALLOON_RUN_DIR"]
    os.environ["HEAPBALLOON_HOST_SOCKET"] = sock = os.path.join(run_dir, "hostd.sock")
    with open(os.path.join(run_dir, "hostd.log"), "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "heapballoon", "hostd"], stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: os.path.exists(sock), 20, 0.1, what="hostd's socket")
    return proc


def app_lines(name: str) -> list[dict]:
    return parse_app_lines(cli("vm", "logs", name))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    p.add_argument("--gc", default="default", help="default (Serial with 1 vCPU) or a collector: G1, Parallel, ...")
    args = p.parse_args()
    app = APP if args.gc == "default" else [APP[0], f"-XX:+Use{args.gc}GC", *APP[1:]]
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        raise SystemExit(f"benchmark: unknown way {bad[0]!r}: one of {', '.join(WAYS)}")
    os.environ["HEAPBALLOON_RUN_DIR"] = tempfile.mkdtemp(prefix="hbstock-", dir="/tmp")
    results = {w: [] for w in ways}
    for r in range(args.rounds):
        for i, way in enumerate(ways if r % 2 == 0 else list(reversed(ways))):
            res = one(way, r * 10 + i, app)
            results[way].append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)

    print(f"### 400 MiB back from a guest JVM on a stock host (1 GiB guest, 1 vCPU, -Xms768m pre-touched, "
          f"{'default collector' if args.gc == 'default' else args.gc}, 150 MiB live; TCG; no hostd but for the pfn way), "
          f"{args.rounds} round(s)\n")
    print("| way | guest RAM resident under its peak before the request | time to 360 MiB under the peak, median | "
          "under the peak at the end | virtio-balloon at the end | JVM balloon | VM pauses | "
          "guest oom_kill / pswpout | JVM alive, data intact | app stalls: per-second p99, median / worst |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in ways:
        print(table_row(w, results[w]))


def counters(rs: list[dict]) -> str:
    """The guest's oom_kill / pswpout, or "unread" when a guest did not answer (starved)."""
    if any(x["oom_kill"] < 0 for x in rs):
        return "unread (the guest did not answer)"
    return f"{max(x['oom_kill'] for x in rs)} / {max(x['pswpout'] for x in rs)}"


def table_row(way: str, rs: list[dict]) -> str:
    times = [x["done_s"] for x in rs if x["done_s"] is not None]
    took = f"{statistics.median(times):.1f} s" if len(times) == len(rs) else f"not within {LIMIT_S} s ({len(times)}/{len(rs)})"

    def med(key: str) -> str:
        return f"{statistics.median(x[key] for x in rs):.0f} MiB"

    cells = [way, med("before_mib"), took, med("fell_mib"), med("virtio_mib"), med("balloon_mib"),
             str(sum(x["stops"] for x in rs)), counters(rs),
             f"{all(x['jvm_alive'] for x in rs)}, {all(x['data_ok'] for x in rs)}", stall_cell(rs)]
    return "| " + " | ".join(cells) + " |"


def stall_cell(rs: list[dict]) -> str:
    p99 = [x["stall_p99_ms"] for x in rs if x["stall_p99_ms"] is not None]
    worst = [x["stall_max_ms"] for x in rs if x["stall_max_ms"] is not None]
    if not p99:
        return "no lines (the application did not report)"
    seen = min(x.get("stall_lines", 0) for x in rs)
    return f"{statistics.median(p99):.1f} / {max(worst):.0f} ms ({seen} s reported)"


if __name__ == "__main__":
    main()
