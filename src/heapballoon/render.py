"""Human-readable status: tables that fit the terminal, never cut to an ellipsis.

Owns how a ``status`` body (the typed payloads of :mod:`heapballoon.status`, as dicts) looks
to a person. Rules:

* Short headers and compact binary sizes (``512M``, ``1.5G``; the legend says they are binary).
* Columns have priorities: when the terminal is too narrow for all of them, the least useful
  ones are dropped (and the legend says which), never truncated. Names and reasons fold onto
  a second line instead of ending in ``…``.
* Fields a newer daemon adds are shown when present and skipped when absent: the automatic
  policy's line (``policy auto: soft: 312 MiB to find, budget 1.8 GiB``; hostd's ``vm_policy``
  with a line per VM and its ``policy_reason``), each JVM's ``target_reason`` and an unmet node target's
  ``unmet_bytes``/``unmet_reason``.

:func:`status_renderable` builds the picture for a width (``status --watch`` redraws it);
:func:`render_status` prints it. ``rich`` is a host-side extra (``heapballoon[host]``): a guest
installs none, and then :func:`render_plain` prints the same columns as aligned text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

try:
    from rich import box
    from rich.console import Console, Group, RenderableType
    from rich.table import Table
    from rich.text import Text
except ImportError:  # a guest without the host extras: plain text (see render_plain)
    Console = None  # type: ignore[assignment,misc]
    RenderableType = Any  # type: ignore[misc]

from heapballoon.textsafe import CONTROL_CHARS, display_text
from heapballoon.units import format_size


def _clean(value: Any) -> str:
    """Peer text for plain output and rich ``Text`` (not markup): control characters (terminal
    escapes, newlines) replaced by ``?``. Markup contexts (cells, titles) use display_text."""
    return CONTROL_CHARS.sub("?", str(value))


def short_size(size_bytes: int | float) -> str:
    """Bytes in at most five characters, binary units: ``0``, ``512K``, ``48M``, ``1.5G``."""
    value = float(size_bytes)
    if value == 0:
        return "0"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            if unit == "B":
                return f"{value:.0f}B"
            return f"{value:.1f}{unit}" if abs(value) < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    fmt: Callable[[Any], str]
    priority: int  # lower is kept longer; 0 is never dropped
    text: bool = False  # free text: left-aligned, may fold onto a second line
    min_width: int = 0  # the narrowest a folding column is squeezed to


def _ms(v: float) -> str:
    return f"{v:.1f}ms"


def _pid_fmt(v: Any) -> str:
    return str(v)


JVM_COLUMNS = (
    Column("PID", "pid", _pid_fmt, 0),
    Column("NAME", "name", str, 0, text=True, min_width=8),
    Column("GC", "gc", str, 4, text=True),
    Column("MAX", "heap_max_bytes", short_size, 5),
    Column("COMMIT", "heap_committed_bytes", short_size, 3),
    Column("LIVE", "live_bytes", short_size, 1),
    Column("TARGET", "target_bytes", short_size, 0),
    Column("BALLOON", "balloon_bytes", short_size, 0),
    Column("FREED", "reclaimed_bytes", short_size, 0),
    Column("MODE", "reclaim", str, 6, text=True),
    Column("REASON", "target_reason", str, 2, text=True, min_width=12),
    Column("CONTAINER", "container_id", lambda v: v[:12], 7, text=True),
    Column("POD", "pod_uid", lambda v: v[:8], 7, text=True),
)
OPTIONAL = ("REASON", "CONTAINER", "POD")  # shown only when some row has one
VM_COLUMNS = (
    Column("VM", "name", str, 0, text=True, min_width=8),
    Column("MEM", "memory_bytes", short_size, 1),
    Column("TARGET", "target_bytes", short_size, 0),
    Column("BALLOON", "balloon_bytes", short_size, 0),
    Column("FREED", "reclaimed_bytes", short_size, 0),
    Column("RESIDENT", "host_resident_bytes", short_size, 0),
    Column("P99", "pause_ms_p99", _ms, 4),
    Column("JVMS", "jvms", lambda v: str(len(v)), 5),
)
HEADER_NAMES = {"FREED": "FREED = reclaimed, verified", "MAX": "MAX = heap max", "COMMIT": "COMMIT = committed heap",
                "RESIDENT": "RESIDENT = host-resident guest RAM", "P99": "P99 = pause p99"}
GAP = 2  # columns are separated by two spaces
FOLD_BEFORE = 4  # columns of this priority and above are dropped before a name is folded


def _cell(row: dict, col: Column) -> str:
    value = row.get(col.key)
    return "-" if value is None else _clean(col.fmt(value))


def _choose(columns: tuple[Column, ...], rows: list[dict], width: int) -> tuple[list[Column], list[Column]]:
    """The columns that fit ``width`` (and those dropped). Optional columns no row has are
    skipped. Then low-value columns (priority ≥ ``FOLD_BEFORE``) go, lowest first, until every
    column fits at its natural width; if that is not enough, names and reasons may fold (at
    their minimum width) and more columns go, lowest priority first."""
    present = [c for c in columns if c.header not in OPTIONAL or any(r.get(c.key) for r in rows)]

    def need(cols: list[Column], fold: bool) -> int:
        total = 0
        for c in cols:
            natural = max([len(c.header)] + [len(_cell(r, c)) for r in rows])
            total += min(natural, max(c.min_width, len(c.header))) if fold and c.min_width else natural
        return total + GAP * (len(cols) - 1)

    kept = list(present)
    for fold, lowest in ((False, FOLD_BEFORE), (True, 1)):
        while need(kept, fold) > width:
            droppable = [c for c in kept if c.priority >= lowest]
            if not droppable:
                break
            kept.remove(max(droppable, key=lambda c: c.priority))
        if need(kept, fold) <= width:
            break
    return kept, [c for c in present if c not in kept]


def _table(title: str, columns: tuple[Column, ...], rows: list[dict], width: int) -> tuple[Table, list[Column]]:
    kept, dropped = _choose(columns, rows, width)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True, expand=False)
    for c in kept:
        if c.text:
            table.add_column(c.header, justify="left", overflow="fold", min_width=min(c.min_width or 1, width))
        else:
            table.add_column(c.header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(display_text(_cell(row, c)) for c in kept))
    return table, dropped


def _policy_line(node: dict) -> str | None:
    """The node's automatic policy as one line ("auto: soft: 312 MiB to find, budget 1.8 GiB")."""
    if node.get("policy") != "auto":
        return None
    budget = node.get("budget_bytes")
    return (f"auto: {_clean(node.get('policy_state') or '-')}, budget "
            f"{format_size(budget) if budget is not None else 'none'}")


