"""The exec port's messages (``org.heapballoon.exec``): typed, validated where they cross.

Owns the wire format between the host's exec client (:mod:`heapballoon.vm.execclient`) and
the guest supervisor (:mod:`heapballoon.guest.supervisor`): newline-delimited JSON objects,
``"v": 1``. Every line is parsed into a frozen dataclass here, or rejected with
:class:`ExecProtocolError` (which keeps the request ``id`` when one could be read, so the
guest can answer with an :class:`ExecError` for that id)::

    host → guest  {"v":1,"type":"exec","id":N,"argv":[...],"timeout_s":60,"encoding":"text",
                   "stdin":"...","env":{...},"cwd":"/root"}          (stdin, env, cwd optional)
    host → guest  {"v":1,"type":"ping","id":N}
    guest → host  {"v":1,"type":"exec_result","id":N,"rc":0,"stdout":"...","stderr":"...",
                   "encoding":"text","elapsed_ms":12}   (+ "timed_out", "truncated" when true)
    guest → host  {"v":1,"type":"pong","id":N}
    guest → host  {"v":1,"type":"error","id":N|null,"error":"..."}

``encoding`` is ``text`` (UTF-8 with replacement characters) or ``base64`` (the output is
base64 of the raw bytes). Pure standard library: the guest imports this module too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

from heapballoon.errors import ProtocolError

VERSION = 1
ENCODINGS = ("text", "base64")
MAX_LINE_BYTES = 1 << 20
MAX_ARGS = 4096
MAX_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CWD = "/root"


class ExecProtocolError(ProtocolError):
    """A line that is not a valid exec-port message; ``id`` is its request id if readable."""

    def __init__(self, message: str, raw: bytes | str | None = None, id: int | None = None) -> None:
        super().__init__(message, raw)
        self.id = id


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class ExecRequest:
    id: int
    argv: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    encoding: str = "text"
    stdin: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = DEFAULT_CWD

    def __post_init__(self) -> None:
        if not self.argv or len(self.argv) > MAX_ARGS or not all(isinstance(a, str) for a in self.argv):
            raise ExecProtocolError("exec: argv must be a non-empty list of strings", id=self.id)
        if not _number(self.timeout_s) or not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ExecProtocolError(f"exec: timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]",
                                    id=self.id)
        if self.encoding not in ENCODINGS:
            raise ExecProtocolError(f"exec: encoding must be one of {', '.join(ENCODINGS)}", id=self.id)
        if self.stdin is not None and not isinstance(self.stdin, str):
            raise ExecProtocolError("exec: stdin must be a string", id=self.id)
        if not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in self.env):
            raise ExecProtocolError("exec: env must map names (no '=') to strings", id=self.id)
        if not isinstance(self.cwd, str) or not self.cwd.startswith("/"):
            raise ExecProtocolError("exec: cwd must be an absolute path", id=self.id)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"v": VERSION, "type": "exec", "id": self.id, "argv": list(self.argv),
                             "timeout_s": self.timeout_s, "encoding": self.encoding}
        if self.stdin is not None:
            d["stdin"] = self.stdin
        if self.env:
            d["env"] = dict(self.env)
        if self.cwd != DEFAULT_CWD:
            d["cwd"] = self.cwd
        return d


@dataclass(frozen=True)
class Ping:
    id: int

    def to_json(self) -> dict:
        return {"v": VERSION, "type": "ping", "id": self.id}


@dataclass(frozen=True)
class Pong:
    id: int

    def to_json(self) -> dict:
        return {"v": VERSION, "type": "pong", "id": self.id}


@dataclass(frozen=True)
class ExecResult:
    id: int
    rc: int
    stdout: str
    stderr: str
    encoding: str = "text"
    elapsed_ms: int = 0
    timed_out: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.rc) or not -255 <= self.rc <= 255:
            raise ExecProtocolError(f"exec_result: rc must be an exit code, not {self.rc!r}", id=self.id)
        if not isinstance(self.stdout, str) or not isinstance(self.stderr, str):
            raise ExecProtocolError("exec_result: stdout and stderr must be strings", id=self.id)
        if self.encoding not in ENCODINGS:
            raise ExecProtocolError(f"exec_result: encoding must be one of {', '.join(ENCODINGS)}", id=self.id)
        if not _is_int(self.elapsed_ms) or self.elapsed_ms < 0:
            raise ExecProtocolError("exec_result: elapsed_ms must be a count of milliseconds", id=self.id)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"v": VERSION, "type": "exec_result", "id": self.id, "rc": self.rc,
                             "stdout": self.stdout, "stderr": self.stderr, "encoding": self.encoding,
                             "elapsed_ms": self.elapsed_ms}
        if self.timed_out:
            d["timed_out"] = True
        if self.truncated:
            d["truncated"] = True
        return d


@dataclass(frozen=True)
class ExecError:
    id: int | None
    error: str = field(default="")

    def to_json(self) -> dict:
        return {"v": VERSION, "type": "error", "id": self.id, "error": self.error[:1000]}


Request = Union[ExecRequest, Ping]
Reply = Union[ExecResult, Pong, ExecError]


def encode(msg: Request | Reply) -> bytes:
    """One line (compact JSON and a newline)."""
    return json.dumps(msg.to_json(), separators=(",", ":")).encode() + b"\n"


def _object(line: bytes | str) -> dict:
    if len(line) > MAX_LINE_BYTES:
        raise ExecProtocolError(f"line of {len(line)} bytes is over the {MAX_LINE_BYTES}-byte limit")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise ExecProtocolError(f"bad request: {err}"[:200], line) from err
    if not isinstance(obj, dict):
        raise ExecProtocolError("bad request: not a JSON object", line)
    rid = obj.get("id")
    rid = rid if _is_int(rid) else None
    if obj.get("v") != VERSION:
        raise ExecProtocolError("unsupported protocol version", line, rid)
    if "id" in obj and obj["id"] is not None and rid is None:
        raise ExecProtocolError("id must be an integer", line)
    return obj


def _need_id(obj: dict, line) -> int:
    rid = obj.get("id")
    if not _is_int(rid):
        raise ExecProtocolError(f"{str(obj.get('type'))[:40]}: id must be an integer", line)
    return rid


def parse_request(line: bytes | str) -> Request:
    """What the guest received: an :class:`ExecRequest` or a :class:`Ping`."""
    obj = _object(line)
    kind = obj.get("type")
    if kind == "ping":
        return Ping(_need_id(obj, line))
    if kind != "exec":
        raise ExecProtocolError(f"unknown type {str(kind)[:40]!r}", line, obj.get("id"))
    rid = _need_id(obj, line)
    argv, env = obj.get("argv"), obj.get("env", {})
    if not isinstance(argv, list):
        raise ExecProtocolError("exec: argv must be a non-empty list of strings", line, rid)
    if not isinstance(env, dict):
        raise ExecProtocolError("exec: env must be an object", line, rid)
    try:
        return ExecRequest(id=rid, argv=tuple(argv), timeout_s=obj.get("timeout_s", DEFAULT_TIMEOUT_S),
                           encoding=obj.get("encoding", "text"), stdin=obj.get("stdin"),
                           env=tuple(sorted(env.items())), cwd=obj.get("cwd", DEFAULT_CWD))
    except ExecProtocolError as err:
        raise ExecProtocolError(str(err), line, rid) from err


def parse_reply(line: bytes | str) -> Reply:
    """What the host received: an :class:`ExecResult`, a :class:`Pong` or an :class:`ExecError`."""
    obj = _object(line)
    kind = obj.get("type")
    if kind == "error":
        err = obj.get("error")
        if not isinstance(err, str):
            raise ExecProtocolError("error: error must be a string", line, obj.get("id"))
        return ExecError(obj.get("id"), err)
    rid = _need_id(obj, line)
    if kind == "pong":
        return Pong(rid)
    if kind != "exec_result":
        raise ExecProtocolError(f"unknown type {str(kind)[:40]!r}", line, rid)
    try:
        return ExecResult(id=rid, rc=obj.get("rc"), stdout=obj.get("stdout", ""), stderr=obj.get("stderr", ""),
                          encoding=obj.get("encoding", "text"), elapsed_ms=obj.get("elapsed_ms", 0),
                          timed_out=obj.get("timed_out") is True, truncated=obj.get("truncated") is True)
    except ExecProtocolError as err:
        raise ExecProtocolError(str(err), line, rid) from err
