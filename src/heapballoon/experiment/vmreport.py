"""VM mode's report.md: what was run (guests, sizes, what overcommit means here), the managers'
settings, one table per level (process mode's columns plus the guests' boot-to-service time and
QEMU's peak resident memory), and plain sentences naming where each heapballoon manager loses
to a baseline (process mode's rule, applied to ``heapballoon`` and to ``heapballoon+virtio``).
"""

from __future__ import annotations

import os

from heapballoon.experiment import report

BASELINES = ("none", "virtio-balloon")


def _losses(runs: list[dict]) -> list[str]:
    out = []
    for ours in ("heapballoon", "heapballoon+virtio"):
        sub = [r for r in runs if r["manager"] in (ours, *BASELINES)]
        renamed = [dict(r, manager="heapballoon") if r["manager"] == ours else r for r in sub]
        if any(r["manager"] == "heapballoon" for r in renamed):
            # the baselines' names do not contain "heapballoon": every mention is ours
            out += [line.replace("heapballoon", ours) for line in report.losses(renamed)]
    return out


def _table(runs: list[dict], level: int) -> list[str]:
    lines = report.table(runs, level)
    lines[0] += " cgroup major faults | guests ready s | QEMU peak MiB |"
    lines[1] += "---|---|---|"
    rows = sorted((r for r in runs if r["overcommit"] == level), key=lambda r: r["manager"])
    for i, r in enumerate(rows):
        lines[2 + i] += (f" {r['cgroup_major_faults']} | {r['guests_ready_s']} |"
                         f" {r['qemu_rss_peak_bytes'] >> 20} |")
    return lines


def write(cfg, doc: dict, figures: list[str]) -> str:
    runs = doc["runs"]
    base = doc["baseline"]
    lines = [f"# Overcommit experiment (VM mode{', quick' if cfg.quick else ''})", "",
             f"- command: `{doc['command']}`", f"- seed: {doc['seed']}", f"- machine: {doc['machine']}",
             f"- started {doc['started']}, took {doc['duration_s']} s; each cell {cfg.cell_s:.0f} s of load, "
             f"guests booted afresh per cell; {doc.get('rounds_run', 1)} round(s) of the interleaved plan, each with "
             f"its own unconstrained baseline" + ("; every figure is the median over the rounds, the rounds' "
                                                  "min–max in brackets" if doc.get("rounds_run", 1) > 1 else ""),
             f"- swap: {'a swap file' if cfg.swap else 'off (no swap file, swappiness 0: overcommit ends in OOM kills)'}",
             f"- guests: {cfg.services} QEMU guests (TCG, {cfg.guest_cpus} vCPU, {cfg.guest_memory_bytes >> 20} MiB RAM "
             f"as a shared memfd), each running one CacheService JVM (the guest JVM's default collector), heap "
             f"{cfg.heap_bytes >> 20} MiB (-Xms = -Xmx, AlwaysPreTouch, {cfg.warmup_bytes >> 20} MiB of non-zero "
             f"garbage at start), data set {cfg.data_bytes >> 20} MiB, values {cfg.value_bytes >> 10} KiB, up to "
             f"{cfg.max_keys} keys, TTL {cfg.ttl_s:.0f} s; load from the host through a user-mode network port forward: "
             f"{cfg.busy_rate_per_s:.0f} req/s busy, {cfg.idle_rate_per_s:.0f} req/s idle, one guest busy at a time",
             f"- memory given at X% (the QEMU processes' v1 memory cgroup) = guests × (guest RAM / (1 + X/100) + "
             f"{cfg.qemu_allowance_bytes >> 20} MiB for QEMU itself); swap file {cfg.swap_bytes >> 30} GiB",
             f"- baseline (unconstrained, same run): {base['throughput_rps']} req/s, p99 {base['latency_p99_ms']} ms, "
             f"QEMU peak resident {base['qemu_rss_peak_bytes'] >> 20} MiB per guest", "",
             "Throughput ratio = requests served / requests the unconstrained cell served. OOM events = guest JVM "
             "OutOfMemoryErrors + OOM kills (the host cgroup's and the guest kernels') + services that died. Swap and "
             "major faults are host-wide counters over the cell (from before the guests boot; they include other jobs' "
             "paging on a shared machine); the cgroup's swap peak and major faults are the guests' own. Peak MiB = the QEMU "
             "cgroup's peak usage. Reaction = time from the cgroup's usage at 95 % of its limit to the manager's "
             "first 32 MiB freed (heap balloon pages punched plus virtio balloon held). Manager CPU = hostd's, or "
             "the MoM thread's (the guest driver's and agents' CPU inside the guests is not counted).", ""]
    lines += ["## Managers", ""] + [f"- **{r['manager']}**: {r['manager_settings']}"
                                    for r in {r["manager"]: r for r in runs}.values()] + [""]
    for level in sorted({r["overcommit"] for r in runs}):
        given = next(r["memory_given_bytes"] for r in runs if r["overcommit"] == level)
        lines += [f"## {level}% overcommit (memory given: {given >> 20} MiB for {cfg.services} guests of "
                  f"{cfg.guest_memory_bytes >> 20} MiB RAM)", ""] + _table(runs, level) + [""]
    lost = _losses(runs)
    lines += ["## Where heapballoon loses", ""] + ([f"- {s}" for s in lost] or
                                                  ["- Nowhere in this run, on the metrics above."]) + [""]
    lines += ["## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures] + [""]
    text = "\n".join(lines)
    with open(os.path.join(cfg.out_dir, "report.md"), "w") as f:
        f.write(text)
    return text
