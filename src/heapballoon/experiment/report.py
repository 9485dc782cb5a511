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
           ("latency_p99_ms", "p99 ms"), ("oom_events", "OOM events"), ("cgroup_oom_kills", "of which OOM kills"), ("swap_out_pages", "swap-out pages"),
           ("swap_out_zero_pages", "of which zero"), ("swap_in_pages", "swap-in pages"), ("major_faults", "major faults"),
           ("peak_cgroup_bytes", "peak MiB"), ("cgroup_swap_peak_bytes", "cgroup swap peak MiB"),
           ("reaction_s", "reaction s"), ("manager_cpu_s", "manager CPU s"),
           ("data_errors", "data errors")]


def machine_line() -> str:
    return machine()


def config_dict(cfg: Config) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out_dir"}


def _fmt(key: str, value) -> str:
    if value is None:
        return "—"
    if key in ("peak_cgroup_bytes", "cgroup_swap_peak_bytes"):
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


def wins_and_losses(runs: list[dict]) -> list[str]:
    """Per level with pressure, plainly: which manager had the best p99, the least swap-out, and
    which had OOM events or data errors (from the medians)."""
    out = []
    for level in sorted({r["overcommit"] for r in runs}):
        at = [r for r in runs if r["overcommit"] == level]
        if len(at) < 2:
            continue
        # p99 only among managers that kept every service (a killed service's load is not timed)
        timed = [r for r in at if r.get("latency_p99_ms") is not None and not r.get("oom_events")]
        if timed:
            best = min(timed, key=lambda r: r["latency_p99_ms"])
            worst_ = max(timed, key=lambda r: r["latency_p99_ms"])
            out.append(f"At {level}%: best p99 **{best['manager']}** ({best['latency_p99_ms']} ms), worst "
                       f"{worst_['manager']} ({worst_['latency_p99_ms']} ms), of those with 0 OOM events.")
        else:
            out.append(f"At {level}%: every manager had OOM events; p99 ranks none of them.")
        # swap only where the services' cgroup swapped (host-wide counters include other jobs')
        swapped = [r for r in at if r.get("swap_out_pages") is not None]
        if swapped and any(r.get("cgroup_swap_peak_bytes", 1) for r in swapped):
            least = min(swapped, key=lambda r: r["swap_out_pages"])
            out.append(f"At {level}%: least swap-out **{least['manager']}** ({least['swap_out_pages']} pages).")
        failing = [f"{r['manager']} ({r['oom_events']} OOM events, {r.get('data_errors', 0)} data errors)"
                   for r in at if r.get("oom_events") or r.get("data_errors")]
        if failing:
            out.append(f"At {level}%: OOM events or data errors under " + ", ".join(failing) + ".")
    return out


def consolidation_lines(doc: dict) -> list[str]:
    """The report's lead: the consolidation table and who holds more than whom, or why it is absent."""
    from heapballoon.experiment import consolidation

    cons = doc.get("consolidation")
    lines = ["## Consolidation: the most services each manager holds at the SLO", ""]
    if not cons:
        return lines + ["Not measured in this run (`--consolidation off`; on by default in the full run).", ""]
    lines += [f"Memory fixed at {cons['memory_bytes'] >> 20} MiB (what {cons['base_services']} services use "
              f"unconstrained); N = {cons['base_services']}..{cons['max_services']} services in it, "
              f"{'with swap' if cons['swap'] else 'swap off'}; SLO: {cons['slo']}. A manager leaves the sweep at "
              f"the first N it fails; median of {cons['rounds']} round(s).", ""]
    lines += consolidation.table(cons) + [""]
    held = {m: v["held_services"] for m, v in cons["managers"].items() if v["held_services"] is not None}
    if held:
        top = max(held.values())
        best = sorted(m for m, n in held.items() if n == top)
        if len(best) == len(held) > 1:
            lines.append(f"- Every manager held {top:g}: consolidation separates none of them in this run.")
        else:
            lines.append(f"- Most services held: **{', '.join(best)}** ({top:g}).")
        for m, n in sorted(held.items()):
            if m not in best:
                lines.append(f"- {m} holds {n:g}: fewer than {', '.join(best)}.")
    lines.append("")
    return lines


