"""Who is on the other end of a Unix socket: ``SO_PEERCRED`` (pid, effective uid and gid).

The kernel records the credentials when the peer calls ``connect()``; they are the only
identity of a local peer the driver trusts (never what a peer claims in a message). The pid is
the peer's pid in the reader's pid namespace, 0 when it has none there.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_CRED = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCred:
    pid: int  # 0: the peer has no pid in our pid namespace
    uid: int
    gid: int


def peer_cred(sock: socket.socket | None) -> PeerCred | None:
    """The peer's credentials, or None when the socket has none (not a Unix socket, closed)."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _CRED.unpack(raw)
    return PeerCred(pid, uid, gid)
