"""Which pages of a file are in the page cache (mincore on a mapping: asking reads nothing)."""

from __future__ import annotations

import ctypes
import mmap


def resident(fd: int, size: int) -> list[bool]:
    """Per page of the first ``size`` bytes of ``fd``: in the page cache now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        vec = (ctypes.c_ubyte * (size // 4096))()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        return [bool(v & 1) for v in vec]
    finally:
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
