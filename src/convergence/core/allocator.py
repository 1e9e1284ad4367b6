"""The process's C heap: keep freed memory for the next model call (glibc only).

A run's model calls allocate and free the same large activations over and over, from
many threads (one per group of cells, convergence.run.gather). glibc's allocator returns
such blocks to the operating system as they are freed (large ones are separate mmaps,
trimmed heaps shrink), and the next call faults every page in again, zero-filled by the
kernel. Measured with the small random SD pipeline on the guide's study shape (2-core
Xeon, CPU seconds, getrusage): 1.16 M minor page faults and 1.8 s of system time for
6 540 model rows, and the model call cost 2.56 ms per row inside the run against 2.20
bare; with freed memory kept, 0.13 M faults, 0.3 s of system time and 2.31 ms per row.
The analysis scores metrics on stacks of a few hundred megabytes the same way: on the
default study (exact solutions cached) 0.65 M faults and a distances phase of 6.5 s,
with freed memory kept 0.31 M and 5.0 s.

:func:`keep_freed_memory` sets the two ``mallopt`` parameters that stop this: blocks
up to :data:`MMAP_THRESHOLD` come from the heap, and the heap is never trimmed, so the
process keeps its peak memory until it exits (as torch's CUDA allocator keeps device
memory). It changes no computed value. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

#: mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks up to this size are served from the heap rather than mmap (glibc accepts up to
#: half its maximum heap size; 1 GiB covers a CPU model call's activations at 128 rows)
MMAP_THRESHOLD = 1 << 30
#: free memory at the heap's top is returned to the system only beyond this (never, here)
TRIM_THRESHOLD = (1 << 31) - 1

_LOCK = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; True where it took effect. Idempotent."""
    global _applied
    with _LOCK:
        if _applied is None:
            _applied = _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _applied


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt ignores these)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in settings)
