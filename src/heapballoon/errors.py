"""The exception hierarchy of heapballoon: every error the project raises on purpose.

One root, so the CLI can turn any of them into a one-line message and a non-zero exit::

    HeapballoonError
     ├── UsageError            bad user input (sizes, PIDs, names); exit 2
     ├── ProtocolError         a peer sent something that is not protocol v1
     │    └── MessageTooLarge  a line over the size limit
     ├── PeerStalled           a peer stopped reading: a send timed out, the peer is dropped
     ├── DaemonUnavailable     no daemon answers on the socket
     ├── RemoteError           the daemon answered with an error reply
     ├── NotAJVM               a PID that is not a (HotSpot) JVM
     ├── AttachError           the HotSpot attach protocol failed
     ├── AgentBuildError       the Java agent could not be built
     ├── KernelError           a /proc, /sys or syscall operation failed
     │    └── UnsafePath       a path another user controls (linux/safefs.py): refused
     ├── VMError               a QEMU virtual machine could not be started or driven
     │    ├── ImageError       the guest image could not be built
     │    ├── VMDirError       a VM directory (vm.json, its files) is missing or invalid
     │    └── GuestRamError    the guest's RAM file cannot be found (not exactly one memfd)
     └── ReclaimError          the host could not reclaim guest pages
"""

from __future__ import annotations


class HeapballoonError(Exception):
    """Root of every heapballoon error. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(HeapballoonError):
    exit_code = 2


class ProtocolError(HeapballoonError):
    """A message that is not valid protocol v1. ``raw`` keeps what was received."""

    def __init__(self, message: str, raw: bytes | str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class MessageTooLarge(ProtocolError):
    pass


class PeerStalled(HeapballoonError):
    """A send to a peer did not drain within its timeout: the peer stopped reading.
    ``sent`` keeps the message that could not be delivered."""

    def __init__(self, message: str, sent: bytes | None = None) -> None:
        super().__init__(message)
        self.sent = sent


class DaemonUnavailable(HeapballoonError):
    pass


class RemoteError(HeapballoonError):
    """The daemon replied with an error. ``request`` keeps what was sent."""

    def __init__(self, message: str, request: dict | None = None) -> None:
        super().__init__(message)
        self.request = request


class NotAJVM(HeapballoonError):
    pass


class AttachError(HeapballoonError):
    pass


class AgentBuildError(HeapballoonError):
    pass


class KernelError(HeapballoonError):
    pass


class VMError(HeapballoonError):
    pass


class ImageError(VMError):
    pass


class VMDirError(VMError):
    pass


class GuestRamError(VMError):
    pass


class ReclaimError(HeapballoonError):
    pass
