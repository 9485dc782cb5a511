"""Human-readable status: rich tables on a terminal, plain aligned text otherwise.

``rich`` is a host-side extra (``heapballoon[host]``); a guest installs none, and then the
tables are printed as plain aligned text.
"""

from __future__ import annotations

from heapballoon.units import format_size

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # a guest without the host extras
    Console = Table = None  # type: ignore[assignment,misc]

JVM_COLUMNS = (
    ("PID", "pid", str), ("NAME", "name", str), ("GC", "gc", str),
    ("HEAP MAX", "heap_max_bytes", format_size), ("COMMITTED", "heap_committed_bytes", format_size),
    ("LIVE", "live_bytes", format_size), ("TARGET", "target_bytes", format_size),
    ("BALLOON", "balloon_bytes", format_size), ("RECLAIMED", "reclaimed_bytes", format_size),
    ("MODE", "reclaim", str),
)
VM_COLUMNS = (
    ("VM", "name", str), ("MEMORY", "memory_bytes", format_size), ("TARGET", "target_bytes", format_size),
    ("BALLOON", "balloon_bytes", format_size), ("RECLAIMED", "reclaimed_bytes", format_size),
    ("HOST RESIDENT", "host_resident_bytes", format_size), ("PAUSE p99", "pause_ms_p99", lambda v: f"{v:.1f} ms"),
    ("JVMS", "jvms", lambda v: str(len(v))),
)


class _PlainTable:
    """An aligned text table with the interface of the part of rich.table.Table used here."""

    def __init__(self, title: str, **_kw) -> None:
        self.title, self.headers, self.rows = title, [], []

    def add_column(self, header: str, justify: str = "left") -> None:
        self.headers.append((header, justify))

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def __str__(self) -> str:
        widths = [max([len(h)] + [len(r[i]) for r in self.rows]) for i, (h, _j) in enumerate(self.headers)]

        def line(cells) -> str:
            return "  ".join(c.ljust(w) if j == "left" else c.rjust(w)
                             for c, w, (_h, j) in zip(cells, widths, self.headers)).rstrip()

        return "\n".join([self.title, line([h for h, _j in self.headers])] + [line(r) for r in self.rows])


class _PlainConsole:
    def print(self, what) -> None:
        print(what)


def _table(title: str, columns, rows):
    table = (Table or _PlainTable)(title=title, title_justify="left")
    for header, _key, _fmt in columns:
        table.add_column(header, justify="left" if header in ("NAME", "GC", "MODE", "VM") else "right")
    for row in rows:
        table.add_row(*(fmt(row.get(key, 0)) if row.get(key) is not None else "-" for _h, key, fmt in columns))
    return table


def render_status(body: dict, console=None) -> None:
    console = console or (Console() if Console is not None else _PlainConsole())
    jvms = body.get("jvms", [])
    node = body.get("node", {})
    if jvms or "vms" not in body:
        console.print(_table(f"JVMs ({len(jvms)})", JVM_COLUMNS, jvms))
        if node:
            console.print(f"node target {format_size(node.get('target_bytes', 0))}, "
                          f"balloon {format_size(node.get('balloon_bytes', 0))}, "
                          f"reclaimed {format_size(node.get('reclaimed_bytes', 0))}, KSM: {node.get('ksm', '-')}")
    if "vms" in body:
        vms = body["vms"]
        console.print(_table(f"VMs ({len(vms)})", VM_COLUMNS, vms))
        for vm in vms:
            if vm.get("jvms"):
                console.print(_table(f"JVMs in {vm['name']}", JVM_COLUMNS, vm["jvms"]))
