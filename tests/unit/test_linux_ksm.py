"""KSM sysfs adapter against a copy of tests/fixtures/ksm in tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux.ksm import KSM

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "ksm"


@pytest.fixture
def ksm_dir(tmp_path) -> Path:
    d = tmp_path / "ksm"
    shutil.copytree(FIXTURE, d)
    return d


@pytest.fixture
def ksm(ksm_dir) -> KSM:
    return KSM(str(ksm_dir))


def knob(d: Path, name: str) -> str:
    return (d / name).read_text()


def test_available_and_writable(ksm, tmp_path):
    assert ksm.available() and ksm.writable()
    missing = KSM(str(tmp_path / "nope"))
    assert not missing.available() and not missing.writable()


def test_read_ints(ksm):
    assert ksm.read("pages_to_scan") == 100
    assert ksm.read("general_profit") == -42
    assert ksm.full_scans() == 7


def test_write_writes_decimal_with_newline(ksm, ksm_dir):
    ksm.write("pages_to_scan", 5000)
    assert knob(ksm_dir, "pages_to_scan") == "5000\n"
    assert ksm.read("pages_to_scan") == 5000


def test_errors_are_one_line_kernel_errors(ksm, ksm_dir):
    (ksm_dir / "run").write_text("garbage\n")
    with pytest.raises(KernelError, match="not an integer"):
        ksm.read("run")
    with pytest.raises(KernelError, match="KSM knob advisor_mode not found"):
        ksm.read("advisor_mode")
    with pytest.raises(KernelError, match="not found"):
        ksm.write("no_such_knob", 1)
    (ksm_dir / "dir_knob").mkdir()
    with pytest.raises(KernelError) as info:
        ksm.write("dir_knob", 1)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        ksm.read("../run")


def test_snapshot_and_restore(ksm, ksm_dir):
    snap = ksm.snapshot()
    assert snap == {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "use_zero_pages": 0}
    ksm.write("run", 1)
    ksm.write("pages_to_scan", 9999)
    ksm.restore(snap)
    assert ksm.snapshot() == snap


def test_snapshot_skips_knobs_the_kernel_lacks(ksm, ksm_dir):
    (ksm_dir / "use_zero_pages").unlink()  # kernel < 4.11
    assert "use_zero_pages" not in ksm.snapshot()


def test_restore_writes_run_last(ksm, monkeypatch):
    order = []
    monkeypatch.setattr(ksm, "write", lambda name, value: order.append(name))
    ksm.restore({"run": 1, "pages_to_scan": 1, "sleep_millisecs": 1, "use_zero_pages": 1})
    assert order[-1] == "run" and len(order) == 4


def test_controller_boosts_while_pages_wait_and_restores_the_originals(ksm, ksm_dir, tmp_path):
    """The one KSM controller (driver.ksmctl), over the adapter: on, boosted while balloon pages
    wait, back to the base rate, the originals restored on close."""
    from heapballoon.driver.ksmctl import BOOST_PAGES_TO_SCAN, BOOST_SLEEP_MS, KsmController

    # sysfs replaces a knob's value on every write; plain files need truncating to act alike
    ksm.write = lambda name, value: (ksm_dir / name).write_text(f"{int(value)}\n")
    ctl = KsmController(ksm, "auto", str(tmp_path / "ksm.json"))
    assert ctl.setup()
    assert [ksm.read(n) for n in ("run", "use_zero_pages")] == [1, 1]
    ctl.tick(100)
    assert (ksm.read("pages_to_scan"), ksm.read("sleep_millisecs")) == (BOOST_PAGES_TO_SCAN, BOOST_SLEEP_MS)
    ctl.tick(0)
    assert (ksm.read("pages_to_scan"), ksm.read("sleep_millisecs")) == (100, 20)
    ctl.close()
    assert [ksm.read(n) for n in ("run", "pages_to_scan", "sleep_millisecs", "use_zero_pages")] == [0, 100, 20, 0]
    assert not (tmp_path / "ksm.json").exists()


def test_zero_pages_names_by_kernel_version(ksm, ksm_dir):
    assert ksm.zero_pages() == 4096  # ksm_zero_pages, Linux 6.6+
    (ksm_dir / "ksm_zero_pages").unlink()
    (ksm_dir / "zero_pages_sharing").write_text("17\n")  # pre-merge name
    assert ksm.zero_pages() == 17
    (ksm_dir / "zero_pages_sharing").unlink()
    with pytest.raises(KernelError, match="needs Linux 6.6"):
        ksm.zero_pages()
