"""SHA-256 of snapshot files, fast: restore verifies every byte before anything runs.

A snapshot is dominated by one memory image of several GB, and one SHA-256
stream runs at one core's speed (about 1-2 GB/s), slower than the disk the
restore is measured against. So large files are also hashed in independent
pieces (``PIECE`` bytes each, listed in the manifest, the file's digest being
the digest of its piece digests): checkpoint and restore both hash them
spread over every core. Reads use ``os.preadv`` into one reused buffer
per task (hashlib releases the GIL on large updates), so Python stays out of
the way and throughput is bounded by the disk or by SHA-256 itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUF = 8 << 20
PIECE = 64 << 20  # files larger than this get piece digests


@dataclasses.dataclass(frozen=True)
class Digest:
    size: int
    sha256: str
    pieces: tuple[str, ...] = ()


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _hash_range(fd: int, start: int, length: int | None) -> tuple[int, str]:
    """(bytes read, hex digest) of ``length`` bytes at ``start`` (None: to the end)."""
    h = hashlib.sha256()
    buf = bytearray(BUF)
    view = memoryview(buf)
    done, offset = 0, start
    while length is None or done < length:
        want = BUF if length is None else min(BUF, length - done)
        n = os.preadv(fd, [view[:want]], offset)
        if n == 0:
            break
        h.update(view[:n])
        done += n
        offset += n
    return done, h.hexdigest()


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, hex digest) of one regular file, read without following a final symlink."""
    fd = _open(path)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return _hash_range(fd, 0, None)
    finally:
        os.close(fd)


def _piece(path: Path, index: int, piece: int) -> str:
    fd = _open(path)
    try:
        return _hash_range(fd, index * piece, piece)[1]
    finally:
        os.close(fd)


def _workers(workers: int | None) -> int:
    return workers or max(2, os.cpu_count() or 2)


def digest_many(
    paths: Iterable[Path], workers: int | None = None, piece: int = PIECE
) -> dict[Path, Digest]:
    """Whole-file digests, plus piece digests for files larger than ``piece``."""
    todo = sorted(paths, key=lambda p: -p.stat().st_size)  # biggest first: never ends last
    if not todo:
        return {}
    sizes = {p: p.stat().st_size for p in todo}
    with ThreadPoolExecutor(_workers(workers), thread_name_prefix="sha256") as pool:
        parts = {
            p: [pool.submit(_piece, p, i, piece) for i in range(-(-sizes[p] // piece))]
            for p in todo
            if sizes[p] > piece
        }
        whole = {p: pool.submit(sha256_file, p) for p in todo if p not in parts}
        out = {}
        for p in todo:
            if p in parts:
                pieces = tuple(f.result() for f in parts[p])
                out[p] = Digest(sizes[p], piece_list_digest(pieces), pieces)
            else:
                out[p] = Digest(*whole[p].result())
    return out


def piece_list_digest(pieces: Sequence[str]) -> str:
    """A pieced file's ``sha256``: the digest of its piece digests, in order."""
    return hashlib.sha256("".join(pieces).encode()).hexdigest()


def mismatches(
    checks: Sequence[tuple[Path, str, int, Sequence[str]]], workers: int | None = None
) -> list[Path]:
    """Files whose content differs from (sha256, piece_bytes, pieces), checked in parallel.

    Files with pieces are checked piece by piece (all cores); others whole.
    """
    bad: list[Path] = []
    with ThreadPoolExecutor(_workers(workers), thread_name_prefix="verify") as pool:
        futures = []
        for path, sha256, piece, pieces in checks:
            if pieces and piece_list_digest(pieces) != sha256:
                bad.append(path)  # the manifest's own entry does not add up
            elif pieces:
                for i, want in enumerate(pieces):
                    futures.append((path, want, pool.submit(_piece, path, i, piece)))
            else:
                futures.append((path, sha256, pool.submit(lambda p: sha256_file(p)[1], path)))
        for path, want, fut in futures:
            if fut.result() != want and path not in bad:
                bad.append(path)
    return bad
