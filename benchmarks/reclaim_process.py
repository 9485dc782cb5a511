#!/usr/bin/env python3
"""Process-mode benchmark: the direct path against the KSM path, and the balloon's cost.

Run: `.venv/bin/python benchmarks/reclaim_process.py [--rounds 3]` (root, for KSM and pagemap).

Part 1 — reclaim 1 GiB from a JVM (-Xms2g -Xmx2g, 200 MiB live, churning), interleaving the
paths round by round so both see the same machine noise: wall time from `target` until the
JVM's RSS is down by 0.9 GiB (90 %), and the CPU it cost (JVM + daemon + ksmd).

Part 2 — what an inflated balloon costs the application: one JVM (-Xms1g -Xmx1g, 200 MiB
live, churning as fast as it can) alternates 15 s phases without and with a 512 MiB balloon;
allocation throughput from the app, GC pauses from its -Xlog:gc log, per phase.

Prints a markdown report (medians and ratios; never a single absolute time alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from heapballoon.agent import build  # noqa: E402
from heapballoon.poll import Timeout, wait_until  # noqa: E402

PY = sys.executable
MIB = 1 << 20
GIB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def ksmd_pid() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "ksmd":
                        return int(entry)
            except OSError:
                pass
    return None


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cli(env, *args):
    return subprocess.run([PY, "-m", "heapballoon", *map(str, args)], env=env, capture_output=True, text=True, check=True)


def status(env, pid):
    out = json.loads(cli(env, "status", "--json").stdout)
    return next((j for j in out["jvms"] if j["pid"] == pid), None)


def wait(pred, timeout_s, what):
    try:
        return wait_until(pred, timeout_s, what, interval_s=0.05)
    except Timeout as err:
        raise SystemExit(f"benchmark: {err}") from None


class App:
    def __init__(self, env, heap, live_mib, churn, extra=(), spike=0):
        java = ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", *extra, "-jar", str(build.demo_jar()),
                "--live-mib", str(live_mib), "--churn-mib-per-s", str(churn), "--spike-mib", str(spike)]
        self.proc = subprocess.Popen([PY, "-m", "heapballoon", "run", "--", *java], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.samples: list[tuple[float, dict]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), json.loads(line)))
            except ValueError:
                pass

    def last(self):
        return self.samples[-1][1] if self.samples else {}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Daemon:
    def __init__(self, tmp, reclaim):
        self.env = dict(os.environ, HEAPBALLOON_SOCKET=os.path.join(tmp, f"{reclaim}.sock"))
        self.log = open(os.path.join(tmp, f"{reclaim}.log"), "w")
        self.proc = subprocess.Popen([PY, "-m", "heapballoon", "daemon", "--reclaim", reclaim, "--interval-s", "0.25"],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait(lambda: os.path.exists(self.env["HEAPBALLOON_SOCKET"]), 20, "daemon")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)


def reclaim_once(tmp, reclaim):
    d = Daemon(tmp, reclaim)
    app = App(d.env, "2g", 200, 300, spike=1600)
    try:
        wait(lambda: status(d.env, app.pid), 30, "agent")
        wait(lambda: app.last().get("allocated_mib", 0) > 3000, 90, "warm-up")
        rss0 = rss(app.pid)
        ksmd = ksmd_pid()
        cpu0 = cpu_s(app.pid) + cpu_s(d.proc.pid) + (cpu_s(ksmd) if ksmd else 0)
        t0 = time.monotonic()
        cli(d.env, "target", app.pid, "1G")
        wait(lambda: rss0 - rss(app.pid) >= 0.9 * GIB, 120, f"RSS down by 0.9 GiB ({reclaim})")
        wall = time.monotonic() - t0
        cpu = cpu_s(app.pid) + cpu_s(d.proc.pid) + (cpu_s(ksmd) if ksmd else 0) - cpu0
        s = wait(lambda: (s := status(d.env, app.pid)) and s["reclaimed_bytes"] >= 0.95 * GIB and s, 30, "verified")
        return {"wall_s": wall, "cpu_s": cpu, "rss_before": rss0, "rss_after": rss(app.pid),
                "reclaimed": s["reclaimed_bytes"]}
    finally:
        app.stop()
        d.stop()


def pauses_in(log_path, start, end):
    """GC pause durations (ms) logged between two wall-clock times (-Xlog decorator timemillis)."""
    out = []
    pat = re.compile(r"\[(\d+)ms\].*Pause.* (\d+\.\d+)ms")
    with open(log_path) as f:
        for line in f:
            m = pat.search(line)
            if m and start * 1000 <= int(m.group(1)) <= end * 1000:
                out.append(float(m.group(2)))
    return out


def p99(values):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def balloon_cost(tmp, phases, phase_s):
    d = Daemon(tmp, "direct")
    gclog = os.path.join(tmp, "gc.log")
    app = App(d.env, "1g", 200, 4000, extra=(f"-Xlog:gc:file={gclog}:timemillis",), spike=700)
    rows = []
    try:
        wait(lambda: status(d.env, app.pid), 30, "agent")
        wait(lambda: app.last().get("allocated_mib", 0) > 3000, 90, "warm-up")
        for i in range(phases):
            balloon = i % 2 == 1
            cli(d.env, "target", app.pid, "512M" if balloon else "0")
            if balloon:
                wait(lambda: status(d.env, app.pid)["balloon_bytes"] >= 500 * MIB, 60, "inflate")
            else:
                wait(lambda: status(d.env, app.pid)["balloon_bytes"] == 0, 60, "deflate")
            time.sleep(1)
            start = time.time()
            a0 = app.last().get("allocated_mib", 0)
            time.sleep(phase_s)
            end = time.time()
            a1 = app.last().get("allocated_mib", 0)
            pauses = pauses_in(gclog, start, end)
            rows.append({"balloon": balloon, "mib_per_s": (a1 - a0) / (end - start), "pauses": len(pauses),
                         "p50": statistics.median(pauses) if pauses else 0.0, "p99": p99(pauses)})
        assert not [s for _, s in app.samples if "error" in s], "application reported errors"
    finally:
        app.stop()
        d.stop()
    return rows


def pressure_once(tmp, idx):
    """Balloon 512 MiB in a 1 GiB heap, then the app grows its live set 200 → 700 MiB: how fast
    does the balloon give way (agent-measured: GC end → chunks dropped), and does the app live?"""
    d = Daemon(tmp, "direct")
    app = App(d.env, "1g", 200, 200, spike=700)
    try:
        wait(lambda: status(d.env, app.pid), 30, "agent")
        cli(d.env, "target", app.pid, "512M")
        wait(lambda: status(d.env, app.pid)["balloon_bytes"] >= 500 * MIB, 30, "inflate")
        t0 = time.monotonic()
        app.proc.stdin.write("live 700\n")
        app.proc.stdin.flush()
        wait(lambda: app.last().get("live_mib") == 700 or app.proc.poll() is not None, 90, "live set growth")
        grow_s = time.monotonic() - t0
        time.sleep(1)
        with open(d.log.name) as f:
            lat = [int(m.group(1)) for m in re.finditer(r"event (?:pressure_release|soft_cleared): released .*? in (\d+) ms", f.read())]
        ok = app.proc.poll() is None and not [x for _, x in app.samples if "error" in x]
        return {"latencies_ms": lat, "grow_s": grow_s, "ok": ok,
                "balloon_after": status(d.env, app.pid)["balloon_bytes"] if ok else -1}
    finally:
        app.stop()
        d.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phases", type=int, default=4)
    p.add_argument("--phase-s", type=float, default=15)
    args = p.parse_args()
    build.agent_jar(), build.native_lib(), build.demo_jar()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"direct": [], "ksm": []}
        for r in range(args.rounds):
            order = ("direct", "ksm") if r % 2 == 0 else ("ksm", "direct")
            for path in order:
                res = reclaim_once(tmp, path)
                results[path].append(res)
                print(f"round {r} {path}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU", file=sys.stderr)
        cost = balloon_cost(tmp, args.phases, args.phase_s)
        pressure = [pressure_once(tmp, i) for i in range(args.rounds)]

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")} for k, v in results.items()}
    print(f"### Reclaim 1 GiB from a JVM (-Xms2g, 200 MiB live): {args.rounds} rounds, interleaved\n")
    print("| path | wall to RSS −0.9 GiB, median | CPU (JVM+daemon+ksmd), median | rounds (wall s) |")
    print("|---|---|---|---|")
    for k in ("direct", "ksm"):
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in results[k])
        print(f"| {k} | {med[k]['wall_s']:.2f} s | {med[k]['cpu_s']:.2f} s | {walls} |")
    print(f"\nksm / direct: wall ×{med['ksm']['wall_s'] / med['direct']['wall_s']:.1f}, "
          f"CPU ×{med['ksm']['cpu_s'] / max(med['direct']['cpu_s'], 1e-3):.1f}\n")
    print(f"### Application cost of a 512 MiB balloon (-Xms1g, 200 MiB live, max churn): {args.phases} phases of {args.phase_s:g} s\n")
    print("| phase | balloon | alloc MiB/s | GC pauses | pause p50 | pause p99 |")
    print("|---|---|---|---|---|---|")
    for i, row in enumerate(cost):
        print(f"| {i} | {'512 MiB' if row['balloon'] else 'none'} | {row['mib_per_s']:.0f} | {row['pauses']} | "
              f"{row['p50']:.2f} ms | {row['p99']:.2f} ms |")
    lat = [x for p in pressure for x in p["latencies_ms"]]
    print(f"\n### Pressure give-back: live set 200 → 700 MiB under a 512 MiB balloon (-Xms1g), {args.rounds} runs\n")
    print("| run | releases | latency per release (GC end → chunks dropped) | balloon after | app alive, data intact |")
    print("|---|---|---|---|---|")
    for i, pr in enumerate(pressure):
        print(f"| {i} | {len(pr['latencies_ms'])} | {', '.join(f'{x} ms' for x in pr['latencies_ms'])} | "
              f"{pr['balloon_after'] / MIB:.0f} MiB | {pr['ok']} |")
    if lat:
        print(f"\nrelease latency: median {statistics.median(lat):.0f} ms, max {max(lat)} ms over {len(lat)} releases")
    on = [r for r in cost if r["balloon"]]
    off = [r for r in cost if not r["balloon"]]
    if on and off:
        print(f"\nwith / without balloon: throughput ×{statistics.median(r['mib_per_s'] for r in on) / statistics.median(r['mib_per_s'] for r in off):.2f}, "
              f"pause p99 ×{statistics.median(r['p99'] for r in on) / max(statistics.median(r['p99'] for r in off), 1e-3):.2f}")


if __name__ == "__main__":
    main()
