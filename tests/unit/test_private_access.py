"""No module reaches into another module's privates: ``x._name`` (x not ``self``/``cls``) where
``_name`` is defined only in another module of src/heapballoon, or ``from m import _name`` of a
heapballoon module. Components get narrow interfaces, not someone else's internals (issue 19)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "heapballoon"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_definitions(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, module or class assignments, and
    ``self._x = ...`` attributes."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out.add(n.id)
                    elif isinstance(n, ast.Attribute):
                        out.add(n.attr)
    return {n for n in out if _private(n)}


def violations(sources: dict[str, str]) -> list[str]:
    """``module:line: what`` for each cross-module private access in ``sources`` (module → text)."""
    trees = {m: ast.parse(text) for m, text in sources.items()}
    defined_in = defaultdict(set)
    for m, tree in trees.items():
        for name in private_definitions(tree):
            defined_in[name].add(m)
    found = []
    for m, tree in sorted(trees.items()):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                owners = defined_in.get(node.attr, set())
                if owners and m not in owners:
                    found.append(f"{m}:{node.lineno}: .{node.attr} (defined in {', '.join(sorted(owners))})")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("heapballoon"):
                for alias in node.names:
                    if _private(alias.name) and node.module != m:
                        found.append(f"{m}:{node.lineno}: imports {node.module}.{alias.name}")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1]), f))


# Known, and left to its owner: experiment/ is being reworked in parallel (issue 19's policy and
# experiment half); listed exactly, so fixing one fails this test until its line goes too.
KNOWN = {
    "heapballoon.experiment.vmmode:24: imports heapballoon.experiment.runner._on_signal",
    "heapballoon.experiment.vmmode:24: imports heapballoon.experiment.runner._write_csv",
}


def test_no_module_touches_another_modules_privates():
    sources = {_module(p): p.read_text() for p in sorted(SRC.rglob("*.py"))}
    assert len(sources) > 50
    bad = violations(sources)
    assert [b for b in bad if b not in KNOWN] == [], "private access across modules:\n" + "\n".join(bad)
    assert sorted(KNOWN - set(bad)) == [], "fixed: remove these from KNOWN"


def test_the_check_sees_a_call_to_another_modules_private_method():
    sources = {
        "heapballoon.a": "class D:\n    def _drop(self, vm):\n        self._gone = vm\n",
        "heapballoon.b": "def scan(d, vm):\n    d._drop(vm)\n    return d._gone\n",
        "heapballoon.c": "from heapballoon.a import _helper\n",
        "heapballoon.d": "def ok(self, x):\n    self._drop(x)\n    return x._unknown_elsewhere\n",
    }
    assert violations(sources) == ["heapballoon.b:2: ._drop (defined in heapballoon.a)",
                                   "heapballoon.b:3: ._gone (defined in heapballoon.a)",
                                   "heapballoon.c:1: imports heapballoon.a._helper"]
