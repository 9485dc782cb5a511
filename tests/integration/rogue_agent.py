"""A rogue agent: a separate process (so SO_PEERCRED and pagemap are real) that a test drives.

It maps memory of its own (private anonymous, as a Java heap is), touching what the test says,
so what is "really resident" is known; it connects to a driver's socket and sends whatever the
test gives it: a hello, states with huge chunks, floods, garbage. It never reads the socket
unless told to (``read``: a thread prints every line the driver sends).

Commands on stdin, one JSON object a line; every answer is one JSON line on stdout:
  {"op": "map", "mib": 64, "touch_mib": 16}         -> {"addr": A}
  {"op": "release", "off_mib": 0, "mib": 8}         -> {}            (MADV_DONTNEED)
  {"op": "connect", "path": P, "rcvbuf": 4096}      -> {}
  {"op": "send", "lines": ["...", ...], "repeat": 1} -> {"sent": N, "error": "..."}
  {"op": "read"}                                    -> {}            (then {"got": line} lines)
  {"op": "status"}                                  -> {"hwm_kib": .., "rss_kib": ..}
"""

from __future__ import annotations

import ctypes
import json
import mmap
import socket
import sys
import threading

MIB = 1 << 20
state: dict = {}
out_lock = threading.Lock()


def say(obj: dict) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def reader(sock: socket.socket) -> None:
    buf = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            say({"eof": True})
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            say({"got": line.decode(errors="replace")[:2000]})


def status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key[2:].lower() + "_kib"] = int(value.split()[0])
    return out


def main() -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "map":
            region = mmap.mmap(-1, cmd["mib"] * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            for off in range(0, cmd["touch_mib"] * MIB, MIB):
                region[off:off + MIB] = b"\x01" * MIB
            state["region"] = region
            say({"addr": ctypes.addressof(ctypes.c_char.from_buffer(region))})
        elif op == "release":
            state["region"].madvise(mmap.MADV_DONTNEED, cmd["off_mib"] * MIB, cmd["mib"] * MIB)
            say({})
        elif op == "connect":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if cmd.get("rcvbuf"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cmd["rcvbuf"])
            sock.connect(cmd["path"])
            state["sock"] = sock
            say({})
        elif op == "send":
            sock = state["sock"]
            sock.settimeout(cmd.get("timeout_s", 5.0))
            data = b"".join(x.encode() + b"\n" for x in cmd["lines"])
            sent, error = 0, ""
            try:
                for _ in range(cmd.get("repeat", 1)):
                    sock.sendall(data)
                    sent += 1
            except OSError as err:  # timeout (the driver stopped reading us), reset (it dropped us)
                error = type(err).__name__
            say({"sent": sent, "error": error})
        elif op == "read":
            threading.Thread(target=reader, args=(state["sock"],), daemon=True).start()
            say({})
        elif op == "status":
            say(status())


if __name__ == "__main__":
    main()
