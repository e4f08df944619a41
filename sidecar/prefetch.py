"""Read snapshot files into the page cache with parallel readers.

A restore is bound by how fast the artifact comes off the disk. One reader
leaves most of a fast disk (or a network volume) idle; several readers with
large requests in flight keep it busy. Chunks are handed out in file order,
so whatever reads the files next (CRIU) finds the early parts cached first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from thaw.scratch import scratch

DEFAULT_READERS = 8
DEFAULT_CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True)
class PrefetchStats:
    files: int
    bytes: int
    seconds: float
    readers: int

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def prefetch(
    paths: Sequence[Path], readers: int = DEFAULT_READERS, chunk: int = DEFAULT_CHUNK
) -> PrefetchStats:
    """Read every byte of ``paths`` once (into the page cache); raises OSError on a bad file."""
    if readers < 1 or chunk < 4096:
        raise ValueError("readers must be >= 1 and chunk >= 4096")
    jobs: list[tuple[int, int, int]] = []  # (file index, offset, length)
    fds: list[int] = []
    t0 = time.monotonic()
    try:
        for i, path in enumerate(paths):
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            size = os.fstat(fd).st_size
            with_hint(fd, size)
            jobs += [(i, off, min(chunk, size - off)) for off in range(0, size, chunk)]
        local = threading.local()

        def read(job: tuple[int, int, int]) -> int:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = scratch(chunk)
            i, off, length = job
            view = memoryview(buf)[:length]
            done = 0
            while done < length:
                n = os.preadv(fds[i], [view[done:]], off + done)
                if n == 0:
                    break  # file shrank under us: what is there is cached
                done += n
            return done

        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="prefetch") as pool:
            total = sum(pool.map(read, jobs))
    finally:
        for fd in fds:
            os.close(fd)
    return PrefetchStats(len(paths), total, time.monotonic() - t0, readers)


def with_hint(fd: int, size: int) -> None:
    """Tell the kernel the whole file is wanted soon (bigger readahead; harmless if ignored)."""
    if hasattr(os, "posix_fadvise") and size:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)


def evict(paths: Sequence[Path]) -> None:
    """Drop ``paths`` from the page cache (clean pages only), so a read goes to disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def snapshot_files(folder: Path) -> list[Path]:
    """Every regular file under a snapshot folder, largest first within the listing order."""
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: str(p))
