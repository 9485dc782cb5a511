"""Issue 19's "one of each" and module sizes, checked on the source with ``ast`` (nothing imported).

* Each shared constant, class and parser is defined at module level in exactly one module of
  src/heapballoon (the others import it): the page size, the bad-line limits and their
  counter, the size parser, the virtio port reader, the QMP client.
* No Python module in src/ is over 400 lines, no Java file of the agent over 350.
The definition finder is tried on made-up sources.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "heapballoon"
MAX_PY_LINES, MAX_JAVA_LINES = 400, 350
ONE_OF_EACH = ("PAGE_BYTES", "MAX_BAD_LINES", "BAD_LINES_WINDOW_S", "BadLines", "parse_size", "PortFile",
               "QMPMonitor")


def top_level_names(source: str) -> set[str]:
    """Names a module defines at its top level (assignments, functions, classes); imports are not definitions."""
    out: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def definers() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in ONE_OF_EACH}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in top_level_names(path.read_text()) & set(ONE_OF_EACH):
            found[name].append(path.relative_to(PACKAGE).as_posix())
    return found


def test_the_checker_tells_a_definition_from_an_import():
    assert top_level_names("PAGE_BYTES = 4096\nclass BadLines: pass\ndef parse_size(t): pass\nX: int = 1\n") \
        == {"PAGE_BYTES", "BadLines", "parse_size", "X"}
    assert top_level_names("from heapballoon.units import PAGE_BYTES\nimport os\n") == set()


def test_each_is_defined_in_exactly_one_module():
    found = definers()
    assert {name: where for name, where in found.items() if len(where) != 1} == {}


def test_no_module_is_over_its_size():
    big = {p.relative_to(REPO).as_posix(): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_PY_LINES}
    big.update({p.relative_to(REPO).as_posix(): n for p in (REPO / "agent").rglob("*.java")
                if (n := len(p.read_text().splitlines())) > MAX_JAVA_LINES})
    assert big == {}, f"split these by responsibility (Python ≤ {MAX_PY_LINES}, Java ≤ {MAX_JAVA_LINES} lines): {big}"
