"""The MoM-like virtio-balloon rule of VM mode (pure: no QEMU)."""

from __future__ import annotations

from heapballoon.experiment import momrule
from heapballoon.experiment.momrule import GuestBalloon, decide, host_free_fraction

MIB = 1 << 20


def test_under_pressure_a_guest_with_free_memory_shrinks_by_at_most_one_step():
    g = GuestBalloon(ram_bytes=640 * MIB, actual_bytes=640 * MIB, free_bytes=300 * MIB)
    new = decide(g, host_free=0.05)
    assert new == int(640 * MIB * (1 - momrule.MAX_BALLOON_CHANGE_PERCENT))


def test_under_pressure_the_guest_keeps_its_minimum_free():
    # 140 MiB free of 600: shrinking 5 % (30 MiB) would leave 110 < 20 % of 600 = 120 MiB free
    g = GuestBalloon(640 * MIB, 600 * MIB, 140 * MIB)
    assert decide(g, 0.0) == 600 * MIB - 140 * MIB + int(0.2 * 600 * MIB)
    # at or under the minimum free, or without statistics: left alone
    assert decide(GuestBalloon(640 * MIB, 600 * MIB, 120 * MIB), 0.0) is None
    assert decide(GuestBalloon(640 * MIB, 600 * MIB, None), 0.0) is None


def test_without_pressure_the_guest_grows_back_to_its_ram():
    assert decide(GuestBalloon(640 * MIB, 500 * MIB, 10 * MIB), 0.5) == 525 * MIB
    assert decide(GuestBalloon(640 * MIB, 630 * MIB, 10 * MIB), 0.5) == 640 * MIB
    assert decide(GuestBalloon(640 * MIB, 640 * MIB, 10 * MIB), 0.5) is None  # already whole


def test_host_free_is_the_cgroups_when_it_has_a_limit():
    assert host_free_fraction(1000, 900, 10_000, 9_000) == 0.1
    assert host_free_fraction(1000, 1200, 10_000, 9_000) == 0.0
    assert host_free_fraction(None, 900, 10_000, 2_500) == 0.25
