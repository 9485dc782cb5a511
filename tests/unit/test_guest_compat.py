"""The guest side runs on the Python that ordinary guests ship (3.9+: RHEL 9 has 3.9, Ubuntu
22.04 3.10, Debian 12 3.11) with the standard library alone.

No 3.9 or 3.10 interpreter can run here (Debian 12 has neither, and nothing downloads one), so
the guest-side modules are checked statically: ``vermin -t=3.9-`` (pinned in the test extras)
plus what vermin cannot see — a ``X | Y`` union evaluated at run time, annotations that are
evaluated without ``from __future__ import annotations``, ``typing.get_type_hints`` over
``|`` annotations, ``int.bit_count``. The module set is computed from the guest entry points'
imports, so a new import of a 3.10+ module (or of a PyPI package) fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
VERMIN = Path(sys.executable).parent / "vermin"

# What a guest runs: the guest driver (its systemd unit runs `heapballoon guest-driver`), the
# systemd files, and the CLI commands a guest uses. In the CLI modules only the imports of these
# functions are followed (the others are host commands, which check for 3.11+ and the host
# extras themselves: heapballoon.cli.require_host).
GUEST_ROOTS = ("heapballoon.guest.driver", "heapballoon.guest.systemd", "heapballoon.cli", "heapballoon.__main__")
GUEST_FUNCTIONS = {
    "heapballoon.cli": {"build_parser", "main", "_guest_driver", "cmd_run", "cmd_attach", "cmd_agent_path",
                        "cmd_guest_unit", "cmd_status", "_status_body", "cmd_target"},
    "heapballoon.vm.cli": {"add_commands"},  # only builds the parser; its commands are host side
    "heapballoon.driver.cli": {"add_commands"},  # the daemon's parser (cmd_daemon, as when it was in cli.py)
    "heapballoon.libvirt.cli": {"add_commands"},  # the same
    "heapballoon.experiment.cli": {"add_commands"},  # the same
}
# int methods vermin cannot type (the receiver's type is unknown to a static checker)
NEWER_METHODS = {"bit_count": "3.10"}
TYPE_NAMES = {"int", "str", "bytes", "float", "bool", "list", "dict", "tuple", "set", "frozenset", "type", "None"}


def module_file(name: str, src: Path = SRC) -> Path | None:
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = current.split(".") if is_package else current.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports(tree: ast.AST, current: str, is_package: bool, follow_functions) -> list[tuple[str, bool]]:
    """(module, guarded) for every import in ``tree``; ``guarded``: inside try/except ImportError.
    Imports inside a function are followed only when ``follow_functions(name)`` says so."""
    out: list[tuple[str, bool]] = []

    def visit(node, guarded: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not follow_functions(node.name):
            return
        if isinstance(node, ast.Try):
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            inner = guarded or bool(catches & {"ImportError", "ModuleNotFoundError"})
            for child in node.body:
                visit(child, inner)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, current, is_package)
            out.append((base, guarded))
            out.extend((f"{base}.{a.name}", guarded) for a in node.names)  # may be submodules
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return out


def guest_modules(roots=GUEST_ROOTS, src: Path = SRC) -> tuple[dict[str, Path], dict[str, set[str]]]:
    """(heapballoon module → file, third-party module → the guest modules importing it unguarded)."""
    found: dict[str, Path] = {}
    third_party: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = module_file(name, src)
        if path is None:
            continue  # `from pkg import name` where name is not a module
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        only = GUEST_FUNCTIONS.get(name)
        follow = (lambda f: True) if only is None else only.__contains__
        for mod, guarded in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", follow):
            top = mod.split(".")[0]
            if top == "heapballoon":
                todo.append(mod)
            elif top and top not in sys.stdlib_module_names and top != "__future__" and not guarded:
                third_party.setdefault(mod, set()).add(name)
    return found, third_party


def _is_type_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expr(node.left) or _is_type_expr(node.right)
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return _is_type_expr(node.value)
    return False


def newer_python_uses(path: Path) -> list[str]:
    """What vermin misses: 3.10+ behaviour that depends on run-time types or on annotations."""
    tree = ast.parse(path.read_text())
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    annotations: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs
                            + [args.vararg, args.kwarg] if a is not None and a.annotation is not None]
            if node.returns is not None:
                annotations.append(node.returns)
    in_annotation = {id(n) for a in annotations for n in ast.walk(a)}
    unions = [a for a in annotations if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))]
    problems = []
    if unions and not future:
        problems.append(f"{path}:{unions[0].lineno}: `X | Y` annotation without `from __future__ import annotations`")
    if unions and "get_type_hints" in path.read_text():
        problems.append(f"{path}:{unions[0].lineno}: typing.get_type_hints evaluates a `X | Y` annotation (3.10+)")
    for node in ast.walk(tree):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in in_annotation
                and _is_type_expr(node.left) and _is_type_expr(node.right)):
            problems.append(f"{path}:{node.lineno}: `{ast.unparse(node)}` is a union evaluated at run time (3.10+)")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NEWER_METHODS):
            problems.append(f"{path}:{node.lineno}: .{node.func.attr}() needs Python {NEWER_METHODS[node.func.attr]}")
    return problems


def vermin(files) -> subprocess.CompletedProcess:
    return subprocess.run([str(VERMIN), "-t=3.9-", "--no-tips", "--violations", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- the checks

def test_the_guest_set_is_the_guest_driver_and_what_it_imports():
    found, _ = guest_modules()
    for expected in ("heapballoon.guest.driver", "heapballoon.driver.daemon", "heapballoon.protocol",
                     "heapballoon.linux.pagemap", "heapballoon.linux.virtio", "heapballoon.agent.build",
                     "heapballoon.agent.attach", "heapballoon.status", "heapballoon.render"):
        assert expected in found
    assert not any(m.startswith(("heapballoon.host", "heapballoon.vm.image")) for m in found), sorted(found)


def test_the_guest_side_imports_no_pypi_package():
    _, third_party = guest_modules()
    assert third_party == {}, f"guest-side modules import PyPI packages (install them nowhere in a guest): {third_party}"


def test_vermin_finds_the_guest_side_runs_on_python_3_9():
    found, _ = guest_modules()
    proc = vermin(sorted(found.values()))
    assert proc.returncode == 0, f"guest-side modules need a newer Python than 3.9:\n{proc.stdout}{proc.stderr}"
    assert "Minimum required versions" in proc.stdout


def test_nothing_vermin_misses_needs_python_3_10():
    found, _ = guest_modules()
    problems = [p for path in sorted(found.values()) for p in newer_python_uses(path)]
    assert problems == []


def test_importing_the_guest_side_loads_no_pypi_package():
    """The same at run time, with the host extras made unimportable: the guest entry points load,
    the CLI's parser builds, status renders as plain text, and a host command says what it needs."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HOST_EXTRAS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "JVMs (1)" in proc.stdout and "orders" in proc.stdout
    assert "pip install 'heapballoon[host]'" in proc.stdout, proc.stdout


