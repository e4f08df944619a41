"""Read a snapshot's small files (manifest, signature) without trusting what is there.

Whoever writes the artifact store decides what ``manifest.json`` is: a FIFO
blocks a plain ``open`` forever, a character device (``/dev/zero``) is read
until memory runs out, a directory or a dangling link ends in a traceback.
Every reader of the store (agent, CLI, restore init step, offline webhook)
goes through :func:`read_small_file`: it never follows a symlink, never
blocks on open, accepts regular files only and reads at most ``limit`` bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from thaw.contract import MANIFEST_FILE

MAX_MANIFEST_BYTES = 16 << 20  # a manifest of a multi-GB snapshot is a few hundred KiB
MAX_SIGNATURE_BYTES = 1024  # one base64 line of a 64-byte Ed25519 signature

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A path that is not a regular file of acceptable size; the message says what it is."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of regular file ``path``, at most ``limit`` of them.

    Raises FileNotFoundError when it is missing and UnsafeFile (an OSError) when
    it is a symlink, FIFO, device, socket or directory, or larger than ``limit``.
    The type is checked before opening (opening a device can have side effects)
    and again on the open fd (the path may have been swapped in between).
    """
    p = Path(path)
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{p.name} is {_kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(p, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(f"{p.name} is a symlink, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{p.name} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnsafeFile(f"{p.name} is too large: {st.st_size} bytes, more than {limit}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # grew after the fstat
            raise UnsafeFile(f"{p.name} is too large: more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_manifest_bytes(folder: str | os.PathLike[str]) -> bytes:
    """``folder/manifest.json``: a regular file of at most MAX_MANIFEST_BYTES."""
    return read_small_file(Path(folder) / MANIFEST_FILE, MAX_MANIFEST_BYTES)
