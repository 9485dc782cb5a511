"""Fixtures shared by every test folder (helpers live in hbtest.py), and how tests share the
machine when `make test` runs them two at a time (docs/testing.md).

Phase 1 of `make test` runs every test not marked ``serial`` on two pytest-xdist workers, then
the ``serial`` tests one at a time. Two rules are applied here, at collection, so a new test
follows them without anyone remembering to:

* ``serial`` (runs alone): every test under tests/vm/ and tests/libvirt/ (they boot TCG guests,
  which take a core each), and each test that marks itself so (a bar on CPU share, pauses,
  latency or RSS falls; KSM, swap or global cgroup settings; a heavy load of its own).
* ``ksm_owner`` (one at a time among themselves, beside anything else): a test that starts the
  node daemon as root through the ``daemons`` fixture, or that marks itself so (it starts a
  daemon or hostd another way). Each such daemon takes over /sys/kernel/mm/ksm, saves the knobs
  at start and restores them at exit: two at once would restore each other's settings. Such a
  test holds an exclusive flock (hbtest.ksm_owner_lock) from before its first fixture until after its
  daemons are gone. The collector matrix is left out: it runs its daemons two at a time by
  design (its JVMs reclaim directly, so no daemon boosts KSM).

(pytest-xdist's ``--dist loadgroup`` would do the second without a lock, but with pytest 9.2 it
silently stops grouping: pytest-xdist issue 1386.)
"""

import pytest

from hbtest import DaemonFactory, JVMFactory, ksm_owner_lock

SERIAL_DIRS = ("/tests/vm/", "/tests/libvirt/")


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(d in item.path.as_posix() for d in SERIAL_DIRS):
            item.add_marker(pytest.mark.serial)
        if "daemons" in item.fixturenames and not item.get_closest_marker("matrix"):
            item.add_marker(pytest.mark.ksm_owner)


@pytest.fixture(autouse=True)
def one_ksm_owner_at_a_time(request):
    """Autouse, so it is set up before (and torn down after) the test's own fixtures."""
    if request.node.get_closest_marker("ksm_owner") is None:
        yield
        return
    with ksm_owner_lock():
        yield


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
