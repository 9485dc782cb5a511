"""The one loader of the C library: every ctypes call into libc goes through :func:`function`.

Owns: finding and loading libc once (lazily, on the first call, so importing a ``linux/``
module costs nothing), declaring a function's signature once per name, and turning a failed
call's ``errno`` into an :class:`OSError`. Other ``linux/`` modules (memfd, prctl) use it;
code outside ``linux/`` never imports ctypes (tests/unit/test_linux_boundary.py checks).

Pure standard library: the guest imports ``linux/`` too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any, Sequence

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_functions: dict[str, Any] = {}


def libc() -> ctypes.CDLL:
    """The process's C library (``use_errno=True``), loaded on first use."""
    global _libc
    with _lock:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _libc


def function(name: str, argtypes: Sequence[Any], restype: Any = ctypes.c_int):
    """libc's ``name`` with its signature declared (once; later calls return the same object)."""
    fn = _functions.get(name)
    if fn is None:
        fn = getattr(libc(), name)
        fn.argtypes = list(argtypes)
        fn.restype = restype
        _functions[name] = fn
    return fn


def check(result: int, what: str) -> int:
    """``result`` of a libc call, or OSError(errno) when it is negative (the C convention)."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def get_errno() -> int:
    """errno of the last libc call made through this module (ctypes keeps it per thread)."""
    return ctypes.get_errno()


c_int = ctypes.c_int
c_int64 = ctypes.c_int64
c_ulong = ctypes.c_ulong
