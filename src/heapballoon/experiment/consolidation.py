"""Consolidation, the experiment's headline number: for a fixed amount of memory, the most
services each manager holds at the SLO.

The memory is what ``CONSOLIDATION_BASE`` (2) services use unconstrained (heap plus the non-heap
allowance each). In each round, N = 2, 3, ... services run in it; at each N the unconstrained
baseline (N services, no limit, no manager) runs first, then every manager still in the sweep.
A manager *holds* N services when its cell meets the SLO:

* p99 latency ≤ ``SLO_P99_FACTOR`` (2) × the baseline's p99 at the same N in the same round,
* 0 OOM events (JVM OutOfMemoryErrors, cgroup OOM kills, services that died),
* 0 data errors.

A manager leaves the sweep at the first N it fails; what it held is the N before (1 if it fails
at 2: one service always fits). The reported figure is the median over the rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from heapballoon.experiment.config import (CONSOLIDATION_BASE, SLO_P99_FACTOR, Cell, Config,
                                           consolidation_counts, consolidation_level_pct)
from heapballoon.experiment.rounds import median


@dataclass(frozen=True)
class Verdict:
    held: bool
    reason: str  # "" when held, else what failed, e.g. "2 OOM events"


def judge(entry: dict, baseline_p99_ms: float | None) -> Verdict:
    """Whether a consolidation cell meets the SLO against its baseline's p99."""
    reasons = []
    if entry.get("oom_events"):
        reasons.append(f"{entry['oom_events']} OOM event{'s' if entry['oom_events'] != 1 else ''}")
    if entry.get("data_errors"):
        reasons.append(f"{entry['data_errors']} data errors")
    p99 = entry.get("latency_p99_ms")
    if p99 is None:
        reasons.append("no request served")
    elif baseline_p99_ms and p99 > SLO_P99_FACTOR * baseline_p99_ms:
        reasons.append(f"p99 {p99:g} ms > {SLO_P99_FACTOR:g} × {baseline_p99_ms:g} ms")
    return Verdict(not reasons, ", ".join(reasons))


def sweep(cfg: Config, round_: int, first_index: int, measure: Callable[[Cell], dict]) -> tuple[list[dict], dict[str, int]]:
    """One round of the sweep: ``measure(cell)`` runs a cell and returns its entry. Returns the
    cells' entries (each with ``slo_met``, ``slo_reason`` and ``baseline_p99_ms``) and how many
    services each manager held."""
    n_managers = len(cfg.managers)
    shift = round_ % n_managers
    in_sweep = list(cfg.managers[shift:] + cfg.managers[:shift])
    held = {m: CONSOLIDATION_BASE - 1 for m in cfg.managers}
    entries: list[dict] = []
    index = first_index
    for n in consolidation_counts(cfg):
        if not in_sweep:
            break
        level = consolidation_level_pct(cfg, n)
        base = measure(Cell("unconstrained", level, index, round_, services=n))
        index += 1
        base.update({"slo_met": None, "slo_reason": "", "baseline_p99_ms": None})
        entries.append(base)
        for manager in list(in_sweep):
            entry = measure(Cell(manager, level, index, round_, services=n))
            index += 1
            verdict = judge(entry, base.get("latency_p99_ms"))
            entry.update({"slo_met": verdict.held, "slo_reason": verdict.reason,
                          "baseline_p99_ms": base.get("latency_p99_ms")})
            entries.append(entry)
            if verdict.held:
                held[manager] = n
            else:
                in_sweep.remove(manager)
    return entries, held


def summarize(cfg: Config, per_round: list[dict[str, int]], cells: list[dict]) -> dict:
    """results.json's ``consolidation``: per manager the median services held over the rounds,
    the per-round values, and the ratio to none's; plus every cell."""
    managers = {}
    for m in cfg.managers:
        values = [r[m] for r in per_round if m in r]
        managers[m] = {"held_services": median(values), "per_round": values,
                       "range": [min(values), max(values)] if values else None,
                       "failed_at": _first_failure(cells, m)}
    none = (managers.get("none") or {}).get("held_services")
    for m, v in managers.items():
        v["vs_none"] = round(v["held_services"] / none, 2) if none and v["held_services"] is not None else None
    return {"memory_bytes": cfg.fixed_memory_bytes(), "base_services": CONSOLIDATION_BASE,
            "max_services": cfg.consolidation_max, "swap": cfg.swap, "rounds": len(per_round),
            "slo": (f"p99 <= {SLO_P99_FACTOR:g} x the unconstrained p99 with the same services in the same round, "
                    "0 OOM events, 0 data errors"),
            "managers": managers, "cells": cells}


def _first_failure(cells: list[dict], manager: str) -> list[str]:
    """Per round, why the manager left the sweep ("" if it held every N tried)."""
    out = []
    for r in sorted({c.get("round", 0) for c in cells}):
        failed = [c for c in cells if c["manager"] == manager and c.get("round", 0) == r and c.get("slo_met") is False]
        out.append(f"{failed[0]['services']} services: {failed[0]['slo_reason']}" if failed else "")
    return out


def table(cons: dict) -> list[str]:
    """The report's lead table: services held per manager in the fixed memory."""
    lines = ["| manager | services held (median) | per round | vs none | left the sweep at |", "|---|---|---|---|---|"]
    rows = sorted(cons["managers"].items(), key=lambda kv: -(kv[1]["held_services"] or 0))
    for m, v in rows:
        held = v["held_services"]
        text = "—" if held is None else (f"< {CONSOLIDATION_BASE}" if held < CONSOLIDATION_BASE else f"{held:g}")
        why = "; ".join(f"r{i + 1}: {w}" for i, w in enumerate(v["failed_at"]) if w) or "held every N tried"
        ratio = "—" if v["vs_none"] is None else f"{v['vs_none']:g}×"
        per_round = ", ".join(str(x) for x in v["per_round"])
        lines.append(f"| {m} | {text} | {per_round} | {ratio} | {why} |")
    return lines