WITHOUT_HOST_EXTRAS = """
import sys

class NoHostExtras:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rich", "prometheus_client", "qemu"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoHostExtras())
import heapballoon.guest.driver, heapballoon.guest.systemd, heapballoon.agent.build, heapballoon.agent.attach
from heapballoon import cli, render

cli.build_parser()
render.render_status({"jvms": [{"pid": 42, "name": "orders", "reclaim": "direct"}]})
try:
    cli.require_host("hostd")
except cli.UsageError as err:
    print(err)
"""


# ---------------------------------------------------------------- the checks can fail

BAD_GUEST = '''
import tomllib
from heapballoon.bad import helper

def classify(x):
    match x:
        case 1:
            return "one"
    return isinstance(x, int | str)
'''
BAD_HELPER = '''
import rich
from typing import get_type_hints

def f(n: int | None) -> int:
    return n.bit_count()
'''


def test_the_checks_catch_a_3_10_guest_module(tmp_path):
    pkg = tmp_path / "heapballoon"
    (pkg / "guest").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "guest" / "__init__.py").write_text("")
    (pkg / "guest" / "driver.py").write_text("from heapballoon.guest import bad\n")
    (pkg / "guest" / "bad.py").write_text(BAD_GUEST)
    (pkg / "bad.py").write_text(BAD_HELPER)
    found, third_party = guest_modules(("heapballoon.guest.driver",), tmp_path)
    assert {"heapballoon.guest.bad", "heapballoon.bad"} <= set(found)
    assert third_party == {"rich": {"heapballoon.bad"}}
    proc = vermin(sorted(found.values()))
    assert proc.returncode != 0 and "tomllib" in proc.stdout and "match" in proc.stdout
    problems = " ".join(newer_python_uses(found["heapballoon.guest.bad"]) + newer_python_uses(found["heapballoon.bad"]))
    assert "int | str" in problems
    assert "without `from __future__ import annotations`" in problems
    assert "get_type_hints" in problems and "bit_count" in problems


@pytest.mark.parametrize("snippet", ["x: int | None = None", "def f() -> dict[str, int | None]: ..."])
def test_annotations_under_the_future_import_pass(tmp_path, snippet):
    f = tmp_path / "ok.py"
    f.write_text(f"from __future__ import annotations\n{snippet}\n")
    assert newer_python_uses(f) == []
