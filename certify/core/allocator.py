"""Process-wide tuning of the C allocator for long tensor workloads on a CPU.

glibc's malloc serves large blocks (from 128 KiB, raised as blocks are freed, up to
32 MiB) with fresh ``mmap`` pages and gives freed memory back to the system. A
tensor of activation size then costs a page fault per 4 KiB on every new allocation:
on a CPU the interval passes of verification, which allocate several such tensors
per layer, spent more time in page faults than in arithmetic. Keeping freed memory
in the process for reuse (as jemalloc or tcmalloc would) removes that cost at the
price of holding the peak memory until the process ends.

Only the CLI and the benchmarks call :func:`keep_freed_memory`: it changes the whole
process, which a library must not do behind its caller's back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks below the mmap threshold come from the heap. Recent glibc accepts 256 MiB,
# which covers the activations of a batch of 256 CIFAR images; every glibc accepts
# 32 MiB (HEAP_MAX_SIZE / 2 on 64-bit systems).
MMAP_THRESHOLDS = (256 * 2**20, 32 * 2**20)
TRIM_THRESHOLD = 1024 * 2**20

_applied = False


def keep_freed_memory() -> bool:
    """Serve blocks below 256 MiB (or 32 MiB on older glibc) from the heap and keep up
    to 1 GiB of freed memory for reuse. Returns whether the allocator took the
    settings (False off glibc)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS):
        return False
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def release_freed_memory() -> bool:
    """Hand the memory freed so far back to the system (glibc's ``malloc_trim``), so that
    the resident size counts live memory only, as a measurement of what a computation
    needs requires. Returns whether it could (False off glibc)."""
    if platform.system() != "Linux":
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
