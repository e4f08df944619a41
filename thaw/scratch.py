"""Read buffers for bytes that are read only to bring them into the page cache.

``bytearray(n)`` zero-fills its memory while holding the GIL: 16 MiB took
5-12 ms, and a pool of readers each making its buffer at once stalled every
other thread of the process for ~0.1 s (measured on the GPU region loader: the
restore's first small reads ran one or two at a time instead of sixteen). An
anonymous mapping costs one system call; the kernel supplies its zero pages
inside the first read, where the GIL is released.
"""

from __future__ import annotations

import mmap


def scratch(nbytes: int) -> mmap.mmap:
    """A writable buffer of ``nbytes`` whose pages are faulted in by the reads into it."""
    return mmap.mmap(-1, nbytes)
