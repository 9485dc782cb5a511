"""GuestLayout: QEMU memory trees captured from real q35/pc guests (tests/unit/test_host_data)."""

from __future__ import annotations

import os

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.qemu.layout import GuestLayout, RamRange, parse_mtree_flat, parse_mtree_tree

DATA = os.path.join(os.path.dirname(__file__), "test_host_data")
G = 1 << 30
P = 4096


def layout(name: str, ram_bytes: int | None = None) -> GuestLayout:
    with open(os.path.join(DATA, name)) as f:
        return GuestLayout.from_mtree(f.read(), ram_bytes=ram_bytes)


def test_q35_1g_is_all_below_4g_minus_legacy_window():
    lay = layout("mtree-q35-1G-f.txt", G)
    assert lay.ranges == [RamRange(0, 0xA0000, 0), RamRange(0x100000, G - 0x100000, 0x100000)]
    assert lay.offset_of(0) == 0
    assert lay.offset_of(0x9F) == 0x9F000
    assert lay.offset_of(0xA0) is None and lay.offset_of(0xFF) is None  # VGA/ROM window
    assert lay.offset_of(0x100) == 0x100000
    assert lay.offset_of(G // P - 1) == G - P
    assert lay.offset_of(G // P) is None


@pytest.mark.parametrize("name, above_bytes", [("mtree-q35-3G-f.txt", G), ("mtree-q35-5G-f.txt", 3 * G),
                                               ("mtree-q35-5G.txt", 3 * G)])
def test_q35_splits_at_2g(name, above_bytes):
    lay = layout(name, 2 * G + above_bytes)
    assert lay.ranges[-1] == RamRange(4 * G, above_bytes, 2 * G)
    assert lay.offset_of((2 * G) // P - 1) == 2 * G - P
    assert lay.offset_of((2 * G) // P) is None  # the PCI hole
    assert lay.offset_of((4 * G) // P - 1) is None
    assert lay.offset_of((4 * G) // P) == 2 * G
    assert lay.offset_of((4 * G + above_bytes) // P - 1) == 2 * G + above_bytes - P
    assert lay.offset_of((4 * G + above_bytes) // P) is None


def test_pc_5g_splits_at_3g_after_firmware_and_vga():
    lay = layout("mtree-pc-5G-vga-booted-f.txt", 5 * G)
    assert lay.offset_of((3 * G) // P - 1) == 3 * G - P
    assert lay.offset_of((3 * G) // P) is None
    assert lay.offset_of((4 * G) // P) == 3 * G
    # PAM made 0xc0000-0xfffff RAM/ROM of ram0 after the BIOS ran; we still never use it
    assert lay.offset_of(0xC0) is None and lay.offset_of(0xCB) is None and lay.offset_of(0xA0) is None


def test_flat_and_tree_agree_on_5g():
    with open(os.path.join(DATA, "mtree-q35-5G-f.txt")) as f:
        flat = GuestLayout(parse_mtree_flat(f.read()))
    with open(os.path.join(DATA, "mtree-q35-5G.txt")) as f:
        tree = GuestLayout(parse_mtree_tree(f.read()))
    assert flat.ranges == tree.ranges


def test_ranges_to_offsets_merges_across_split_and_rejects():
    lay = layout("mtree-q35-3G-f.txt", 3 * G)
    below_end = (2 * G) // P
    above = (4 * G) // P
    offsets, rejected = lay.ranges_to_offsets([(below_end - 2, 4), (above, 2)])
    # the last 2 pages below 2G, the 2 pages of the hole rejected, the first 2 above 4G: one
    # contiguous memfd run since ram-above-4g continues at offset 2G
    assert offsets == [(2 * G - 2 * P, 4 * P)]
    assert rejected == 2


def test_ranges_to_offsets_duplicates_and_huge_ranges_count_once():
    lay = layout("mtree-q35-1G-f.txt", G)
    offsets, rejected = lay.ranges_to_offsets([(0x200, 10), (0x205, 10), (0x200, 1)])
    assert offsets == [(0x200 * P, 15 * P)]
    assert rejected == 21 - 15
    offsets, rejected = lay.ranges_to_offsets([(0, 1 << 51), (1 << 40, 5)])
    assert sum(n for _, n in offsets) == lay.ram_pages * P
    assert rejected == (1 << 51) + 5 - lay.ram_pages
    assert lay.ranges_to_offsets([]) == ([], 0)


def test_layout_outside_ram_backend_is_refused():
    with pytest.raises(ReclaimError):
        layout("mtree-q35-5G-f.txt", 3 * G)  # claims 5 GiB of ram0 in a 3 GiB file
    with pytest.raises(ReclaimError):
        GuestLayout.from_mtree("garbage\n", ram_bytes=G)
    with pytest.raises(ReclaimError):
        GuestLayout([RamRange(0x100000, G, 0), RamRange(0x200000, G, 0)])


def test_unaligned_ranges_shrink_to_whole_pages():
    lay = GuestLayout([RamRange(0x100800, 0x3000, 0x800)])
    assert lay.ranges == [RamRange(0x101000, 0x2000, 0x1000)]
