"""report.md: one table per overcommit level (medians over the rounds, with the min–max range),
the managers' settings, the issue's bar met or not, and plain sentences saying where heapballoon
loses to a baseline, computed from the medians. Also the run's config and machine lines for
results.json.
"""

from __future__ import annotations

import dataclasses
import os

from heapballoon.experiment.config import Config, machine
from heapballoon.experiment.rounds import worst

COLUMNS = [("manager", "manager"), ("throughput_ratio", "throughput ratio"), ("latency_p50_ms", "p50 ms"),
           ("latency_p99_ms", "p99 ms"), ("oom_events", "OOM events"), ("swap_out_pages", "swap-out pages"),
           ("swap_out_zero_pages", "of which zero"), ("swap_in_pages", "swap-in pages"), ("major_faults", "major faults"),
           ("peak_cgroup_bytes", "peak MiB"), ("reaction_s", "reaction s"), ("manager_cpu_s", "manager CPU s"),
           ("data_errors", "data errors")]


def machine_line() -> str:
    return machine()


def config_dict(cfg: Config) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out_dir"}


def _fmt(key: str, value) -> str:
    if value is None:
        return "—"
    if key == "peak_cgroup_bytes":
        return f"{value / (1 << 20):.0f}"
    if isinstance(value, float):
        return str(round(value, 3))
    return str(value)


def _cell(key: str, value, rng: list | None = None) -> str:
    """``median (min–max)`` when the rounds differ, else the value."""
    text = _fmt(key, value)
    if rng and _fmt(key, rng[0]) != _fmt(key, rng[1]):
        text += f" ({_fmt(key, rng[0])}–{_fmt(key, rng[1])})"
    return text


def losses(runs: list[dict]) -> list[str]:
    """Sentences naming each level and metric where heapballoon does worse than a baseline."""
    out = []
    for level in sorted({r["overcommit"] for r in runs}):
        at = {r["manager"]: r for r in runs if r["overcommit"] == level}
        hb = at.get("heapballoon")
        if hb is None:
            continue
        for name, other in at.items():
            if name == "heapballoon":
                continue
            if (hb["throughput_ratio"] or 0) < (other["throughput_ratio"] or 0) - 0.02:
                out.append(f"At {level}% overcommit heapballoon's throughput ({hb['throughput_ratio']}) is below "
                           f"{name}'s ({other['throughput_ratio']}).")
            if hb["latency_p99_ms"] and other["latency_p99_ms"] and hb["latency_p99_ms"] > 1.1 * other["latency_p99_ms"]:
                out.append(f"At {level}% overcommit heapballoon's p99 latency ({hb['latency_p99_ms']} ms) is worse than "
                           f"{name}'s ({other['latency_p99_ms']} ms).")
            if hb["oom_events"] > other["oom_events"]:
                out.append(f"At {level}% overcommit heapballoon has more OOM events ({hb['oom_events']}) than {name}.")
            if hb["data_errors"] > other["data_errors"]:
                out.append(f"At {level}% overcommit heapballoon has data errors ({hb['data_errors']}); {name} has "
                           f"{other['data_errors']}.")
            if hb["manager_cpu_s"] > other["manager_cpu_s"] + 0.5:
                out.append(f"At {level}% overcommit heapballoon's daemon used {hb['manager_cpu_s']} s of CPU, "
                           f"{name} {other['manager_cpu_s']} s (the agents' CPU inside the JVMs is not counted).")
    return out


def acceptance(runs: list[dict]) -> str:
    """Whether heapballoon at 50 % keeps >= 90 % of unconstrained throughput (median over the
    rounds) with 0 OOM events and 0 data errors (in every round: the worst round counts)."""
    hb = next((r for r in runs if r["manager"] == "heapballoon" and r["overcommit"] == 50), None)
    if hb is None:
        return "Not measured: this run has no heapballoon cell at 50 % overcommit."
    oom, errors = worst(hb, "oom_events"), worst(hb, "data_errors")
    ok = (hb["throughput_ratio"] or 0) >= 0.9 and oom == 0 and errors == 0
    n = hb.get("rounds_measured", 1)
    of = f" (median of {n} rounds)" if n > 1 else ""
    worst_of = " in the worst round" if n > 1 else ""
    return ("The issue's bar — heapballoon at 50 % overcommit keeps >= 0.9 of unconstrained throughput with 0 OOM "
            "events and 0 data errors — is " + ("**met**" if ok else "**not met**") +
            f": throughput ratio {hb['throughput_ratio']}{of}, {oom} OOM events and {errors} data errors{worst_of}.")


