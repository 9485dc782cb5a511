"""The MoM-like virtio-balloon rule of VM mode's ``virtio-balloon`` manager (pure; no I/O).

oVirt's Memory Overcommitment Manager (MoM) ships ``balloon.rules``: every interval, when the
host's free memory is under ``pressure_threshold`` of its total, each guest whose free memory
is above ``min_guest_free_percent`` of its current size is *shrunk* by at most
``max_balloon_change_percent`` of that size (never below keeping that minimum free); otherwise
every guest is *grown* back by the same step, up to its full RAM. Changes smaller than
``min_balloon_change_percent`` are not sent. This module is that rule, with two adaptations
(named in the constants below): the "host" is the experiment's memory cgroup (its limit is the
memory the guests are given; what is free is limit − usage), and the step is taken every 2 s
rather than MoM's 5 s default, because a cell lasts only 30–40 s.

"Guest free" is the guest's ``stat-free-memory`` as virtio-balloon reports it (MoM's
``mem_unused``), not ``stat-available-memory``: MoM leaves the guest's page cache alone.
"""

from __future__ import annotations

from dataclasses import dataclass

# MoM's defaults (balloon.rules), except where said
PRESSURE_THRESHOLD = 0.20       # MoM: 0.40 of a whole host; our "host" is a cgroup sized for the guests alone
MIN_GUEST_FREE_PERCENT = 0.20   # a guest keeps at least 20 % of its current size free
MAX_BALLOON_CHANGE_PERCENT = 0.05  # at most 5 % of the guest's current size per step
MIN_BALLOON_CHANGE_PERCENT = 0.0025  # smaller changes are not sent
INTERVAL_S = 2.0                # MoM: 5 s
STATS_INTERVAL_S = 1            # the guest's virtio-balloon statistics period (s)


@dataclass(frozen=True)
class GuestBalloon:
    """One guest as the rule sees it."""

    ram_bytes: int       # the guest's RAM (the balloon's maximum size: actual = RAM)
    actual_bytes: int    # what the balloon leaves the guest now (query-balloon)
    free_bytes: int | None  # stat-free-memory (None: no statistics yet)


def host_free_fraction(limit_bytes: int | None, usage_bytes: int, mem_total_bytes: int,
                       mem_available_bytes: int) -> float:
    """Free share of the "host": the cgroup's limit when it has one, else the machine's."""
    if limit_bytes:
        return max(0.0, (limit_bytes - usage_bytes) / limit_bytes)
    return mem_available_bytes / mem_total_bytes if mem_total_bytes else 1.0


def decide(g: GuestBalloon, host_free: float) -> int | None:
    """The balloon's new ``actual`` (guest RAM left to the guest), or None to leave it."""
    cur = g.actual_bytes
    if host_free < PRESSURE_THRESHOLD:
        if g.free_bytes is None or g.free_bytes <= MIN_GUEST_FREE_PERCENT * cur:
            return None
        floor = cur - g.free_bytes + int(MIN_GUEST_FREE_PERCENT * cur)  # keep that much free
        new = max(int(cur * (1 - MAX_BALLOON_CHANGE_PERCENT)), floor)
    else:
        new = min(int(cur * (1 + MAX_BALLOON_CHANGE_PERCENT)), g.ram_bytes)
    if abs(new - cur) < MIN_BALLOON_CHANGE_PERCENT * cur:
        return None
    return new


def settings() -> str:
    return (f"MoM balloon.rules every {INTERVAL_S:.0f} s: when the cgroup's free share < {PRESSURE_THRESHOLD:.0%}, "
            f"shrink each guest with stat-free-memory > {MIN_GUEST_FREE_PERCENT:.0%} of its size by "
            f"<= {MAX_BALLOON_CHANGE_PERCENT:.0%} (keeping {MIN_GUEST_FREE_PERCENT:.0%} free); otherwise grow by "
            f"{MAX_BALLOON_CHANGE_PERCENT:.0%} up to its RAM; changes < {MIN_BALLOON_CHANGE_PERCENT:.2%} not sent")
