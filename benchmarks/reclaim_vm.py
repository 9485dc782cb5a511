#!/usr/bin/env python3
"""VM-mode benchmark: reclaim 512 MiB from a guest JVM three ways, in one run.

Run (root, QEMU installed): `.venv/bin/python benchmarks/reclaim_vm.py [--rounds 1]`

Each way gets a fresh, identical guest (1536 MiB, 1 vCPU; a JVM -Xms1g -Xmx1g with 150 MiB
live, churning, its heap pre-touched so it is committed and dirty):

* **pfn** — heapballoon by page number: `target --vm NAME 512M`; the guest driver reports the
  balloon's guest page numbers, hostd pauses the VM in batches, checks zero, punches the memfd.
* **ksm** — heapballoon by content: the same target on a VM with private mergeable RAM; the
  zeroed balloon pages are merged by the host's KSM into the zero page.
* **virtio-balloon** — the guest-OS balloon for the same amount (QMP `balloon`), the baseline:
  it can only take memory the guest OS considers free, not the JVM's committed heap.

Reported: seconds from the request until the guest's host-resident memory is down by 90 % of
512 MiB (or how far it got in the time limit), VM pause p50/p99 (pfn), and whether the JVM and
its data survived. Rounds alternate the order; medians are printed.
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

from heapballoon.agent import build  # noqa: E402
from heapballoon.poll import Timeout, wait_until  # noqa: E402

PY = sys.executable
MIB = 1 << 20
GUEST = 1536 * MIB
WANT = 512 * MIB
LIMIT_S = 120


def cli(env, *args, check=True):
    p = subprocess.run([PY, "-m", "heapballoon", *map(str, args)], env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise SystemExit(f"benchmark: heapballoon {' '.join(map(str, args))}: {p.stderr.strip()}")
    return p


def vm_status(env, name):
    body = json.loads(cli(env, "status", "--json", "--vms").stdout)
    return next((v for v in body["vms"] if v["name"] == name), None)


def resident_bytes(env, name, reclaim):
    """Host memory behind the guest's RAM: memfd blocks (pfn) or the RAM mapping's Rss (ksm)."""
    from heapballoon.host.ksm import guest_rss_bytes
    from heapballoon.vm.qemu import get_vm, open_guest_ram

    if reclaim == "pfn":
        fd, _ = open_guest_ram(name, writable=False)
        try:
            return os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
    return guest_rss_bytes(get_vm(name).pid, GUEST)["rss_bytes"]


def wait(pred, timeout_s, what):
    try:
        return wait_until(pred, timeout_s, what, interval_s=0.05)
    except Timeout as err:
        raise SystemExit(f"benchmark: {err}") from None


def one(env, way, idx):
    name = f"b{idx}{way[:3]}"
    reclaim = "ksm" if way == "ksm" else "pfn"
    cli(env, "vm", "start", name, "--memory", "1536M", "--reclaim", reclaim, "--copy",
        f"{build.demo_jar()}:/opt/churn.jar", "--", "java", "-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch",
        "-jar", "/opt/churn.jar", "--live-mib", "150", "--churn-mib-per-s", "50")
    try:
        wait(lambda: (v := vm_status(env, name)) and v["jvms"], 240, "guest JVM")
        time.sleep(5)
        before = resident_bytes(env, name, reclaim)
        t0 = time.monotonic()
        if way == "virtio-balloon":
            from heapballoon.vm.qmp import qmp_execute
            from heapballoon.vm.qemu import state_dir

            qmp_execute(str(state_dir(name) / "qmp.sock"), "balloon", {"value": GUEST - WANT})
        else:
            cli(env, "target", "--vm", name, "512M")
        done_s = None
        fell = 0
        while time.monotonic() - t0 < LIMIT_S:
            fell = before - resident_bytes(env, name, reclaim)
            if fell >= 0.9 * WANT:
                done_s = time.monotonic() - t0
                break
            time.sleep(0.25)
        v = vm_status(env, name)
        logs = cli(env, "vm", "logs", name).stdout
        alive = "HEAPBALLOON-CMD-EXIT" not in logs and "Out of memory" not in logs
        data_ok = '"error"' not in logs
        return {"way": way, "done_s": done_s, "fell_mib": fell / MIB, "before_mib": before / MIB,
                "p50": v.get("pause_ms_p50", 0.0) if v else 0.0, "p99": v.get("pause_ms_p99", 0.0) if v else 0.0,
                "jvm_alive": alive, "data_ok": data_ok}
    finally:
        cli(env, "vm", "stop", name, check=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    run_dir = tempfile.mkdtemp(prefix="hbbench-", dir="/tmp")
    os.environ["HEAPBALLOON_RUN_DIR"] = run_dir
    env = dict(os.environ, HEAPBALLOON_HOST_SOCKET=os.path.join(run_dir, "hostd.sock"))
    hostd = subprocess.Popen([PY, "-m", "heapballoon", "hostd"], env=env,
                             stdout=open(os.path.join(run_dir, "hostd.log"), "w"), stderr=subprocess.STDOUT)
    ways = ["pfn", "ksm", "virtio-balloon"]
    results = {w: [] for w in ways}
    try:
        wait(lambda: os.path.exists(env["HEAPBALLOON_HOST_SOCKET"]), 20, "hostd")
        for r in range(args.rounds):
            for i, way in enumerate(ways if r % 2 == 0 else list(reversed(ways))):
                res = one(env, way, r * 10 + i)
                results[way].append(res)
                print(json.dumps(res), file=sys.stderr)
    finally:
        hostd.terminate()
        hostd.wait(15)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    print(f"### Reclaim 512 MiB from a guest JVM (1536 MiB guest, G1 -Xms1g pre-touched, 150 MiB live; TCG), "
          f"{args.rounds} round(s)\n")
    print("| way | time to −460 MiB host-resident, median | fell within limit | pause p50 / p99 | JVM alive, data intact |")
    print("|---|---|---|---|---|")
    for w in ways:
        rs = results[w]
        t = med([x["done_s"] for x in rs])
        print(f"| {w} | {'%.1f s' % t if t is not None else f'not within {LIMIT_S} s'} | "
              f"{med([x['fell_mib'] for x in rs]):.0f} MiB | "
              f"{med([x['p50'] for x in rs]):.1f} / {med([x['p99'] for x in rs]):.1f} ms | "
              f"{all(x['jvm_alive'] for x in rs)}, {all(x['data_ok'] for x in rs)} |")


if __name__ == "__main__":
    main()
