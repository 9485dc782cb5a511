"""Peer strings made safe to show: names are text, never markup or terminal escapes.

Any string a peer chose (a JVM's name from an agent's ``hello``, a VM or JVM name from a guest's
``guest_status``, an error or reason text) goes through one of these before it reaches a log
line or a terminal:

* :func:`log_text` for logs: control characters (newlines included, so a peer cannot fake a
  log line) become visible escapes (``\\n``, ``\\x1b``), and the text is cut to ``max_len``.
* :func:`display_text` for tables rendered with rich markup: control characters are replaced
  by ``?`` (no escape sequence reaches the operator's terminal) and rich markup is escaped
  (``"[/x]"`` shows as ``[/x]`` instead of crashing the renderer).

Pure standard library (the guest driver runs on Python 3.9 without PyPI packages).
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidirectional
# overrides/isolates (they reorder what a terminal shows).
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What rich reads as a tag, exactly as rich.markup.escape finds it.
_MARKUP = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    ch = m.group(0)
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_text(s: object, max_len: int = 200) -> str:
    """``s`` as one safe log token: control characters escaped, at most ``max_len`` characters
    of the original kept (then ``...(+N)`` says how many were cut)."""
    text = "" if s is None else str(s)
    cut = len(text) - max_len
    if cut > 0:
        text = text[:max_len]
    out = CONTROL_CHARS.sub(_escape, text)
    return f"{out}...(+{cut})" if cut > 0 else out


def display_text(s: object) -> str:
    """``s`` for a rich table cell or title: control characters replaced by ``?``, markup
    escaped so rich shows it literally."""
    text = CONTROL_CHARS.sub("?", "" if s is None else str(s))
    text = _MARKUP.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)
    if text.endswith("\\") and not text.endswith("\\\\"):
        text += "\\"  # a lone trailing backslash would escape what rich puts after it
    return text
