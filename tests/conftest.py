"""Fixtures shared by every test folder (helpers live in hbtest.py)."""

import pytest

from hbtest import DaemonFactory, JVMFactory


@pytest.fixture
def daemons(tmp_path):
    f = DaemonFactory(tmp_path)
    yield f
    f.teardown()


@pytest.fixture
def apps():
    f = JVMFactory()
    yield f
    f.teardown()
