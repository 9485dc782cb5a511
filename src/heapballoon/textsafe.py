"""Peer strings made safe to show: names are text, never markup or terminal escapes.

Any string a peer chose (a JVM's name from an agent's ``hello``, a VM or JVM name from a guest's
``guest_status``, a key, a boot id, a bad line, an error or reason text) goes through one of
these before it reaches a log line or a terminal:

* :func:`log_text` for logs: every non-printable character (newlines included, so a peer cannot
  fake a log line; escape sequences; bidirectional overrides) becomes a visible escape
  (``\\n``, ``\\x1b``, ``\\u202e``), a backslash of the peer's own is doubled so an escape in
  the output is never ambiguous, and the text is cut to ``max_len`` characters.
* :func:`display_text` for tables rendered with rich markup: control characters are replaced
  by ``?`` (no escape sequence reaches the operator's terminal) and rich markup is escaped
  (``"[/x]"`` shows as ``[/x]`` instead of crashing the renderer).

Pure standard library (the guest driver runs on Python 3.9 without PyPI packages).
"""

from __future__ import annotations

import re

MAX_LOG_CHARS = 200
# C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidirectional
# overrides/isolates (they reorder what a terminal shows).
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A run of backslashes before "[", and the tag that "[" may open (as rich.markup.escape finds
# tags). Before a tag rich halves the run and an odd one escapes the tag (rich.markup.escape's
# rule); before any other "[", rich 15 takes the last backslash as an escape and shows the rest,
# so one more backslash keeps the run whole.
_MARKUP = re.compile(r"(\\*)(\[(?:[a-z#/@][^[]*?])?)")


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    return repr(ch)[1:-1]  # \n, \r, \t, \x1b, \u2028, ...


def log_text(value: object, max_len: int = MAX_LOG_CHARS) -> str:
    """``value`` as one printable log token: non-printable characters escaped, a backslash
    doubled, at most ``max_len`` characters of the original kept (the rest counted:
    ``…(+N chars)``). Bytes are decoded as UTF-8, undecodable bytes escaped."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    cut = len(text) - max_len
    if cut > 0:
        text = text[:max_len]
    out = "".join(_escape_char(ch) for ch in text)
    return f"{out}…(+{cut} chars)" if cut > 0 else out


def display_text(s: object) -> str:
    """``s`` for a rich table cell, or the end of a title: control characters replaced by
    ``?``, markup escaped so rich shows it literally. The result must *end* the markup string
    it goes into (a trailing backslash is left as it is, so it shows as itself; followed by a
    tag of ours, it would escape that tag)."""
    text = CONTROL_CHARS.sub("?", "" if s is None else str(s))
    def escaped(m: re.Match) -> str:
        run, opened = m.group(1), m.group(2)
        if len(opened) > 1:  # a tag
            return f"{run}{run}\\{opened}"
        return f"{run}\\{opened}" if run else opened

    return _MARKUP.sub(escaped, text)
