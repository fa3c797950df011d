"""Keep freed host memory in the process for reuse (glibc), as a training loop allocates the same buffers every step.

With glibc's adaptive defaults, large blocks (above the mmap threshold) come as fresh pages from the kernel and
memory freed at the top of the heap goes back to it, so each step faults the same pages in again; OT-Flow, whose
RK4 stages run as one batch of large tensors, spent a large share of its step that way (docs/performance.md).
Fixed thresholds keep the memory in the heap, the reuse that PyTorch's CPU performance tuning guide gets from
jemalloc or tcmalloc; the process keeps at most `TRIM_THRESHOLD` of freed memory at the top of its heap. Other C
libraries (macOS, musl) are left alone.
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest (64-bit); bigger blocks still get their own mapping
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (a no-op on other C libraries). Returns whether it did."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
