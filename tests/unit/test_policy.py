from hypothesis import given, strategies as st

from heapballoon.driver import policy

MIB = 1 << 20


def test_excess_subtracts_live_and_headroom():
    # 1 GiB committed, 200 MiB live, headroom max(64 MiB, 5%) = 64 MiB
    assert policy.excess_bytes(1024 * MIB, 200 * MIB, 1024 * MIB) == 760 * MIB
    assert policy.excess_bytes(100 * MIB, 90 * MIB, 1024 * MIB) == 0


def test_split_is_proportional_to_excess():
    shares = policy.split_target(300 * MIB, {1: 100 * MIB, 2: 200 * MIB, 3: 300 * MIB})
    assert shares == {1: 50 * MIB, 2: 100 * MIB, 3: 150 * MIB}


def test_split_caps_at_excess_and_hands_rest_on():
    shares = policy.split_target(5000 * MIB, {1: 10 * MIB, 2: 1000 * MIB})
    assert shares == {1: 10 * MIB, 2: 1000 * MIB}


def test_explicit_target_overrides_split():
    t = policy.effective_targets(600, {1: None, 2: 500}, {1: 300, 2: 100, 3: 300})
    assert t[2] == 500 and t[1] + t[3] == 100


def test_no_node_target_means_zero_for_unpinned():
    assert policy.effective_targets(None, {1: None, 2: 7}, {1: 50, 2: 50}) == {1: 0, 2: 7}


@given(st.integers(0, 1 << 40), st.dictionaries(st.integers(1, 50), st.integers(0, 1 << 36), max_size=8))
def test_split_invariants(target, excess):
    shares = policy.split_target(target, excess)
    assert set(shares) == set(excess)
    assert all(0 <= shares[p] <= excess[p] for p in excess)
    assert sum(shares.values()) == min(target, sum(excess.values()))


def test_node_target_beyond_excess_uses_room_up_to_max_heap():
    # excess 100 each, room (max-based) 300 each: 400 = 100+100 by excess, then 100+100 by room
    t = policy.effective_targets(400, {1: None, 2: None}, {1: 100, 2: 100}, {1: 300, 2: 300})
    assert t == {1: 200, 2: 200}
    # never beyond room
    t = policy.effective_targets(10_000, {1: None}, {1: 100}, {1: 300})
    assert t == {1: 300}


def test_headroom_is_at_most_an_eighth_of_a_small_heap():
    assert policy.headroom_bytes(128 * MIB) == 16 * MIB  # 64 MiB would leave Serial's old gen no room
    assert policy.headroom_bytes(512 * MIB) == 64 * MIB
    assert policy.headroom_bytes(1024 * MIB) == 64 * MIB
    assert policy.headroom_bytes(4096 * MIB) == int(4096 * MIB * 0.05)


def test_a_node_target_is_handed_out_in_whole_chunks():
    # 2 GiB over 100 JVMs: 20.48 MiB each would hold 16 MiB (two 8 MiB chunks), 1.6 GiB in all.
    excess = {pid: 40 * MIB for pid in range(100)}
    t = policy.effective_targets(2048 * MIB, {pid: None for pid in excess}, excess)
    assert sum(t.values()) == 2048 * MIB
    assert sum(v // (8 * MIB) * 8 * MIB for v in t.values()) == 2048 * MIB  # what whole chunks hold
    assert all(v <= 40 * MIB for v in t.values())


@given(st.dictionaries(st.integers(1, 50), st.integers(0, 200), min_size=1),
       st.integers(0, 4000))
def test_whole_chunks_conserve_bytes_and_respect_caps(caps_mib, target_mib):
    caps = {pid: c * MIB for pid, c in caps_mib.items()}
    shares = policy.split_target(target_mib * MIB, caps)
    out = policy.whole_chunks(shares, caps)
    assert sum(out.values()) == sum(shares.values())
    assert all(out[pid] <= caps[pid] for pid in caps)
