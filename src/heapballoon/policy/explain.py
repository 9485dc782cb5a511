"""Decisions as text: the one-line tick summary (the daemons' log) and the full reasoning
(``heapballoon policy explain``). Pure formatting; no I/O."""

from __future__ import annotations

from heapballoon.policy.model import Decisions, WorkloadDecision
from heapballoon.units import format_size

MAX_CHANGES_IN_LINE = 4


def state_text(d: Decisions) -> str:
    """``"soft: 312.0 MiB to find"``, ``"clear"``, ``"soft: unmet by 80.0 MiB"`` — for status."""
    if d.unmet_bytes > 0:
        return f"{d.state}: {format_size(d.find_bytes)} to find, {format_size(d.unmet_bytes)} unmet"
    if d.find_bytes > 0 and d.state in ("soft", "hard", "low"):
        return f"{d.state}: {format_size(d.find_bytes)} to find"
    return d.state


def budget_text(d: Decisions) -> str:
    return format_size(d.budget_bytes) if d.budget_bytes is not None else "none (host decides)"


def summary_line(d: Decisions) -> str:
    """One short line per tick: state, budget, totals, what changed (at most a few names)."""
    changed = [w for w in d.workloads if w.changed]
    names = ", ".join(f"{w.name}→{format_size(w.target_bytes)}" for w in changed[:MAX_CHANGES_IN_LINE])
    if len(changed) > MAX_CHANGES_IN_LINE:
        names += f", +{len(changed) - MAX_CHANGES_IN_LINE} more"
    line = (f"policy {state_text(d)} [{d.constraint}] budget={budget_text(d)} "
            f"resident={format_size(d.resident_bytes)} held={format_size(d.held_bytes)} "
            f"target={format_size(d.target_bytes)} psi={d.psi_some_pct:.1f}% n={len(d.workloads)}")
    if changed:
        line += f" changed: {names}"
    return line


def workload_line(w: WorkloadDecision) -> str:
    per = " ".join(f"{s.kind}={format_size(s.target_bytes)}" for s in w.sources)
    return f"{w.name} [{w.key}] target {format_size(w.target_bytes)} ({per}): {w.reason}"


def explain_text(d: Decisions, tick: int | None = None) -> str:
    """The last tick's reasoning, several lines."""
    head = f"tick {tick}: " if tick is not None else ""
    lines = [
        f"{head}state {state_text(d)} (set by {d.constraint})",
        f"budget {budget_text(d)}; managed resident {format_size(d.resident_bytes)}; "
        f"held out of residence {format_size(d.held_bytes)}",
        f"aim: sources hold {format_size(d.want_bytes)} in total; targets sum to {format_size(d.target_bytes)}",
    ]
    if d.unmet_reason:
        lines.append(f"unmet: {d.unmet_reason}")
    for g in d.groups:
        lines.append(f"cgroup {g.path}: {g.state}, usage {format_size(g.usage_bytes)} of limit "
                     f"{format_size(g.limit_bytes)}; its JVMs hold at least {format_size(g.want_bytes)}"
                     + (f", {format_size(g.unmet_bytes)} unmet" if g.unmet_bytes else "")
                     + (f" (growing: {format_size(g.growth_bytes)} taken ahead)" if g.growth_bytes else ""))
    lines.append("who gives (lowest shares per active byte first; idle bytes taxed; cheapest source first):")
    for w in sorted(d.workloads, key=lambda w: -w.target_bytes):
        lines.append("  " + workload_line(w))
    if not d.workloads:
        lines.append("  (no managed workloads)")
    return "\n".join(lines)
