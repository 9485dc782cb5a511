"""The agent's JUnit 5 tests (agent/test/), run with Debian's junit5 console launcher: the live-set
estimate per collector and the wire messages against tests/golden/protocol.json."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JUNIT = Path("/usr/share/java/junit-platform-console-standalone.jar")


def test_agent_junit_suite(tmp_path):
    javac = shutil.which("javac")
    if javac is None or not JUNIT.is_file():
        reason = "needs javac and Debian's junit5 (apt-get install junit5)"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    sources = sorted(map(str, (REPO / "agent" / "src").rglob("*.java"))) + sorted(
        map(str, (REPO / "agent" / "test").rglob("*.java")))
    out = tmp_path / "classes"
    compiled = subprocess.run([javac, "--release", "17", "-nowarn", "-encoding", "UTF-8", "-cp", str(JUNIT),
                               "-d", str(out), *sources], capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    run = subprocess.run(["java", f"-Dgolden={REPO / 'tests' / 'golden' / 'protocol.json'}", "-jar", str(JUNIT),
                          "--disable-banner", "--details=summary", "-cp", str(out),
                          "--select-package", "io.heapballoon.agent"],
                         capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    found = int(re.search(r"(\d+) tests found", report).group(1))
    failed = int(re.search(r"(\d+) tests failed", report).group(1))
    print(f"JUnit: {found} tests found, {failed} failed")
    assert found >= 7 and failed == 0, report[-4000:]
