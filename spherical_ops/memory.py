"""Process memory settings that matter for spherical networks at high icosahedral levels.

A level-7 training step allocates and frees many activation-sized buffers (0.6-21 MB each). glibc's
malloc serves a buffer above its mmap threshold with a fresh mapping and returns it to the system on
free, but by default it raises that threshold to the size of each such buffer freed (up to 32 MiB),
after which buffers of that size come from the heap and freed ones stay resident, fragmenting it.
Fixing the threshold keeps freed buffers from accumulating: at level 7 the peak resident memory of a
U-Net training step falls by about 200 MB (``benchmarks/bench_spherical_ops.py`` measures both).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: ``M_MMAP_THRESHOLD`` in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
#: glibc's upper bound for the threshold on 64-bit systems (32 MiB).
_MAX_THRESHOLD = 32 * 1024 * 1024


def set_malloc_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Fix glibc malloc's mmap threshold for this process (the ``MALLOC_MMAP_THRESHOLD_`` setting).

    Allocations of ``nbytes`` or more are then mapped and unmapped on their own, so freed activation
    buffers go back to the system instead of staying in the heap. Affects the whole process.

    Args:
        nbytes: threshold in bytes, 0 .. 32 MiB (default 1 MiB).

    Returns:
        True when set; False where the C library is not glibc (macOS, Windows, musl), where it does
        nothing.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= _MAX_THRESHOLD:
        raise ValueError(f"nbytes must be an int between 0 and {_MAX_THRESHOLD} (32 MiB), got {nbytes!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, nbytes) == 1
