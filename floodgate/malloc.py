"""Keep a long-running process's C heap from growing with what it has been through.

glibc's malloc hands each thread that allocates its own arena (up to eight per core), and it
raises its mmap threshold each time a large block is freed, after which blocks of up to 32 MiB
come from those arenas instead of from mmap. A worker that admits jobs at thousands per second
while RocksDB flushes memtables and Kafka fetches arrive on other threads then keeps the peak of
every arena as resident memory, long after the blocks were freed: in the memory bench that was
most of what the worker's RSS grew by between 10,000 and 100,000 queued jobs once its own
bounded parts (the read-ahead window, RocksDB's caches, fetch buffers) were full. Two arenas and
a fixed 128 KiB threshold (large blocks always mmap'd, and returned to the system when freed)
keep that growth to about 2%.

The same can be set from outside with ``MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072``;
doing it here means no deployment can forget it. Elsewhere than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""

ARENAS = 2
MMAP_THRESHOLD = 128 * 1024


def compact_malloc() -> bool:
    """Set glibc's malloc to few arenas and a fixed mmap threshold; True if it took. Call it at a
    process's entry point, before it starts threads."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no glibc here (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_ARENA_MAX, ARENAS) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not done:
        log.info("mallopt refused the heap settings: the C heap keeps glibc's defaults")
    return done


__all__ = ["compact_malloc"]
