"""glibc's allocator, told to keep freed buffers for reuse instead of returning them to the OS.

A training step or an evaluation chunk allocates and frees the same activation buffers (a few
to ~20 MB each) thousands of times.  glibc serves such sizes with ``mmap`` once they exceed its
dynamic threshold, and returns freed memory to the OS (``munmap``, heap trimming), so every
allocation touches fresh pages: a page fault per 4 kB.  Under bf16 on an AMX host the
evaluation took ten times the page faults of fp32 (13.6 M against 1.4 M for 1024 tasks) and was
1.3x slower than fp32 because of them (docs/performance.md, issue 26).

:func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` (allocations below it come from the heap)
and ``M_TRIM_THRESHOLD`` (free memory at the top of the heap kept up to it) once per process.
The commands and the training ranks call it at start; the library's API (``load``, ``fit``)
does not change the allocator of the process that imports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 32 * 2**20  # glibc's own upper bound for its dynamic threshold (64-bit)
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


@functools.cache
def keep_freed_memory() -> bool:
    """Applies the thresholds above with glibc's ``mallopt``; False where the C library is
    not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
