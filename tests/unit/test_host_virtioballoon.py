"""virtio-balloon readings from QMP's answers (the QMP side itself is tested on real guests)."""

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.host.virtioballoon import parse_reading

MIB = 1 << 20
STATS = {"stats": {"stat-free-memory": 400 * MIB, "stat-available-memory": 380 * MIB, "stat-total-memory": 470 * MIB,
                   "stat-disk-caches": 19 * MIB, "stat-swap-in": -1},
         "last-update": 1000}


def test_reading_from_qmp_answers():
    r = parse_reading({"actual": 512 * MIB}, STATS, now_s=5.0, wall_s=1003.0)
    assert (r.actual_bytes, r.free_bytes, r.available_bytes, r.total_bytes) == (512 * MIB, 400 * MIB, 380 * MIB, 470 * MIB)
    assert r.stats_age_s == 3.0 and r.read_at_s == 5.0
    assert r.held_bytes(1024 * MIB) == 512 * MIB and r.held_bytes(256 * MIB) == 0


def test_no_statistics_yet_reads_as_unknown_not_zero():
    # before the guest sends any, QEMU answers zeros (and last-update 0) or -1 per statistic
    for stats in ({"stats": {"stat-free-memory": 0}, "last-update": 0}, {}, None, {"stats": "x", "last-update": 9},
                  {"stats": {"stat-free-memory": -1, "stat-available-memory": True}, "last-update": 9}):
        r = parse_reading({"actual": MIB}, stats, 0.0, 10.0)
        assert r.free_bytes is None and r.available_bytes is None


@pytest.mark.parametrize("balloon", [{}, None, {"actual": "x"}, []])
def test_query_balloon_without_actual_is_an_error(balloon):
    with pytest.raises(ReclaimError, match="actual"):
        parse_reading(balloon, STATS, 0.0, 0.0)


def test_libvirt_memory_stats_read_like_qmp():
    """virDomainMemoryStats (KiB; usable = MemAvailable, available = RAM the guest manages)."""
    from heapballoon.libvirt.conn import stats_as_qmp

    raw = {"actual": 524288, "unused": 409600, "usable": 389120, "available": 481280, "disk_caches": 19456,
           "last_update": 1000, "rss": 999999}
    r = parse_reading(*stats_as_qmp(raw), now_s=5.0, wall_s=1003.0)
    assert (r.actual_bytes, r.free_bytes, r.available_bytes, r.total_bytes, r.disk_caches_bytes) == \
        (512 * MIB, 400 * MIB, 380 * MIB, 470 * MIB, 19 * MIB)
    assert r.stats_age_s == 3.0
    # a guest whose driver sent nothing yet: libvirt gives only actual (and maybe rss)
    r = parse_reading(*stats_as_qmp({"actual": 1048576, "rss": 5}), 0.0, 10.0)
    assert r.actual_bytes == 1024 * MIB and r.free_bytes is None and r.stats_age_s is None
    with pytest.raises(ReclaimError, match="actual"):
        parse_reading(*stats_as_qmp({"rss": 5}), 0.0, 0.0)
