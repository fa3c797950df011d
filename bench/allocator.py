"""Keep freed host memory in the process for reuse (glibc), as a training loop allocates the same buffers every step.

glibc's malloc serves an allocation above its mmap threshold (128 KiB at start, raised as such blocks are freed)
with fresh pages from the kernel, and hands memory freed at the top of its heap back to the kernel once more than
the trim threshold (twice the mmap threshold) is free. A training step frees its activations when it ends, so the
next step faults the same pages in again, at a microsecond or two per 4 KiB page. OT-Flow on moons, whose rates of
all RK4 stages are computed as one batch of 0.5–1 MiB tensors, took 1,200–1,750 page faults per step that way,
17–27 % of its step time in separate timings (later, 24 to 1,593 from one process to the next, median 874 over 18
runs, as the thresholds adapt to the order of frees; about 4,660 with the initial thresholds held fixed). Fixed
thresholds keep the memory in the heap, the reuse that PyTorch's CPU performance tuning guide gets from jemalloc or
tcmalloc; the process keeps at most `TRIM_THRESHOLD` of freed memory at the top of its heap. Other C libraries
(macOS, musl) are left alone.
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
