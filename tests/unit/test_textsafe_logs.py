"""heapballoon.textsafe: peer strings in logs are one line, bounded, with no raw control characters."""

from hypothesis import given
from hypothesis import strategies as st

from heapballoon.textsafe import display_text, log_text


def test_log_text_escapes_newlines_and_escapes_and_cuts():
    assert log_text("a\nb\r\x1b[2J\u202e") == "a\\nb\\r\\x1b[2J\\u202e"
    assert log_text("x" * 50, max_len=10) == "x" * 10 + "…(+40 chars)"
    assert log_text(None) == ""


@given(st.text(max_size=300))
def test_log_text_is_one_printable_line(s):
    out = log_text(s, max_len=100)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\x85" not in out
    assert len(out) <= 100 * 10 + 20  # the longest escape is \U0010ffff


@given(st.text(max_size=100))
def test_display_text_renders_as_itself_without_controls(s):
    from rich.console import Console
    from rich.text import Text

    out = display_text(s)
    assert not any(c in out for c in "\x1b\n\r\x07\x9b")
    Text.from_markup(out)  # never a MarkupError
    console = Console(width=1000, color_system=None, record=True, file=open("/dev/null", "w"))
    console.print(out, end="", soft_wrap=True, emoji=False)
    assert console.export_text() == "".join("?" if ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029"
                                            or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069 else c
                                            for c in s)


def test_display_text_of_a_trailing_backslash_shows_one_backslash():
    """Found by hypothesis in a helper's run: '\\' rendered as two backslashes."""
    from rich.text import Text

    for s in ("\\", "a\\", "[b]\\", "\\\\"):
        assert Text.from_markup(display_text(s)).plain == s
