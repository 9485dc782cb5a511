"""Every module imports on its own, in a fresh interpreter; no import cycles; nothing heavy at import.

Cycles are looked for with ``ast`` on two graphs: module-level imports, and every import
including the lazy ones inside functions. The cycle finder is tested on made-up graphs, and
the old demo.py ↔ vm/demo.py (now demo_vm.py) cycle is what the second graph catches.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "heapballoon"
SKIP = {"heapballoon.__main__"}   # runs the CLI when imported


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if module_name(p) not in SKIP)


def imports_of(path: Path, name: str, lazy: bool = False) -> set[str]:
    """heapballoon modules ``name`` imports: at module level, or anywhere when ``lazy``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in (ast.walk(tree) if lazy else tree.body):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import submodule` depends on the submodule only
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in set(MODULES) else mod)
    return {m for m in out if m in set(MODULES)} - {name}


def graph(lazy: bool = False) -> dict[str, set[str]]:
    g = {}
    for p in PACKAGE.rglob("*.py"):
        name = module_name(p)
        if name in SKIP:
            continue
        # (importing a.b.c runs a.b's __init__ first; that implicit step is not an edge: it
        # only bites when a.b.c imports a *name* from a.b, which is an explicit edge here)
        g[name] = imports_of(p, name, lazy)
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in g}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if color.get(m, BLACK) == GREY:
                return stack[stack.index(m):] + [m]
            if color.get(m) == WHITE:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(g):
        if color[n] == WHITE:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.m"}, "p.m": {"p"}}) == ["p", "p.m", "p"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_the_package():
    g = graph()
    assert "heapballoon.vm.launcher" in g and "heapballoon.vm.vmdir" in g["heapballoon.vm.launcher"]
    assert find_cycle(g) is None


def test_no_import_cycles_even_through_lazy_imports():
    """Imports inside functions count too: demo.py ↔ vm/demo.py was such a cycle."""
    g = graph(lazy=True)
    assert "heapballoon.vm.image" in g["heapballoon.vm.launcher"]   # a lazy one, seen
    assert find_cycle(g) is None


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """``g`` folded onto heapballoon's subpackages (heapballoon.X): an edge X → Y when any module
    of X imports one of Y; modules directly in heapballoon are nodes of their own."""
    def pkg(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, deps in g.items():
        out.setdefault(pkg(m), set()).update(pkg(d) for d in deps if pkg(d) != pkg(m))
    return out


def test_package_graph_folds_modules_onto_packages():
    g = {"heapballoon.host.hostd": {"heapballoon.libvirt.backend", "heapballoon.host.vmsession"},
         "heapballoon.libvirt.backend": {"heapballoon.host.vmsession"}, "heapballoon.host.vmsession": set()}
    assert find_cycle(package_graph(g)) == ["heapballoon.host", "heapballoon.libvirt", "heapballoon.host"]


def test_no_package_level_import_loops_even_through_lazy_imports():
    """Issue 19: host ↔ vm (vm/launcher took host/'s layout) and host ↔ libvirt (hostd's lazy
    import of the libvirt backend) were such loops."""
    g = package_graph(graph(lazy=True))
    assert "heapballoon.host" in g["heapballoon.libvirt"]  # the edge that stays, seen
    assert find_cycle(g) is None, find_cycle(g)


def test_the_demo_and_the_vm_demo_do_not_import_each_other():
    g = graph()
    assert "heapballoon.demo" not in g["heapballoon.demo_vm"]
    src = (PACKAGE / "demo_vm.py").read_text()
    assert "heapballoon.demo" not in {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}


TOOLS = ("heapballoon.experiment", "heapballoon.demo", "heapballoon.demo_vm")


def importers_of_tools(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules outside the tools (and the CLI, which registers their commands) that import one."""
    def tool(m: str) -> bool:
        return any(m == t or m.startswith(t + ".") for t in TOOLS)

    return {m: {d for d in deps if tool(d)} for m, deps in g.items()
            if not tool(m) and m != "heapballoon.cli" and any(tool(d) for d in deps)}


def test_the_tools_checker_sees_an_import_of_a_tool():
    g = {"heapballoon.host.hostd": {"heapballoon.experiment.runner"}, "heapballoon.cli": {"heapballoon.experiment.cli"},
         "heapballoon.demo": {"heapballoon.demo_vm"}}
    assert importers_of_tools(g) == {"heapballoon.host.hostd": {"heapballoon.experiment.runner"}}


def test_no_runtime_module_imports_a_tool():
    """Issue 19: the tools kept in the package (experiment/, the demos; docs/architecture.md says
    why) are leaves: only the CLI reaches them, lazily, to register their commands."""
    assert importers_of_tools(graph(lazy=True)) == {}


PROBE = r"""
import importlib, json, sys
name = sys.argv[1]
importlib.import_module(name)
consoles = []
try:
    from rich.console import Console
except ImportError:
    Console = None
for mname, mod in list(sys.modules.items()):
    if Console and mname.startswith("heapballoon"):
        consoles += [f"{mname}.{k}" for k, v in vars(mod).items() if isinstance(v, Console)]
print(json.dumps({"consoles": consoles, "qemu_qmp": "qemu.qmp" in sys.modules,
                  "threads": __import__("threading").active_count()}))
"""


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(name):
    proc = subprocess.run([sys.executable, "-c", PROBE, name], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.splitlines()[-1])
    assert facts["consoles"] == [], f"a rich Console is created when {name} is imported"
    assert facts["threads"] == 1, f"importing {name} starts threads"
    if name.startswith(("heapballoon.vm", "heapballoon.guest", "heapballoon.linux")):
        assert not facts["qemu_qmp"], f"{name} imports qemu.qmp at import time"


def test_the_guest_side_imports_only_the_standard_library():
    """What the guest image's python runs must not need PyPI packages (the guest has none)."""
    code = ("import sys, heapballoon.guest.supervisor, heapballoon.guest.driver;"
            "third = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'qemu', 'prometheus_client'));"
            "print(','.join(third))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""
