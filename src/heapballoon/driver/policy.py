"""Target policy: how much each JVM's balloon should hold. Pure functions, no I/O.

A JVM's *excess* is heap it holds but does not need::

    excess = committed − live − headroom          (never below 0)

``live`` is the application's data right after the last GC (the agent subtracts its own
balloon), ``headroom`` the slack the application keeps for allocation between collections:
the agent's own figure (``state.headroom_bytes``, which follows the allocation rate and what the
JVM taught it, Headroom.java), and only when an agent does not report one (older than
issue 15) the static :func:`headroom_bytes`.
A node target (``heapballoon target all SIZE``) is split among JVMs in proportion to their
excess — the JVM with the most idle heap gives the most — and no JVM is asked for more than
its excess; what a capped JVM cannot give is handed on to the others (water-filling). A
per-JVM target (``heapballoon target PID SIZE``) overrides the split for that JVM and is not
capped here: the agent itself never inflates past its headroom.
"""

from __future__ import annotations

from collections.abc import Mapping

MIB = 1 << 20
MIN_HEADROOM_BYTES = 64 * MIB
HEADROOM_FRACTION = 0.05
SMALL_HEAP_HEADROOM_FRACTION = 1 / 8
CHUNK_BYTES = 8 * MIB  # the agent's nominal balloon chunk (ChunkGeometry.NOMINAL_CHUNK_BYTES)


def headroom_bytes(heap_max_bytes: int) -> int:
    """Static slack for a heap whose agent does not report its headroom: 5 % of its maximum, at
    least 64 MiB, but never more than an eighth of a small heap (a 128 MiB heap keeps 16 MiB:
    64 MiB there left no room for any balloon in Serial's old generation). The agent's
    H_base default is the same (Headroom.baseBytes); its H adds what the allocation rate needs."""
    floor = min(MIN_HEADROOM_BYTES, int(heap_max_bytes * SMALL_HEAP_HEADROOM_FRACTION))
    return max(floor, int(heap_max_bytes * HEADROOM_FRACTION))


def agent_headroom_bytes(heap_max_bytes: int, reported_bytes: int = 0) -> int:
    """The headroom the agent keeps: what it reported (``state.headroom_bytes``), or, when it
    reported none (0: an older agent), the static :func:`headroom_bytes`."""
    return reported_bytes if reported_bytes > 0 else headroom_bytes(heap_max_bytes)


def excess_bytes(heap_committed_bytes: int, live_bytes: int, heap_max_bytes: int,
                 reported_headroom_bytes: int = 0) -> int:
    headroom = agent_headroom_bytes(heap_max_bytes, reported_headroom_bytes)
    return max(0, heap_committed_bytes - live_bytes - headroom)


def split_target(node_target_bytes: int, excess_by_pid: Mapping[int, int]) -> dict[int, int]:
    """Split ``node_target_bytes`` among pids in proportion to excess, capped at each excess.

    Water-filling: give each uncapped JVM its proportional share; JVMs whose share exceeds
    their excess are capped and the remainder is split again among the rest. Whatever no
    JVM can give stays unassigned (the node target is then not fully met, and status says
    so).
    """
    shares = {pid: 0 for pid in excess_by_pid}
    remaining = max(0, node_target_bytes)
    open_pids = {pid for pid, excess in excess_by_pid.items() if excess > 0}
    while remaining > 0 and open_pids:
        total_excess = sum(excess_by_pid[pid] for pid in open_pids)
        handed = 0
        for pid in sorted(open_pids):
            room = excess_by_pid[pid] - shares[pid]
            give = min(room, remaining * excess_by_pid[pid] // total_excess)
            shares[pid] += give
            handed += give
        if handed == 0:  # less than one byte per JVM left: the roomiest JVM takes it
            pid = max(open_pids, key=lambda p: excess_by_pid[p] - shares[p])
            handed = min(remaining, excess_by_pid[pid] - shares[pid])
            shares[pid] += handed
        remaining -= handed
        open_pids = {pid for pid in open_pids if shares[pid] < excess_by_pid[pid]}
    return shares


def room_bytes(heap_max_bytes: int, live_bytes: int, reported_headroom_bytes: int = 0) -> int:
    """The most a balloon can hold if the heap grows to its maximum: max − live − headroom."""
    return max(0, heap_max_bytes - live_bytes - agent_headroom_bytes(heap_max_bytes, reported_headroom_bytes))


def effective_targets(node_target_bytes: int | None, explicit: Mapping[int, int | None],
                      excess_by_pid: Mapping[int, int],
                      room_by_pid: Mapping[int, int] | None = None) -> dict[int, int]:
    """Each JVM's target: its explicit one if set, else its share of the node target.

    The node target is split by excess first (idle committed heap, the cheapest to give).
    What excess cannot cover is split by the room left up to each heap's maximum: the heap
    grows to hold the balloon, and the machine gets those pages back all the same.
    """
    out = {pid: t for pid, t in explicit.items() if t is not None and pid in excess_by_pid}
    rest = {pid: e for pid, e in excess_by_pid.items() if pid not in out}
    if node_target_bytes:
        wanted = max(0, node_target_bytes - sum(out.values()))
        shares = split_target(wanted, rest)
        left = wanted - sum(shares.values())
        if left > 0 and room_by_pid:
            extra = split_target(left, {pid: max(0, room_by_pid.get(pid, 0) - shares[pid]) for pid in rest})
            shares = {pid: shares[pid] + extra[pid] for pid in shares}
        caps = {pid: max(rest[pid], (room_by_pid or {}).get(pid, 0), shares[pid]) for pid in rest}
        out.update(whole_chunks(shares, caps))
    else:
        out.update({pid: 0 for pid in rest})
    return out


def whole_chunks(shares: Mapping[int, int], caps: Mapping[int, int], chunk_bytes: int = CHUNK_BYTES) -> dict[int, int]:
    """Shares moved to whole balloon chunks, their sum unchanged (largest remainder first).

    An agent holds whole chunks (about 8 MiB each) up to its target, so a share of 20 MiB holds
    16. Split 2 GiB among 100 JVMs and the node got 1.6 GiB. Here each share is rounded down to
    whole chunks and the chunks that frees go, one each, to the JVMs with the largest remainder
    (and room under their cap); the last part of a chunk goes to the next such JVM.
    """
    total = sum(shares.values())
    if total < chunk_bytes:
        return dict(shares)
    out = {pid: share // chunk_bytes * chunk_bytes for pid, share in shares.items()}
    by_remainder = sorted(shares, key=lambda pid: (shares[pid] - out[pid], caps[pid] - out[pid]), reverse=True)
    left = total - sum(out.values())
    for pid in by_remainder:
        if left <= 0:
            break
        give = min(chunk_bytes, left, max(0, caps[pid] - out[pid]))
        out[pid] += give
        left -= give
    return out
