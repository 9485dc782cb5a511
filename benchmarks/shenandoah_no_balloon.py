#!/usr/bin/env python3
"""Does Shenandoah keep up with the high rate on its own, with no agent and no balloon (issue 15)?

Shenandoah clears every soft reference in a collection that handles an allocation failure (a
degenerated cycle), however much memory that collection then frees. So where the JVM alone
runs into allocation failures, a balloon held by soft references is cleared whatever its size
and whatever headroom it leaves. This runs the scenario's high-rate JVM (1 GiB pre-touched heap,
200 MiB live, 1500 MiB/s of 64 KiB garbage plus the live set replaced at 100 MiB/s) with plain
`java`, no agent, for SECONDS per JDK, and counts in its GC log (-Xlog:gc):

* allocation failures ("Failed to allocate ..."),
* degenerated collections ("Pause Degenerated GC"), and how many of those were "Outside of Cycle"
  (no concurrent cycle had been started in time),
* concurrent cycles that completed.

    .venv/bin/python benchmarks/shenandoah_no_balloon.py [--jdks 17,21,25] [--seconds 40] [--java-opts=...]

Needs `make jdks` for JDK 21 and 25. One JVM at a time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import jdks  # noqa: E402
from heapballoon.agent import build  # noqa: E402

CHURN_MIB_PER_S = 1500
ROTATE_MIB_PER_S = 100


def run_one(jdk: int, seconds: float, workdir: Path, java_opts: list[str] = ()) -> dict:
    log = workdir / f"gc-{jdk}.log"
    cmd = [jdks.java(jdk), *java_opts, "-Xms1g", "-Xmx1g", "-XX:+UseShenandoahGC", "-XX:+AlwaysPreTouch", f"-Xlog:gc:file={log}",
           "-jar", str(build.demo_jar()), "--live-mib", "200", "--churn-mib-per-s", str(CHURN_MIB_PER_S),
           "--spike-mib", "0", "--rotate-mib-per-s", str(ROTATE_MIB_PER_S)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(seconds)
        out, _ = proc.communicate("quit\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    last = [line for line in out.splitlines() if line.startswith("{")]
    return {"failures": len(re.findall(r"Failed to allocate", text)),
            "degenerated": len(re.findall(r"Pause Degenerated GC", text)),
            "outside": len(re.findall(r"Pause Degenerated GC \(Outside of Cycle\)", text)),
            "cycles": len(re.findall(r"Concurrent cleanup.*->", text)),
            "version": subprocess.run([jdks.java(jdk), "-version"], capture_output=True, text=True).stderr.split("\n")[0],
            "last": last[-1] if last else out[-200:]}


def _jdk_list(text: str) -> list[int]:
    try:
        wanted = [int(j) for j in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of JDK majors: {text!r} (e.g. 17,21,25)") from None
    if unknown := [j for j in wanted if j not in jdks.COLLECTORS]:
        raise argparse.ArgumentTypeError(f"no such JDK in the matrix: {unknown} (known: {list(jdks.COLLECTORS)})")
    return wanted


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jdks", default="17,21,25", type=_jdk_list, help="comma-separated JDK majors")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--java-opts", default="", help="more JVM options, space-separated "
                   "(e.g. -XX:ShenandoahMinFreeThreshold=20)")
    args = p.parse_args()
    wanted = args.jdks
    for jdk in wanted:
        if jdks.java(jdk) is None:
            print(f"error: {jdks.missing(jdk)}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="hb-shen-"))
    print(f"Shenandoah {args.java_opts}, no agent, {CHURN_MIB_PER_S + ROTATE_MIB_PER_S} MiB/s, "
          f"{args.seconds:.0f} s per JDK\n")
    print("| JDK | java -version | allocation failures | degenerated (outside of cycle) | concurrent cycles |")
    print("|---|---|---|---|---|")
    for jdk in wanted:
        r = run_one(jdk, args.seconds, work, args.java_opts.split())
        print(f"| {jdk} | {r['version']} | {r['failures']} | {r['degenerated']} ({r['outside']}) | {r['cycles']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
