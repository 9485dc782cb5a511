"""What hostd allows one guest (host/guestlimits.py; issue 14, rows 8 and 13), on a fake clock,
and the log-text helper every daemon uses for a peer's strings (textsafe.py)."""

from __future__ import annotations

import logging

from hypothesis import given, strategies as st

from heapballoon.host.guestlimits import LOG_REPEAT_S, GuestGuard, TokenBucket
from heapballoon.transport import BAD_LINES_WINDOW_S, MAX_BAD_LINES
from heapballoon.textsafe import log_text


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 5000)), max_size=60))
def test_work_done_never_outruns_the_bucket(steps):
    """Doing each charge's work only after waiting what charge() says: by any time t, the
    work started is at most burst + rate * t."""
    clock = Clock()
    bucket = TokenBucket(1000, 2000, clock)
    start, done = clock.t, 0
    for gap_s, units in steps:
        clock.t += gap_s
        clock.t += bucket.charge(units)  # wait, then do the work
        done += units
        assert done <= 2000 + 1000 * (clock.t - start) + 1e-6


def test_bad_lines_count_in_a_window_and_valid_lines_do_not_reset_it():
    clock = Clock()
    g = GuestGuard("vm", clock)
    assert not any(g.bad_line() for _ in range(MAX_BAD_LINES - 1))
    clock.t += BAD_LINES_WINDOW_S + 1  # the old ones age out
    assert not any(g.bad_line() for _ in range(MAX_BAD_LINES - 1))
    clock.t += 1
    assert g.bad_line()  # the 16th within a minute, whatever came between


def test_a_guest_fault_is_logged_once_then_counted(caplog):
    caplog.set_level(logging.INFO, logger="heapballoon")
    clock = Clock()
    g = GuestGuard("vm", clock)
    for _ in range(100):
        g.note("bad_line", "bad guest message: %s", "x")
    g.note("other", "something else")
    clock.t += LOG_REPEAT_S
    g.note("bad_line", "bad guest message: %s", "y")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["VM vm: bad guest message: x", "VM vm: something else",
                    "VM vm: bad guest message: y (99 more not logged since)"]


def test_log_text_makes_one_printable_line():
    assert log_text("boot\nVM good: fake\x1b[31m") == "boot\\nVM good: fake\\x1b[31m"
    assert log_text("a\\nb") == "a\\\\nb"  # a backslash of the guest's own is doubled: never ambiguous
    assert log_text("é\u2028") == "é\\u2028" and log_text(b"\xff\n") == "\\\\xff\\n"
    assert log_text("x" * 300) == "x" * 200 + "…(+100 chars)" and log_text(7) == "7"


@given(st.text())
def test_log_text_never_lets_a_line_break_or_escape_through(s):
    out = log_text(s)
    assert out.isprintable() and "\x1b" not in out
