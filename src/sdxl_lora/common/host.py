"""The host machine: the cores this process may use, and giving freed memory back to the operating system.

glibc serves blocks below its mmap threshold (which grows up to 32 MiB as large blocks are freed) from its heaps
and keeps them resident when they are freed, for reuse. After the frozen text encoders and VAE are released, or
after loading has cast a file's float16 tensors into float32 ones, gigabytes are free but still counted in the
process's resident memory. malloc_trim(0) returns the free pages of every heap at once (measured on full-size
SDXL: 15.7 -> 10.1 GiB after releasing the VAE and both text encoders). A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


def cpus() -> int:
    """Cores this process may run on (its affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl without it, Windows)
        return None


def return_freed_memory() -> bool:
    """Ask the allocator to return freed heap memory; whether it could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
