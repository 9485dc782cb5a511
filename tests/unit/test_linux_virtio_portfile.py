"""The one virtio-serial line reader (linux/virtio.PortFile), on a FIFO standing in for a port.

A FIFO opened read-write never reads EOF, as a port with its host connected; what the host
writes is fed through a second descriptor. Reads happen in a thread with a bounded wait.
"""

from __future__ import annotations

import os
import queue
import threading

import pytest

from hypothesis import given
from hypothesis import strategies as st

from heapballoon.linux.virtio import LineSplitter, PortFile


@pytest.fixture
def port(tmp_path):
    path = str(tmp_path / "vport1p1")
    os.mkfifo(path)
    p = PortFile(path, max_line_bytes=64)
    host = os.open(path, os.O_WRONLY)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.lines()], daemon=True).start()
    yield p, host, lines
    os.close(host)


def take(lines: queue.Queue, n: int, timeout_s: float = 5.0) -> list:
    return [lines.get(timeout=timeout_s) for _ in range(n)]


def test_lines_split_across_writes_come_whole(port):
    _, host, lines = port
    os.write(host, b"one\ntw")
    os.write(host, b"o\nthree\n")
    assert take(lines, 3) == [b"one", b"two", b"three"]


def test_an_over_long_line_is_reported_once_and_the_next_one_survives(port):
    _, host, lines = port
    os.write(host, b"x" * 100)  # no newline yet: over the limit already
    os.write(host, b"y" * 100 + b"\nafter\n")
    os.write(host, b"z" * 80 + b"\nlast\n")  # over the limit, newline in the same write
    assert take(lines, 4) == [None, b"after", None, b"last"]


def test_writes_arrive_whole(tmp_path):
    path = str(tmp_path / "vport1p2")
    os.mkfifo(path)
    p = PortFile(path, max_line_bytes=64)  # nobody reads through it: the host end gets it all
    host = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        p.write_all(b"hello\n")
        assert os.read(host, 100) == b"hello\n"
    finally:
        os.close(host)
        p.close()


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_any_chunking_gives_the_lines_and_one_none_per_over_long_line(lines, cuts):
    """The reader's splitter (pure): however the bytes arrive, each line ≤ the limit comes out
    whole and each longer one exactly once as None."""
    stream = b"".join(line + b"\n" for line in lines)
    splitter, out, i, k = LineSplitter(max_line_bytes=16), [], 0, 0
    while i < len(stream):
        size = cuts[k % len(cuts)]
        out += splitter.feed(stream[i:i + size])
        i, k = i + size, k + 1
    assert out == [line if len(line) <= 16 else None for line in lines]


def test_reset_drops_a_partial_line():
    splitter = LineSplitter(max_line_bytes=16)
    assert splitter.feed(b"half a li") == []
    splitter.reset()  # the host went away mid-line
    assert splitter.feed(b"ne\nwhole\n") == [b"ne", b"whole"]