def table(runs: list[dict], level: int) -> list[str]:
    rows = [r for r in runs if r["overcommit"] == level]
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in sorted(rows, key=lambda r: r["manager"]):
        lines.append("| " + " | ".join(_cell(k, r.get(k), (r.get("range") or {}).get(k)) for k, _ in COLUMNS) + " |")
    return lines


def write(cfg: Config, doc: dict, figures: list[str]) -> str:
    runs = doc["runs"]
    base = doc["baseline"]
    n = doc.get("rounds_run", 1)
    lines = [f"# Overcommit experiment ({cfg.mode} mode{', quick' if cfg.quick else ''})", "",
             f"- command: `{doc['command']}`", f"- seed: {doc['seed']}", f"- machine: {doc['machine']}",
             f"- started {doc['started']}, took {doc['duration_s']} s; each cell {cfg.cell_s:.0f} s of load; "
             f"{n} round{'s' if n > 1 else ''} of the interleaved plan, each with its own unconstrained baseline",
             f"- workload: {cfg.services} CacheService JVMs (default collector), heap {cfg.heap_bytes >> 20} MiB each "
             f"(-Xms = -Xmx except under self-sizing, AlwaysPreTouch, {cfg.warmup_bytes >> 20} MiB of non-zero garbage at start), data set {cfg.data_bytes >> 20} MiB, cache values "
             f"{cfg.value_bytes >> 10} KiB, up to {cfg.max_keys} keys, TTL {cfg.ttl_s:.0f} s; "
             f"{cfg.busy_rate_per_s:.0f} req/s busy, {cfg.idle_rate_per_s:.0f} req/s idle, one service busy at a time",
             f"- memory given at X% = heaps / (1 + X/100) + {cfg.nonheap_allowance_bytes >> 20} MiB non-heap per JVM; "
             f"swap file {cfg.swap_bytes >> 30} GiB",
             f"- baseline (unconstrained, same run{', median of the rounds' if n > 1 else ''}): "
             f"{base['throughput_rps']} req/s, p99 {base['latency_p99_ms']} ms", "",
             ("Every figure in the tables is the median over the rounds, with the rounds' min–max in brackets "
              "when they differ; a cell's throughput ratio is against its own round's baseline. " if n > 1 else "") +
             "Throughput ratio = requests served / requests the unconstrained run served. OOM events = JVM "
             "OutOfMemoryErrors + cgroup OOM kills + services that died. Swap and major faults are host-wide "
             "counters over the cell (from before the JVMs start); \"of which zero\": zero-filled pages the kernel "
             "swapped out without writing (swpout_zero). Reaction = time from the cgroup's usage at 95 % of its limit to the manager's "
             "first 32 MiB freed (— : no pressure, or the manager freed nothing; none never frees). Manager CPU = the daemon's (heapballoon) or the stepping thread's CPU; self-sizing's work is GC inside the JVMs, not separated out (0), and it reports no freed pages (reaction —).", ""]
    lines += ["## Managers", ""] + [f"- **{r['manager']}**: {r['manager_settings']}"
                                    for r in {r["manager"]: r for r in runs}.values()] + [""]
    for level in sorted({r["overcommit"] for r in runs}):
        given = next(r["memory_given_bytes"] for r in runs if r["overcommit"] == level)
        lines += [f"## {level}% overcommit (memory given: {given >> 20} MiB for "
                  f"{base['committed_heap_bytes'] >> 20} MiB of committed heap)", ""] + table(runs, level) + [""]
    lost = losses(runs)
    lines += ["## The issue's bar", "", acceptance(runs), ""]
    lines += ["## Where heapballoon loses", "", "Computed from the medians" + (f" of {n} rounds" if n > 1 else "") +
              " (throughput more than 0.02 below, p99 more than 10 % above, more OOM events or data errors, "
              "over 0.5 s more manager CPU):", ""]
    if not any(r["manager"] == "heapballoon" for r in runs):
        lines += ["- Not measured: this run has no heapballoon cells."]
    else:
        lines += [f"- {s}" for s in lost] or ["- heapballoon lost to no baseline."]
    lines += [""]
    lines += ["## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures] + [""]
    text = "\n".join(lines)
    path = os.path.join(cfg.out_dir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    return text
