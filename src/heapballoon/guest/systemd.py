"""The systemd files an ordinary guest installs, rendered for this installation.

This module owns finding the shipped files (``heapballoon/_data/`` in an installed package,
``<repo>/packaging/`` in a checkout) and filling them in: the guest driver's unit gets an
``ExecStart`` that runs this interpreter's heapballoon, and the JVM drop-in example gets the
``-javaagent:`` option for this installation's agent jar. Standard library only (guest side).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from heapballoon.errors import UsageError

UNIT = "heapballoon-guest.service"
DROP_IN = "java-agent.conf"


def shipped_file(name: str) -> Path:
    """The shipped file ``name``: package data when installed, ``packaging/`` in a checkout."""
    package_dir = Path(__file__).resolve().parent.parent  # .../heapballoon
    for candidate in (package_dir / "_data" / name, package_dir.parent.parent / "packaging" / name):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{name} not found in {package_dir / '_data'}: this installation is incomplete (reinstall heapballoon)")


STOCK_ARGS = "--reclaim direct --report-order 0"


def unit_text(socket_path: str, stock: bool = False) -> str:
    """The guest driver's unit, starting ``python -m heapballoon guest-driver`` of this interpreter.

    ``stock``: for a VM on a host without hostd (issue 17): the driver frees idle heap itself and
    reports freed 4 KiB pages, and the unit does not wait for the ``org.heapballoon.0`` port."""
    exec_start = f"ExecStart={sys.executable} -m heapballoon guest-driver --socket {socket_path}"
    text = shipped_file(UNIT).read_text()
    if stock:
        exec_start += f" {STOCK_ARGS}"
        text = re.sub(r"^Wants=dev-virtio.*\n", "", text, count=1, flags=re.M)
        text = re.sub(r"^After=dev-virtio\S* ", "After=", text, count=1, flags=re.M)
    return re.sub(r"^ExecStart=.*$", lambda _m: exec_start, text, count=1, flags=re.M)


def drop_in_text(name: str, javaagent: str) -> str:
    """The JVM drop-in example for service ``name``, with this installation's ``-javaagent:`` option."""
    text = shipped_file(DROP_IN).read_text().replace("YOUR-APP", name)
    line = f'Environment="JAVA_TOOL_OPTIONS={javaagent}"'
    return re.sub(r'^Environment="JAVA_TOOL_OPTIONS=.*$', lambda _m: line, text, count=1, flags=re.M)
