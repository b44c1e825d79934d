"""Keep freed memory in the process heap while the filter runs (glibc only).

The Nyström sweep frees and allocates blocks of tens of megabytes many times per pass.  glibc
hands blocks above its ``mmap`` threshold back to the system when they are freed, and every new
one is then paid in page faults, a large share of a tile's time on a CPU.
While any run is in progress, :func:`keeping_freed_memory` raises the thresholds so that freed
blocks stay in the heap for the next allocation; when the last run ends it sets glibc's own
ceilings of its dynamic thresholds and returns the free memory to the system (``malloc_trim``).
Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["keeping_freed_memory", "keeps_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: both thresholds during a run (mallopt takes an int): no block of a run is this large, so none is
#: handed back at once
_RUN = 1 << 30
#: after the last run: the ceilings glibc's dynamic thresholds reach on 64-bit systems
_IDLE_MMAP, _IDLE_TRIM = 32 << 20, 64 << 20

_lock = threading.Lock()
_active = 0


@functools.cache
def _libc() -> Any | None:
    """glibc's ``mallopt`` and ``malloc_trim``, or ``None`` where they are not to be had."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc: Any, mmap: int, trim: int) -> None:
    """Set both thresholds; where glibc refuses the ``mmap`` threshold, its 32 MiB ceiling instead."""
    if not libc.mallopt(_M_MMAP_THRESHOLD, mmap):
        libc.mallopt(_M_MMAP_THRESHOLD, _IDLE_MMAP)
    libc.mallopt(_M_TRIM_THRESHOLD, trim)


@contextmanager
def keeping_freed_memory() -> Iterator[None]:
    """Within the block (and any other such block in any thread), freed memory stays in the heap."""
    global _active
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        _active += 1
        if _active == 1:
            _set(libc, _RUN, _RUN)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _set(libc, _IDLE_MMAP, _IDLE_TRIM)
                libc.malloc_trim(0)


G = TypeVar("G", bound=Callable[..., Generator])


def keeps_freed_memory(func: G) -> G:
    """Decorate a generator function so that it runs in :func:`keeping_freed_memory`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Generator:
        with keeping_freed_memory():
            return (yield from func(*args, **kwargs))

    return wrapper  # type: ignore[return-value]
