"""Text from peers, made safe to log: one pure helper, :func:`log_text`.

A guest, an agent or a CLI client chooses the strings it sends (names, keys, boot ids, bad
lines). Written into a log as they are, a newline fakes a log line of its own and an escape
sequence reaches the operator's terminal. :func:`log_text` keeps printable characters, escapes
everything else (and the backslash itself, so an escape in the output is never ambiguous) and
caps the length.
"""

from __future__ import annotations

MAX_LOG_CHARS = 200


def log_text(value: object, max_chars: int = MAX_LOG_CHARS) -> str:
    """``value`` as one printable line: control and other non-printable characters escaped
    (``\\n``, ``\\x1b``, ``\\u2028``), a backslash doubled, at most ``max_chars`` characters
    of the original kept (the rest counted: ``…(+N chars)``). Bytes are decoded as UTF-8 with
    undecodable bytes escaped."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    extra = len(text) - max_chars
    if extra > 0:
        text = text[:max_chars]
    out = "".join(ch if ch.isprintable() and ch != "\\" else ("\\\\" if ch == "\\" else repr(ch)[1:-1])
                  for ch in text)
    return f"{out}…(+{extra} chars)" if extra > 0 else out
