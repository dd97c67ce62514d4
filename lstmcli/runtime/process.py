"""Process-wide settings for running models on a CPU, which only the caller turns on: the command line
for each command that computes, a library user with `lstmcli.tune_process()`. Importing lstmcli or
loading a model never changes them.

- Denormal floats flushed to zero: gradients that fade through hundreds of forget gates reach
  denormals, which x86 CPUs handle about a hundred times slower; nothing above 1e-38 changes.
- Freed tensor buffers kept in the heap (glibc's mallopt: no mmap, no trimming). A training step
  allocates and frees blocks of tens of MB; glibc would map each afresh and unmap it on free, so the
  kernel zeroes the same pages every step. Kept, the next step reuses them. The cost: the heap keeps
  its high-water mark until the process ends. Only glibc on Linux has mallopt; elsewhere it does
  nothing, and LSTMCLI_KEEP_FREED_MEMORY=0 turns it off.
The figures behind both are in benchmarks/RESULTS.md, "Design choices".
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

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


def tune_process() -> dict[str, bool]:
    """Turn both settings on for this process (once is enough; again is harmless); returns which took."""
    flushed = torch.set_flush_denormal(True)  # False on a CPU without the instructions for it
    return {"flush_denormal": bool(flushed), "keep_freed_memory": keep_freed_memory()}
