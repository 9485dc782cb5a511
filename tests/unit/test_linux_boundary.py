"""The linux/ boundary: only heapballoon.linux touches /proc, /sys (cgroupfs included), /dev, raw fds and ctypes.

Every module under src/heapballoon outside linux/ is parsed with ``ast`` (nothing is imported)
and may neither import ctypes, nor hold a string literal that starts with ``/proc``, ``/sys``
or ``/dev`` (an f-string counts by its leading text), nor open or use a raw fd (``os.open``,
``os.read``/``write``/``pread``/``pwrite``/``readv``/``writev``, ``os.fdopen``, ``os.mknod``, or
``mmap``: device nodes, memfds and the like; ordinary files use ``open``). Docstrings are prose, not accesses, and are skipped.
The checker itself is tested on bad and good snippets, so this test can fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "heapballoon"
KERNEL_PATH = re.compile(r"^/(proc|sys|dev)(/|$)")

# Files that may still cross the boundary: none. Keep it that way; a file added here must be
# one that really violates it (an entry that does not fails the test below).
ALLOWLIST: set[str] = set()
# Raw fds opened outside linux/: none (the guest's two port readers became one,
# linux/virtio.PortFile). Listed exactly: a file that stops opening raw fds fails the test below.
RAW_FD_KNOWN: set[str] = set()
RAW_FD = "(a raw fd)"
RAW_FD_CALLS = {"open", "read", "write", "pread", "pwrite", "readv", "writev", "fdopen", "mknod"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Boundary violations in ``source``: ``"line N: why"`` for each."""
    tree = ast.parse(source, filename)
    skip = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # judged as a whole, by its leading text
            skip.update(id(v) for v in ast.walk(node) if isinstance(v, ast.Constant))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ctypes" or alias.name.startswith("ctypes."):
                    found.append(f"line {node.lineno}: import {alias.name}")
                elif alias.name == "mmap":
                    found.append(f"line {node.lineno}: import mmap {RAW_FD}")
        elif isinstance(node, ast.ImportFrom):
            if node.module and (node.module == "ctypes" or node.module.startswith("ctypes.")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "mmap":
                found.append(f"line {node.lineno}: from mmap import ... {RAW_FD}")
            elif node.module == "os" and any(a.name in RAW_FD_CALLS for a in node.names):
                found.append(f"line {node.lineno}: from os import ... {RAW_FD}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RAW_FD_CALLS \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "os":
            found.append(f"line {node.lineno}: os.{node.func.attr} {RAW_FD}")
        elif isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and KERNEL_PATH.match(first.value):
                found.append(f"line {node.lineno}: f-string {first.value!r}...")
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            value = node.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str) and KERNEL_PATH.match(value):
                found.append(f"line {node.lineno}: string {value!r}")
    return found


def modules_outside_linux() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "linux")


# ------------------------------------------------------------------------- the checker itself

@pytest.mark.parametrize("snippet", [
    "import ctypes\n",
    "import ctypes.util as u\n",
    "from ctypes import CDLL\n",
    "from ctypes.util import find_library\n",
    "open('/proc/self/status')\n",
    "p = f'/proc/{pid}/stat'\n",
    "SYS = '/sys/kernel/mm/ksm'\n",
    "CG = '/sys/fs/cgroup/memory.max'\n",
    "x = b'/proc/meminfo'\n",
    "x = '/proc'\n",
    "def f():\n    '''doc'''\n    return open('/sys/class/virtio-ports')\n",
    "import os\nos.access('/dev/kvm', os.R_OK)\n",
    "fd = os.open(path, os.O_RDWR)\n",
    "os.pwrite(ram.fd, data, 0)\n",
    "chunk = os.read(fd, 65536)\n",
    "os.write(fd, b'x')\n",
    "os.mknod(path, 0o600)\n",
    "import mmap\n",
    "from os import pread\n",
    "x = f'/dev/virtio-ports/{name}'\n",
])
def test_checker_catches(snippet):
    assert violations(snippet), snippet


@pytest.mark.parametrize("snippet", [
    '"""Reads /proc/PID/pagemap through linux/."""\n',
    "def f():\n    '''/proc/PID/fd is scanned by linux/memfd.py'''\n",
    "x = 'see /proc/meminfo'\n",
    "x = '/process/list'\n",
    "x = '/system'\n",
    "from heapballoon.linux.procfs import ProcFS\nProcFS().meminfo()\n",
    "p = f'{root}/proc'\n",
    "x = '/devices'\n",
    "with open(path) as f:\n    f.read()\n",
    "from heapballoon.linux.devices import kvm_usable\nkvm_usable()\n",
])
def test_checker_allows(snippet):
    assert violations(snippet) == []


# ------------------------------------------------------------------------- the package

def test_no_module_outside_linux_touches_the_kernel_directly():
    bad = {}
    for path in modules_outside_linux():
        rel = path.relative_to(PACKAGE).as_posix()
        found = violations(path.read_text(), rel)
        if rel in RAW_FD_KNOWN:
            found = [f for f in found if not f.endswith(RAW_FD)]
        if found and rel not in ALLOWLIST:
            bad[rel] = found
    assert bad == {}, "use heapballoon.linux (ProcFS, KSM, memfd, libc, virtio) instead: " + repr(bad)


def test_allowlist_holds_only_host_files_that_still_violate():
    assert all(rel.startswith("host/") for rel in ALLOWLIST)
    stale = [rel for rel in sorted(ALLOWLIST) if not violations((PACKAGE / rel).read_text(), rel)]
    assert stale == [], f"{stale} no longer cross the boundary: remove them from ALLOWLIST"


def test_raw_fd_known_holds_only_files_that_still_open_raw_fds():
    stale = [rel for rel in sorted(RAW_FD_KNOWN)
             if not any(f.endswith(RAW_FD) for f in violations((PACKAGE / rel).read_text(), rel))]
    assert stale == [], f"{stale} no longer open raw fds: remove them from RAW_FD_KNOWN"


def test_the_walk_sees_the_package():
    rels = {p.relative_to(PACKAGE).as_posix() for p in modules_outside_linux()}
    assert {"vm/launcher.py", "guest/driver.py", "demo.py", "cli.py", "host/hostd.py"} <= rels
    assert not any(r.startswith("linux/") for r in rels)