def _node_lines(node: dict) -> list[Text]:
    lines = []
    line = _policy_line(node)
    if line:
        lines.append(Text(f"policy {line}", style="bold"))
    lines.append(Text(f"node target {format_size(node.get('target_bytes', 0))}, "
                      f"balloon {format_size(node.get('balloon_bytes', 0))}, "
                      f"reclaimed {format_size(node.get('reclaimed_bytes', 0))}, KSM: {_clean(node.get('ksm', '-'))}"))
    if node.get("unmet_bytes"):
        lines.append(Text(f"target not met: {format_size(node['unmet_bytes'])} short"
                          + (f" ({_clean(node['unmet_reason'])})" if node.get("unmet_reason") else ""), style="bold yellow"))
    return lines


def _legend(tables_dropped: list[list[Column]], shown: set[str]) -> Text | None:
    words = [HEADER_NAMES[h] for h in ("MAX", "COMMIT", "FREED", "RESIDENT", "P99") if h in shown]
    dropped = sorted({c.header for d in tables_dropped for c in d})
    text = "sizes binary (M = MiB)"
    if words:
        text += "; " + ", ".join(words)
    if dropped:
        text += f"; too narrow for {', '.join(dropped)} (status --json has all)"
    return Text(text, style="dim")


def status_renderable(body: dict, width: int) -> RenderableType:
    """The whole status picture for a terminal ``width`` columns wide."""
    parts: list[RenderableType] = []
    dropped: list[list[Column]] = []
    shown: set[str] = set()

    def add(title: str, columns, rows) -> None:
        table, gone = _table(title, columns, rows, width)
        parts.append(table)
        dropped.append(gone)
        shown.update(c.header for c in columns if c not in gone and rows)

    jvms = body.get("jvms", [])
    node = body.get("node", {})
    if jvms or "vms" not in body:
        add(f"JVMs ({len(jvms)})", JVM_COLUMNS, jvms)
        if node:
            parts.extend(_node_lines(node))
    if "vms" in body:
        vms = body["vms"]
        add(f"VMs ({len(vms)})", VM_COLUMNS, vms)
        parts.extend(Text(line) for line in vm_policy_lines(body))
        for vm in vms:
            if vm.get("jvms"):
                add(f"JVMs in {display_text(vm['name'])}", JVM_COLUMNS, vm["jvms"])
        for name, why in body.get("left_alone", {}).items():
            parts.append(Text(f"left alone: {_clean(name)}: {_clean(why)}"))
    parts.append(_legend(dropped, shown))
    return Group(*parts)


def render_plain(body: dict, width: int = 80) -> str:
    """The status as aligned plain text, the same columns chosen the same way (no rich)."""
    out: list[str] = []

    def table(title: str, columns, rows) -> None:
        kept, _dropped = _choose(columns, rows, width)
        cells = [[c.header for c in kept]] + [[_cell(r, c) for c in kept] for r in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(kept))]
        out.append(title)
        for line in cells:
            out.append("  ".join(v.ljust(w) if c.text else v.rjust(w)
                                 for v, w, c in zip(line, widths, kept)).rstrip())

    jvms = body.get("jvms", [])
    node = body.get("node", {})
    if jvms or "vms" not in body:
        table(f"JVMs ({len(jvms)})", JVM_COLUMNS, jvms)
        line = _policy_line(node)
        if line:
            out.append(f"policy {line}")
    if "vms" in body:
        table(f"VMs ({len(body['vms'])})", VM_COLUMNS, body["vms"])
        out.extend(vm_policy_lines(body))
        out.extend(f"left alone: {_clean(name)}: {_clean(why)}" for name, why in body.get("left_alone", {}).items())
    return "\n".join(out)


def vm_policy_lines(body: dict) -> list[str]:
    """hostd --policy auto: its state, then who gives what and why, a line per VM."""
    if not body.get("vm_policy"):
        return []
    lines = [f"VM policy: {_clean(body['vm_policy'])}"]
    for vm in body.get("vms", []):
        if vm.get("policy_reason"):
            lines.append(f"  {_clean(vm['name'])}: guest free {format_size(vm.get('virtio_target_bytes') or 0)} "
                         f"+ heap {format_size(vm.get('target_bytes') or 0)}"
                         f"{' (pinned)' if vm.get('pinned') else ''}: {_clean(vm['policy_reason'])}")
    return lines


def render_status(body: dict, console: Console | None = None) -> None:
    if Console is None:
        print(render_plain(body))
        return
    console = console or Console()
    # Piped (grep, logs), the explanation lines stay whole lines: rich would otherwise wrap them
    # at its default 80 columns. On a terminal everything fits its width.
    console.print(status_renderable(body, console.width), soft_wrap=not console.is_terminal)
