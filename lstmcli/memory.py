"""Process-wide malloc setting for CPU runs: freed tensor buffers stay in the heap, to be reused.

A training step allocates about half a gigabyte of activations, saved factors and gradients in blocks
of tens of MB and frees them when it ends. glibc serves every block over its mmap threshold (32 MB at
most) with a fresh mapping and unmaps it on free, so each step the kernel maps and zeroes the same
memory again, 4 KB page by page. Measured with imdb_nbsvm on a 2-core AVX2 EPYC (20 steps, impl
scratch): 120,000 page faults and 0.37 s of system time a step, a fifth of the CPU time. With mmap off
(M_MMAP_MAX = 0) and no trimming of the heap's top, freed blocks stay in the heap and the next step
reuses them: about 1,300 page faults and 0.01 s of system time a step, and a step took 0.88 s instead
of 1.0-1.07 s. PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc, which would have to
be preloaded; this needs nothing installed.

What it costs: the heap keeps its high-water mark until the process ends, and that mark sits above the
peak of any one moment, as blocks of other sizes cannot always reuse the holes (imdb_nbsvm's peak RSS:
2.48 GB against 1.87 GB). Threads other than the main one allocate from arenas of 64 MB heaps, where
larger blocks are still mapped; glibc falls back to mmap wherever the heap cannot grow, so nothing fails
for it.
Only glibc on Linux has mallopt; elsewhere this does nothing. LSTMCLI_KEEP_FREED_MEMORY=0 turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks in the heap (once per process); True when it took the setting."""
    if sys.platform != "linux" or os.environ.get("LSTMCLI_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
