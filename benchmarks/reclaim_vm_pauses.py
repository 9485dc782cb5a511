#!/usr/bin/env python3
"""VM pauses while reclaiming 1 GiB from a guest whose JVM churns: hostd's two engines, one run.

Run (root, QEMU installed): `.venv/bin/python benchmarks/reclaim_vm_pauses.py [--rounds 1]`

Per engine (``hostd --engine batch``: the first engine, fixed batches of 8192 pages with the
zero check and the punches all under the pause; ``hostd --engine short``: pre-check on the
running guest, pauses bounded in time) a fresh hostd and a fresh, identical guest: 2 GiB,
1 vCPU, a JVM ``-Xms1536m -Xmx1536m -XX:+UseG1GC -XX:+AlwaysPreTouch`` holding 150 MiB and
churning 100 MiB/s. ``target --vm NAME 1G``; measured: seconds until the guest RAM memfd's
resident bytes are down by 0.9 GiB (and GiB/s), then hostd's own pause figures from
``status --json``: pauses, sum, pause ms per GiB punched, and p50/p99/max of each part
(stop, check, punch, cont, total; guest = QEMU's STOP → RESUME timestamps, short engine only). Rounds alternate the engines' order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from heapballoon.agent import build  # noqa: E402
from heapballoon.poll import Timeout, wait_until  # noqa: E402

PY = sys.executable
MIB, GIB = 1 << 20, 1 << 30
WANT = 1 * GIB
LIMIT_S = 240
PARTS = ("stop", "check", "punch", "cont", "total", "guest")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reclaim_vm import cli, vm_status  # noqa: E402 - the VM benchmarks' shared CLI helpers


def resident_bytes(name):
    from heapballoon.vm.qemu import open_guest_ram

    fd, _ = open_guest_ram(name, writable=False)
    try:
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


def wait(pred, timeout_s, what):
    try:
        return wait_until(pred, timeout_s, what, interval_s=0.25)
    except Timeout as err:
        raise SystemExit(f"benchmark: {err}") from None


def app_running(env, name):
    for line in reversed(cli(env, "vm", "logs", name).stdout.splitlines()):
        if line.startswith("[cmd] {"):
            try:
                return json.loads(line[6:]).get("allocated_mib", 0) >= 150 + 300
            except ValueError:
                return False
    return False


def one(spec, idx):
    engine, _, budget = spec.partition(":")
    budget_ms = float(budget) if budget else None
    run_dir = tempfile.mkdtemp(prefix="hbpause-", dir="/tmp")
    env = dict(os.environ, HEAPBALLOON_RUN_DIR=run_dir, HEAPBALLOON_HOST_SOCKET=os.path.join(run_dir, "hostd.sock"))
    os.environ["HEAPBALLOON_RUN_DIR"] = run_dir  # open_guest_ram looks there
    argv = [PY, "-m", "heapballoon", "hostd", "--engine", engine]
    if budget_ms:
        argv += ["--pause-budget-ms", str(budget_ms)]
    with open(os.path.join(run_dir, "hostd.log"), "w") as log:
        hostd = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    name = f"p{idx}{engine[:2]}"
    try:
        wait(lambda: os.path.exists(env["HEAPBALLOON_HOST_SOCKET"]), 20, "hostd")
        cli(env, "vm", "start", name, "--memory", "2G", "--copy", f"{build.demo_jar()}:/opt/churn.jar", "--",
            "java", "-Xms1536m", "-Xmx1536m", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch", "-jar", "/opt/churn.jar",
            "--live-mib", "150", "--churn-mib-per-s", "100")
        wait(lambda: (v := vm_status(env, name)) and v["jvms"], 300, "guest JVM")
        wait(lambda: app_running(env, name), 180, "guest application churning")
        before = resident_bytes(name)
        t0 = time.monotonic()
        cli(env, "target", "--vm", name, "1G")
        done_s = None
        fell = 0
        while time.monotonic() - t0 < LIMIT_S:
            fell = before - resident_bytes(name)
            if fell >= 0.9 * WANT:
                done_s = time.monotonic() - t0
                break
            time.sleep(0.1)
        time.sleep(2)  # the last acks
        v = vm_status(env, name) or {}
        logs = cli(env, "vm", "logs", name).stdout
        return {"engine": spec, "done_s": done_s, "fell_mib": round(fell / MIB),
                "gib_per_s": round(0.9 * WANT / GIB / done_s, 3) if done_s else None,
                "pauses": v.get("pauses"), "pause_ms_sum": v.get("pause_ms_sum"),
                "pause_ms_per_gib": v.get("pause_ms_per_gib"), "breakdown_ms": v.get("pause_breakdown_ms"),
                "guest_pause_ms_per_gib": v.get("guest_pause_ms_per_gib"),
                "punched_mib": (v.get("totals_pages", {}).get("punched", 0) * 4096) >> 20,
                "jvm_alive": "HEAPBALLOON-CMD-EXIT" not in logs and "Out of memory" not in logs,
                "data_ok": '"error"' not in logs}
    finally:
        cli(env, "vm", "stop", name, check=False)
        hostd.terminate()
        hostd.wait(15)
        shutil.rmtree(run_dir, ignore_errors=True)


def row(r):
    b = r["breakdown_ms"] or {p: {"p50": 0, "p99": 0, "max": 0} for p in PARTS}
    parts = " | ".join(f"{b[p]['p50']:.2f} / {b[p]['p99']:.2f}" for p in PARTS)
    t = f"{r['done_s']:.1f} s ({r['gib_per_s']:.2f} GiB/s)" if r["done_s"] else f"not in {LIMIT_S} s"
    return (f"| {r['engine']} | {t} | {r['punched_mib']} MiB | {r['pauses']} | {parts} | {b['total']['max']:.2f} | "
            f"{r['pause_ms_sum']:.0f} ms | {r['pause_ms_per_gib']:.0f} ({r['guest_pause_ms_per_gib'] or 0:.0f}) | "
            f"{r['jvm_alive']}, {r['data_ok']} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--engines", nargs="*", default=["batch", "short"],
                   help="batch, short, or short:MS for a pause budget other than hostd's default")
    args = p.parse_args()
    rows = []
    for r in range(args.rounds):
        for i, engine in enumerate(args.engines if r % 2 == 0 else list(reversed(args.engines))):
            res = one(engine, r * 10 + i)
            rows.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
    print("| engine | target → memfd −0.9 GiB | punched | pauses | stop p50 / p99 ms | check | punch | cont | "
          "total | guest | total max | paused | ms per GiB (guest) | JVM alive, data intact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for res in rows:
        print(row(res))


if __name__ == "__main__":
    main()