def acceptance(runs: list[dict], swap: bool = True) -> str:
    """Issue 16's bar for heapballoon at 50 %. With swap: p99 <= 1.1 x none's, swap-out <= half of
    none's, throughput >= 0.95, 0 OOM events, 0 data errors. Without swap: 0 OOM events (and none's
    shown). Medians, but OOM events and data errors in the worst round."""
    at = {r["manager"]: r for r in runs if r["overcommit"] == 50}
    hb, none = at.get("heapballoon"), at.get("none")
    if hb is None:
        return "Not measured: this run has no heapballoon cell at 50 % overcommit."
    oom, errors = worst(hb, "oom_events"), worst(hb, "data_errors")
    n = hb.get("rounds_measured", 1)
    of = f" (medians of {n} rounds; OOM events and data errors in the worst round)" if n > 1 else ""
    if not swap:
        ok = oom == 0 and errors == 0
        theirs = f"; none has {worst(none, 'oom_events')} OOM events there" if none else ""
        return (f"The issue's bar without swap — heapballoon at 50 % overcommit has 0 OOM events and 0 data errors — "
                f"is {'**met**' if ok else '**not met**'}: {oom} OOM events, {errors} data errors{theirs}{of}.")
    if none is None:
        return "Not measured: this run has no none cell at 50 % overcommit (the bar compares with it)."
    p99_ok = (hb["latency_p99_ms"] is not None and none["latency_p99_ms"] is not None and
              hb["latency_p99_ms"] <= 1.1 * none["latency_p99_ms"])
    swap_ok = hb["swap_out_pages"] <= none["swap_out_pages"] / 2
    ok = p99_ok and swap_ok and (hb["throughput_ratio"] or 0) >= 0.95 and oom == 0 and errors == 0
    return ("The issue's bar — heapballoon at 50 % overcommit: p99 <= 1.1 x none's, swap-out <= half of none's, "
            "throughput >= 0.95, 0 OOM events, 0 data errors — is " + ("**met**" if ok else "**not met**") +
            f": p99 {hb['latency_p99_ms']} ms against none's {none['latency_p99_ms']} ms, swap-out "
            f"{hb['swap_out_pages']} pages against none's {none['swap_out_pages']}, throughput ratio "
            f"{hb['throughput_ratio']}, {oom} OOM events, {errors} data errors{of}.")


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
             f"({cfg.warmup_bytes >> 20} MiB of non-zero garbage at start), data set {cfg.data_bytes >> 20} MiB, cache values "
             f"{cfg.value_bytes >> 10} KiB, up to {cfg.max_keys} keys, TTL {cfg.ttl_s:.0f} s; "
             f"{cfg.busy_rate_per_s:.0f} req/s busy, {cfg.idle_rate_per_s:.0f} req/s idle, one service busy at a time",
             f"- memory given at X% = heaps / (1 + X/100) + {cfg.nonheap_allowance_bytes >> 20} MiB non-heap per JVM",
             f"- swap: " + (f"a {cfg.swap_bytes >> 30} GiB swap file" if cfg.swap else
                             "**off** (no swap file, swappiness 0 in the cgroups): overcommit ends in cgroup OOM kills"),
             f"- heaps: every manager's JVMs run -Xms = -Xmx, " +
             ("pre-touched (AlwaysPreTouch)" if cfg.heaps == "pretouch" else
              f"grown by a {cfg.burst_s:g} s start-up burst (no pre-touch)") +
             ", except under self-sizing and heapballoon+self-sizing: the small -Xms variant (-Xms64m, started at "
             f"-Xmx); services start one at a time, {cfg.settle_s:g} s apart; every request also reads "
             f"{cfg.touch_bytes >> 10} KiB of its service's data set",
             f"- baseline (unconstrained, same run{', median of the rounds' if n > 1 else ''}): "
             f"{base['throughput_rps']} req/s, p99 {base['latency_p99_ms']} ms", "",
             ("Every figure in the tables is the median over the rounds, with the rounds' min–max in brackets "
              "when they differ; a cell's throughput ratio is against its own round's baseline. " if n > 1 else "") +
             "Throughput ratio = requests served / requests the unconstrained run served. OOM events = JVM "
             "OutOfMemoryErrors + cgroup OOM kills + services that died. Swap and major faults are host-wide "
             "counters over the cell (from before the JVMs start; they include other jobs' paging: the cgroup swap "
             "peak is the services' own); \"of which zero\": zero-filled pages the kernel "
             "swapped out without writing (swpout_zero). Reaction = time from the cgroup's usage at 95 % of its limit to the manager's "
             "first 32 MiB freed (— : no pressure, or the manager freed nothing; none never frees). Manager CPU = the daemon's (heapballoon) or the stepping thread's CPU; self-sizing's work is GC inside the JVMs, not separated out (0), and it reports no freed pages (reaction —).", ""]
    lines += consolidation_lines(doc)
    lines += ["## Where each manager wins and loses", "", "From the medians of the overcommit levels below" +
              (" and the consolidation sweep above" if doc.get("consolidation") else "") + ":", ""]
    lines += [f"- {s}" for s in wins_and_losses(runs)] or ["- (no level with two managers)"]
    lines += [""]
    lines += ["## Managers", ""] + [f"- **{r['manager']}** (heaps: {r.get('heap_config', '-Xms = -Xmx')}): "
                                    f"{r['manager_settings']}" for r in {r["manager"]: r for r in runs}.values()] + [""]
    for level in sorted({r["overcommit"] for r in runs}):
        given = next(r["memory_given_bytes"] for r in runs if r["overcommit"] == level)
        lines += [f"## {level}% overcommit (memory given: {given >> 20} MiB for "
                  f"{base['committed_heap_bytes'] >> 20} MiB of committed heap)", ""] + table(runs, level) + [""]
    lost = losses(runs)
    lines += ["## The issue's bar", "", acceptance(runs, cfg.swap), ""]
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
