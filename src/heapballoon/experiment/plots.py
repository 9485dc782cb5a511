"""The PNG figures (matplotlib, headless Agg): memory over time per manager stacked by workload
(the first round's cells), throughput against overcommit level with one line per manager (the
median over the rounds, error bars from the rounds' min to max), and the latency CDF at 50 % (or
the highest level run; every round's requests pooled). Every figure names the command, the seed
and the machine.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MIB = 1 << 20


def _footer(fig, cfg, doc) -> None:
    fig.text(0.01, 0.005, f"{doc['command']} · seed {doc['seed']} · {doc['machine']}", fontsize=7, color="0.3")


def memory_over_time(cfg, doc, service_rows, path) -> None:
    """One panel per cell: a row per overcommit level, a column per manager (in plan order)."""
    runs = doc["runs"]
    levels = sorted({r["overcommit"] for r in runs})
    managers = list(dict.fromkeys(r["manager"] for r in sorted(runs, key=lambda r: r["order"])))
    fig, axes = plt.subplots(len(levels), len(managers), figsize=(4.6 * len(managers), 3.4 * len(levels)),
                             sharey=True, squeeze=False)
    for row, level in enumerate(levels):
        for col, manager in enumerate(managers):
            ax = axes[row][col]
            run = next((r for r in runs if r["overcommit"] == level and r["manager"] == manager), None)
            if run is None:
                ax.set_visible(False)
                continue
            rows = [r for r in service_rows if r["cell"] == run["order"]]
            names = sorted({r["service"] for r in rows})
            times = sorted({r["t_s"] for r in rows})
            by = {(r["service"], r["t_s"]): r["rss_bytes"] / MIB for r in rows}
            ax.stackplot(times, [[by.get((n, t), 0) for t in times] for n in names], labels=names, alpha=0.8)
            ax.axhline(run["memory_given_bytes"] / MIB, color="red", linestyle="--", label="memory given")
            ax.set_title(f"{manager} at {level}% overcommit", fontsize=10)
            ax.set_xlabel("time into cell (s)")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("resident memory (MiB)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    first = " (round 1)" if doc.get("rounds_run", 1) > 1 else ""
    what = "resident memory of each guest's QEMU process" if cfg.mode == "vm" else "RSS of each service JVM"
    fig.suptitle(f"Memory over time per manager, stacked by workload ({what}){first}")
    _footer(fig, cfg, doc)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def throughput_vs_level(cfg, doc, path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    managers = sorted({r["manager"] for r in doc["runs"]})
    levels = sorted({r["overcommit"] for r in doc["runs"]})
    dodge = max(1.0, (levels[-1] - levels[0]) / 100)  # side by side, so error bars do not hide each other
    for j, manager in enumerate(managers):
        pts = sorted((r["overcommit"], r["throughput_ratio"] or 0, (r.get("range") or {}).get("throughput_ratio"))
                     for r in doc["runs"] if r["manager"] == manager)
        ys = [p[1] for p in pts]
        lo = [max(0.0, y - (p[2][0] if p[2] else y)) for y, p in zip(ys, pts)]
        hi = [max(0.0, (p[2][1] if p[2] else y) - y) for y, p in zip(ys, pts)]
        xs = [p[0] + (j - (len(managers) - 1) / 2) * dodge for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=manager)
    ax.set_xticks(levels)
    ax.axhline(0.9, color="0.5", linestyle=":", label="90 % of unconstrained")
    ax.set_xlabel("overcommit level (%)")
    ax.set_ylabel("throughput / unconstrained (ratio)")
    n = doc.get("rounds_run", 1)
    ax.set_title("Throughput against overcommit level" +
                 (f" (median of {n} rounds, bars: min–max)" if n > 1 else ""))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _footer(fig, cfg, doc)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency_cdf(cfg, doc, loads, path) -> None:
    levels = sorted({r["overcommit"] for r in doc["runs"]})
    level = 50 if 50 in levels else levels[-1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = [("unconstrained", "unconstrained@0")] + [(r["manager"], f"{r['manager']}@{level}")
                                                      for r in doc["runs"] if r["overcommit"] == level]
    for label, key in keys:
        lat = sorted(r.latency_ms for k, load in loads.items() if k.split("#")[0] == key
                     for r in load.records if r.ok)
        if lat:
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("request latency (ms, log scale)")
    ax.set_ylabel("fraction of requests (CDF)")
    ax.set_title(f"Latency CDF at {level}% overcommit")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _footer(fig, cfg, doc)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def consolidation(cfg, doc, path) -> None:
    """Services each manager holds at the SLO in the fixed memory (median, bars: the rounds' min–max),
    beside the p99 of every consolidation cell against the number of services."""
    cons = doc["consolidation"]
    names = sorted(cons["managers"], key=lambda m: -(cons["managers"][m]["held_services"] or 0))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    held = [cons["managers"][m]["held_services"] or 0 for m in names]
    rng = [cons["managers"][m]["range"] or [h, h] for m, h in zip(names, held)]
    ax.bar(names, held, yerr=[[max(0, h - r[0]) for h, r in zip(held, rng)], [max(0, r[1] - h) for h, r in zip(held, rng)]],
           capsize=4, color="tab:blue", alpha=0.8)
    ax.axhline(cons["base_services"], color="0.5", linestyle=":", label=f"{cons['base_services']}: fit unconstrained")
    ax.set_ylabel("services held at the SLO")
    ax.set_title(f"Services held in {cons['memory_bytes'] >> 20} MiB ({'swap on' if cons['swap'] else 'swap off'})")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=8)
    for m in ["unconstrained"] + names:
        pts = sorted((c["services"], c["latency_p99_ms"]) for c in cons["cells"]
                     if c["manager"] == m and c.get("latency_p99_ms") is not None and c.get("round", 0) == 0)
        if pts:
            style = "k--" if m == "unconstrained" else "-o"
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, label=m)
    ax2.set_xticks(range(cons["base_services"], cons["max_services"] + 1))
    ax2.set_xlabel("services in the fixed memory")
    ax2.set_ylabel("p99 latency (ms, round 1)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    _footer(fig, cfg, doc)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(cfg, doc, service_rows, loads) -> list[str]:
    paths = [os.path.join(cfg.out_dir, n) for n in ("memory_over_time.png", "throughput_vs_overcommit.png",
                                                     "latency_cdf.png")]
    memory_over_time(cfg, doc, service_rows, paths[0])
    throughput_vs_level(cfg, doc, paths[1])
    latency_cdf(cfg, doc, loads, paths[2])
    if doc.get("consolidation"):
        paths.insert(0, os.path.join(cfg.out_dir, "consolidation.png"))
        consolidation(cfg, doc, paths[0])
    return paths
