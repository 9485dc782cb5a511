"""How `make test` schedules tests (tests/conftest.py, docs/testing.md): which run alone
(``serial``), which take the KSM lock (``ksm_owner``), and that the lock keeps two apart."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
FILES = ["vm/test_vm.py", "integration/test_process_mode.py", "integration/test_collectors.py",
         "integration/test_status_watch.py", "integration/test_cli_hints.py", "integration/test_host_hostd.py"]


def selected(marks: str) -> set[str]:
    """Node ids (tests/...) that ``-m marks`` selects among FILES, as `make test` collects them."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "-m", marks, *FILES], cwd=TESTS, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: nothing selected
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


def test_guests_and_tight_bars_run_alone_and_the_rest_does_not():
    serial = selected("serial")
    assert serial, "no test is marked serial"
    assert {i for i in serial if i.startswith("tests/vm/")} and all(not i.startswith("tests/integration/test_cli_hints")
                                                              for i in serial)
    assert "tests/integration/test_status_watch.py::test_watch_redraws_until_ctrl_c" in serial  # its module's mark
    assert "tests/integration/test_process_mode.py::test_acceptance_1g_heap_512m_target[ksm]" in serial
    assert "tests/integration/test_process_mode.py::test_acceptance_1g_heap_512m_target[direct]" not in serial
    every_vm = {i for i in selected("not serial") if i.startswith("tests/vm/")}
    assert every_vm == set(), f"guest tests outside serial: {sorted(every_vm)[:3]}"


def test_daemon_starters_own_ksm_but_the_matrix_runs_two_at_a_time():
    owners = selected("ksm_owner")
    assert "tests/integration/test_status_watch.py::test_watch_redraws_until_ctrl_c" in owners  # the daemons fixture
    assert any(i.startswith("tests/integration/test_host_hostd.py") for i in owners)  # hostd, marked by its module
    assert not any(i.startswith("tests/integration/test_collectors.py") for i in owners)
    assert not any(i.startswith("tests/integration/test_cli_hints.py::test_vm_commands") for i in owners)


HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from hbtest import ksm_owner_lock
with ksm_owner_lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(1.0)
    open(sys.argv[3], "w").close()  # written before the lock is let go
"""


def test_a_ksm_owner_waits_for_the_one_holding_the_lock(tmp_path):
    from hbtest import ksm_owner_lock

    lock_path, released = str(tmp_path / "ksm.lock"), tmp_path / "released"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(TESTS), lock_path, str(released)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with open(lock_path, "a") as probe:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first owner holds it
        with ksm_owner_lock(lock_path):
            assert released.exists(), "granted while the first owner still held it"
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
