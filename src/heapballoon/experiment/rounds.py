"""Rounds: the whole interleaved plan runs ``--rounds`` times, and results.json holds, per manager
and level, the MEDIAN over the rounds (one entry each, the schema the issue asks for), each with
its per-round values and their min and max, plus the list of every round's own entries.

Each round's cells are measured against that round's own unconstrained baseline (the runner
computes ``throughput_ratio`` so), so slow and quiet stretches of a shared machine cancel out
within a round. Medians: ``statistics.median`` of the values measured (None left out); a count
(OOM events, data errors, pages) with an even number of rounds takes the higher middle value, so
it stays a whole number and errs on the side of the worse.
"""

from __future__ import annotations

import statistics

# Fields reported with their per-round values and range (the tables show median (min–max)).
RANGE_FIELDS = ("throughput_ratio", "latency_p50_ms", "latency_p99_ms", "oom_events", "swap_out_pages",
                "swap_in_pages", "major_faults", "peak_cgroup_bytes", "reaction_s", "manager_cpu_s", "data_errors",
                "throughput_rps")
# Numbers that describe the cell rather than measure it: taken from the first round as they are.
FIXED_FIELDS = {"overcommit", "order", "round", "duration_s", "memory_given_bytes", "committed_heap_bytes"}


def median(values: list) -> float | int | None:
    """The median of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return statistics.median_high(vals)
    return round(statistics.median(vals), 3)


def aggregate(entries: list[dict]) -> list[dict]:
    """One entry per (manager, overcommit) in first-seen order: medians of the numeric fields over
    the rounds, ``rounds_measured``, ``per_round`` (field -> values in round order) and ``range``
    (field -> [min, max]) for :data:`RANGE_FIELDS`."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for e in entries:
        groups.setdefault((e["manager"], e["overcommit"]), []).append(e)
    out = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: r.get("round", 0))
        agg = dict(rows[0])
        for key, value in rows[0].items():
            if key in FIXED_FIELDS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) or value is None:
                values = [r.get(key) for r in rows]
                if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
                    agg[key] = median(values)
        agg.pop("round", None)
        agg["rounds_measured"] = len(rows)
        agg["per_round"] = {f: [r.get(f) for r in rows] for f in RANGE_FIELDS if f in rows[0]}
        agg["range"] = {f: _min_max(v) for f, v in agg["per_round"].items()}
        out.append(agg)
    return out


def _min_max(values: list) -> list | None:
    vals = [v for v in values if v is not None]
    return [min(vals), max(vals)] if vals else None


def worst(run: dict, field: str):
    """The highest value of ``field`` over the rounds (the value itself without per-round data)."""
    rng = (run.get("range") or {}).get(field)
    return rng[1] if rng else run.get(field)
