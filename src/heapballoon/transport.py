"""Transport of protocol v1 over Unix stream sockets: framing, size limits and the CLI client.

This module owns bytes on sockets, nothing about what messages mean:

* :class:`LineChannel` wraps an asyncio stream pair: ``recv()`` returns the next message,
  decoded by the channel's own ``decode`` (``protocol.agent.decode``, ``protocol.control.decode``
  or ``protocol.guest.decode``; ``None`` at EOF), raising :class:`MessageTooLarge` for an over-long line and
  :class:`ProtocolError` for a bad one; ``send()`` writes one message and waits at most
  ``timeout_s`` (:data:`SEND_TIMEOUT_S`) for it to drain, else aborts the connection and raises
  :class:`PeerStalled`: a peer that stops reading is dropped, never waited on.
* :func:`request` is the synchronous one-shot client the CLI uses: connect, send one control
  request, return the reply or raise :class:`DaemonUnavailable` / :class:`RemoteError`.
* :class:`BadLines`: the one bad-line counter every socket uses (agents and CLI clients on the
  driver's socket, hostd's control socket, each guest channel): the ``MAX_BAD_LINES``-th bad
  line within ``BAD_LINES_WINDOW_S`` drops the peer; valid lines in between do not reset it.
* :func:`socket_path` resolves ``--socket`` / ``HEAPBALLOON_SOCKET`` / the default.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
import time
from typing import Callable

from heapballoon import protocol
from heapballoon.errors import DaemonUnavailable, MessageTooLarge, PeerStalled, ProtocolError, RemoteError
from heapballoon.linux import safefs

DEFAULT_SOCKET = "/run/heapballoon/heapballoon.sock"
DEFAULT_HOST_SOCKET = "/run/heapballoon/hostd.sock"
STREAM_LIMIT = protocol.MAX_LINE_BYTES + 1
# How long one send may wait for a peer to read (docs/protocol.md, "Limits"). Every peer is a
# local process or a guest on this host: a healthy one drains a 1 MiB line in milliseconds, so
# 2 s only ever fires on a peer that stopped reading, and bounds how long it can hold its sender.
SEND_TIMEOUT_S = 2.0
MAX_BAD_LINES = 16  # this many bad lines within BAD_LINES_WINDOW_S drop a peer (docs/protocol.md)
BAD_LINES_WINDOW_S = 60.0


def socket_path(cli_value: str | None = None) -> str:
    return cli_value or os.environ.get("HEAPBALLOON_SOCKET") or DEFAULT_SOCKET


def host_socket_path(cli_value: str | None = None) -> str:
    return cli_value or os.environ.get("HEAPBALLOON_HOST_SOCKET") or DEFAULT_HOST_SOCKET


def peer_pid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's pid from SO_PEERCRED (trusted, unlike what a peer claims)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None


class BadLines:
    """One peer's bad lines in the last ``window_s``: :meth:`add` says when the window holds
    ``limit`` of them (then the peer is dropped). Valid lines in between do not reset the count.
    ``total`` counts every bad line, for the one log line that says how many."""

    def __init__(self, clock=time.monotonic, limit: int = MAX_BAD_LINES, window_s: float = BAD_LINES_WINDOW_S) -> None:
        self.clock = clock
        self.limit = limit
        self.window_s = window_s
        self.times: collections.deque[float] = collections.deque()
        self.total = 0

    def add(self) -> bool:
        """Count one bad line; True when the window now holds ``limit`` of them."""
        now = self.clock()
        self.times.append(now)
        self.total += 1
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()
        return len(self.times) >= self.limit


class LineChannel:
    """One NDJSON connection: messages in, decoded by ``decode`` (its channel's; a session may
    switch it once it knows which channel it is), encoded messages out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 decode: Callable[[bytes], protocol.Message]) -> None:
        self.reader = reader
        self.writer = writer
        self.decode = decode
        # An idle agent's heartbeat is the same line every second: decoding is pure and
        # messages are frozen, so a repeated line yields the message decoded last time.
        self._last_line = b""
        self._last_msg: protocol.Message | None = None

    def switch(self, decode: Callable[[bytes], protocol.Message]) -> None:
        """Decode from now on with ``decode`` (a session that has learnt its channel)."""
        self.decode = decode
        self._last_line, self._last_msg = b"", None

    async def recv_line(self) -> bytes | None:
        """Next raw line without its newline; None at EOF; MessageTooLarge if over the limit."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            return err.partial.rstrip(b"\n") or None
        except asyncio.LimitOverrunError as err:
            raise MessageTooLarge(f"line longer than {protocol.MAX_LINE_BYTES} bytes") from err
        return line.rstrip(b"\n")

    async def recv(self) -> protocol.Message | None:
        while True:
            line = await self.recv_line()
            if line is None:
                return None
            if line == self._last_line and self._last_msg is not None:
                return self._last_msg
            if line.strip():
                msg = self.decode(line)
                self._last_line, self._last_msg = line, msg
                return msg

    async def send(self, msg: protocol.Message, timeout_s: float = SEND_TIMEOUT_S) -> None:
        """Write one message; PeerStalled (connection aborted) if it does not drain in time."""
        data = protocol.encode(msg)
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), timeout_s)
        except asyncio.TimeoutError as err:
            self.abort()
            raise PeerStalled(f"peer did not read a {msg.TYPE!r} message within {timeout_s:g} s; dropped",
                              data[:200]) from err

    def abort(self) -> None:
        """Drop the connection now, discarding what is buffered (a stalled peer gets nothing more)."""
        try:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001 - aborting a dead transport must never raise
            pass

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a dead transport must never raise
            pass


async def listen(path: str, handler, mode: int = 0o600) -> asyncio.AbstractServer:
    """Start a Unix-socket server at ``path`` (stale socket replaced, parent dir created).

    Through :func:`heapballoon.linux.safefs.bind_unix`: as root the parent directory must be
    owned by root and not group/other-writable (else UnsafePath, one line); nothing at ``path``
    is followed, and the mode is set before ``bind``, never by a chmod of the path after."""
    sock = safefs.bind_unix(path, mode)
    try:
        return await asyncio.start_unix_server(handler, sock=sock, limit=STREAM_LIMIT)
    except BaseException:
        sock.close()
        raise


DRIVER_START_HINT = "start one with `heapballoon daemon`"
HOSTD_START_HINT = "VM mode: start hostd with `heapballoon hostd`"


def request(path: str, msg: protocol.Message, timeout_s: float = 10.0,
            start_hint: str = DRIVER_START_HINT) -> protocol.Reply:
    """Send one control request and return the reply (synchronous, for the CLI).

    ``start_hint`` is how a user starts the daemon that should listen on ``path`` (the driver
    by default, :data:`HOSTD_START_HINT` for hostd): it ends the error when nothing listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        raise DaemonUnavailable(f"no daemon is listening on {path} ({start_hint})") from err
    except PermissionError as err:
        sock.close()
        raise DaemonUnavailable(f"permission denied connecting to {path} (the socket is root-only by default)") from err
    except OSError as err:
        sock.close()
        raise DaemonUnavailable(f"cannot connect to {path}: {err.strerror or err}") from err
    try:
        sock.sendall(protocol.encode(msg))
        buf = b""
        while not buf.endswith(b"\n"):
            part = sock.recv(1 << 16)
            if not part:
                raise DaemonUnavailable(f"the daemon on {path} closed the connection without answering")
            buf += part
            if len(buf) > 64 * protocol.MAX_LINE_BYTES:
                raise ProtocolError("reply too large", buf[:200])
    except socket.timeout as err:
        raise DaemonUnavailable(f"the daemon on {path} did not answer within {timeout_s:g} s") from err
    finally:
        sock.close()
    reply = protocol.control.decode(buf.rstrip(b"\n"))
    if isinstance(reply, protocol.Error):
        raise RemoteError(reply.error, msg.to_dict())
    if not isinstance(reply, protocol.Reply):
        raise ProtocolError(f"unexpected reply type {reply.TYPE!r}", buf[:200])
    return reply
