"""Soft-dirty detection: on the real kernel (checked against /proc/config.gz where it exists)
and against a fake clear_refs that accepts writes but clears nothing."""

from __future__ import annotations

import os

import pytest

from heapballoon.linux.procfs import ProcFS
from heapballoon.linux.softdirty import kernel_config, probe_soft_dirty


def test_probe_agrees_with_the_kernel_config():
    got = probe_soft_dirty()
    print(f"soft-dirty on this kernel: {got}")
    config = kernel_config(ProcFS(), "CONFIG_MEM_SOFT_DIRTY")
    if config is None:
        pytest.skip(f"no /proc/config.gz to compare with; probe said {got}")
    assert got.supported == config, got.reason
    if not got.supported:
        assert "CONFIG_MEM_SOFT_DIRTY" in got.reason


def test_a_clear_refs_that_accepts_4_but_clears_nothing_is_not_trusted(tmp_path):
    """Fake /proc: clear_refs is a plain file (the write "succeeds"), pagemap is the real one.
    Whatever the kernel, the bit cannot follow the fake clear: never reported as supported."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "clear_refs").write_text("")
    os.symlink(f"/proc/{os.getpid()}/pagemap", tmp_path / "self" / "pagemap")
    got = probe_soft_dirty(ProcFS(str(tmp_path)))
    assert not got.supported and "bit 55" in got.reason
    assert (tmp_path / "self" / "clear_refs").read_text() == "4"


def test_unwritable_clear_refs_is_unsupported_with_the_reason(tmp_path):
    (tmp_path / "self" / "clear_refs").mkdir(parents=True)  # a directory: the write fails
    got = probe_soft_dirty(ProcFS(str(tmp_path)))
    assert not got.supported and "clear_refs" in got.reason
