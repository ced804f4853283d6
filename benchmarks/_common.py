"""Shared helpers of the benchmark scripts (not part of the library)."""
from __future__ import annotations

import ctypes


def keep_heap() -> bool:
    """Ask glibc to keep freed memory for reuse (no mmap/trim for big blocks).

    On this project's VMs the first touch of fresh pages costs 1-3 s per 100 MB, so without
    this a forward pass mostly measures page faults. Returns False where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)
                and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
