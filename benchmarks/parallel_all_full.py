#!/usr/bin/env python3
"""Why Parallel's balloon costs GC time at 100 MiB/s (issue 15): every collection becomes a full one.

Parallel (PS) skips a young collection and runs a full one instead whenever its padded average
of promoted bytes (average + 3 deviations, updated only by young collections) exceeds the old
generation's free space. This runs plain `java` (no agent) with the scenario's shape: a 1 GiB
pre-touched heap, 200 MiB live in 64 KiB arrays, 100 MiB/s of 64 KiB garbage; after WAIT_S seconds it
allocates and keeps BALLOON_MIB in arrays of CHUNK_MIB (8: the agent's chunk) (what a balloon does, less the page release), then
runs on for AFTER_S seconds. From the GC log (-Xlog:gc,gc+ergo=trace) it prints the padded
average before and after, and the young and full collections after the allocation.

    .venv/bin/python benchmarks/parallel_all_full.py [--jdk 21] [--wait-s 10,60] [--balloon-mib 400] [--chunk-mib 8]
        [--place] [--java-opts=-XX:-ScavengeBeforeFullGC]

Needs `javac` (Debian's JDK 17) to compile the probe with --release 17; `make jdks` for 21 and 25.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import jdks  # noqa: E402

PROBE = """
import java.util.*;
public class Probe {
    static volatile Object sink;
    public static void main(String[] a) throws Exception {
        double waitS = Double.parseDouble(a[0]), afterS = Double.parseDouble(a[1]);
        int balloonMib = Integer.parseInt(a[2]), chunkMib = Integer.parseInt(a[3]);
        boolean place = Boolean.parseBoolean(a[4]);
        List<byte[]> live = new ArrayList<>(), chunks = new ArrayList<>();
        for (int i = 0; i < 200 * 16; i++) live.add(new byte[64 << 10]);
        long t0 = System.nanoTime(), churned = 0;
        boolean held = false;
        while (System.nanoTime() - t0 < (waitS + afterS) * 1e9) {
            double s = (System.nanoTime() - t0) / 1e9;
            if (!held && s >= waitS) {
                System.out.println("BALLOON " + s);
                for (int i = 0; i < balloonMib / chunkMib; i++) {
                    chunks.add(new byte[chunkMib << 20]);
                    // --place: a full collection after every 128 MiB (half of eden), as the agent's placing ticks
                    if (place && ((i + 1) * chunkMib % 128 == 0 || i + 1 == balloonMib / chunkMib)) System.gc();
                }
                held = true;
            }
            for (long due = (long) (s * 100 * (1 << 20)); churned < due; churned += 64 << 10) sink = new byte[64 << 10];
            Thread.sleep(5);
        }
        System.out.println("SIZE " + (live.size() + chunks.size()));
    }
}
"""

PADDED = re.compile(r"\[(\d+\.\d+)s\].*avg_promoted_padded_avg: (\d+)")
PAUSE = re.compile(r"\[(\d+\.\d+)s\].*Pause (Young|Full) \(([^)]*)\).* (\d+\.\d+)ms")


def one(java: str, classes: Path, wait_s: float, after_s: float, balloon_mib: int, chunk_mib: int, log: Path,
        place: bool = False, java_opts: list[str] = ()) -> dict:
    out = subprocess.run([java, *java_opts, "-Xms1g", "-Xmx1g", "-XX:+UseParallelGC", "-XX:+AlwaysPreTouch",
                          f"-Xlog:gc,gc+ergo=trace:file={log}:uptime", "-cp", str(classes), "Probe",
                          str(wait_s), str(after_s), str(balloon_mib), str(chunk_mib), str(place).lower()],
                         capture_output=True, text=True, check=True)
    start_s = float(re.search(r"BALLOON (\S+)", out.stdout).group(1))
    text = log.read_text()
    padded = [(float(t), int(v)) for t, v in PADDED.findall(text)]
    pauses = [(float(t), kind, cause, float(ms)) for t, kind, cause, ms in PAUSE.findall(text)]
    after = [p for p in pauses if p[0] > start_s + 2]
    before = [v for t, v in padded if t < start_s]
    return {"before_mib": str(before[-1] >> 20) if before else "none yet",
            "after_mib": max((v for t, v in padded if t >= start_s), default=0) >> 20,
            "young": sum(1 for p in after if p[1] == "Young"), "full": sum(1 for p in after if p[1] == "Full"),
            "full_ms_max": max((p[3] for p in after if p[1] == "Full"), default=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jdk", type=int, default=21)
    ap.add_argument("--wait-s", default="10,60", help="seconds before the allocation, comma-separated")
    ap.add_argument("--after-s", type=float, default=40.0)
    ap.add_argument("--balloon-mib", default="0,200,400", help="MiB held, comma-separated")
    ap.add_argument("--chunk-mib", type=int, default=8,
                    help="array size; at least half of eden (~128 MiB here) and Parallel allocates it in the old "
                         "generation directly, where no young collection counts it as promoted")
    ap.add_argument("--place", action="store_true",
                    help="System.gc() after every 128 MiB allocated, as the variant on the branch parallel-reserve "
                         "places its chunks; on JDK 17-22 that full collection scavenges first (ScavengeBeforeFullGC)")
    ap.add_argument("--java-opts", default="", help="more JVM options, space-separated, e.g. -XX:-ScavengeBeforeFullGC")
    args = ap.parse_args()
    java = jdks.require_java(args.jdk)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "Probe.java").write_text(PROBE)
        subprocess.run(["javac", "--release", "17", "-d", str(work), str(work / "Probe.java")], check=True)
        print(f"JDK {args.jdk} Parallel {args.java_opts}, {args.chunk_mib} MiB arrays"
              f"{', placed by System.gc()' if args.place else ''}, 1 GiB heap (old generation 683 MiB), "
              f"200 MiB live, 100 MiB/s; "
              f"collections counted from 2 s after the allocation for {args.after_s:.0f} s")
        print("| wait (s) | held (MiB) | PS padded promotion before (MiB) | highest after (MiB) | young | full | longest full (ms) |")
        print("|---|---|---|---|---|---|---|")
        for wait_s in (float(w) for w in args.wait_s.split(",")):
            for mib in (int(m) for m in args.balloon_mib.split(",")):
                r = one(java, work, wait_s, args.after_s, mib, args.chunk_mib, work / "gc.log", args.place,
                        args.java_opts.split())
                print(f"| {wait_s:.0f} | {mib} | {r['before_mib']} | {r['after_mib']} | {r['young']} | {r['full']} "
                      f"| {r['full_ms_max']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
