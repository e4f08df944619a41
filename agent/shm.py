"""The worker's ``/dev/shm``: captured while CRIU holds the tree frozen, put back before restore.

A pod's ``/dev/shm`` is a tmpfs of its own, outside the image and outside
CRIU's dump. Engines live in it: Python's multiprocessing (spawn) keeps its
semaphores there by name, vLLM and torch share buffers through it. CRIU only
records the *paths* of such mapped files (and, for files whose name is gone
while a hard link remains, adds a ``link_remap`` link beside them), so a
restore into a new pod, whose ``/dev/shm`` is empty, fails on the first one.

The agent therefore carries the folder over: CRIU's ``post-dump`` notification
(the tree is still frozen, CRIU's link_remap files exist) writes a tar of it
into the snapshot, and a restore unpacks it into the new pod's ``/dev/shm``
before CRIU starts. Both run inside the pod's mount namespace
(:mod:`agent.nsrun`); only regular files and hard links between them are
carried, with names that stay inside the folder.
"""

from __future__ import annotations

import os
import stat
import tarfile

SHM_DIR = "/dev/shm"
MAX_BYTES = 4 << 30  # a snapshot carries at most this much of /dev/shm


class ShmError(RuntimeError):
    """/dev/shm could not be captured or restored; the message says why."""


def capture(out_fd: int, root: str = SHM_DIR, max_bytes: int = MAX_BYTES) -> int:
    """Write a tar of ``root``'s regular files to ``out_fd``; how many files it holds."""
    if not os.path.isdir(root):
        return 0
    count, total = 0, 0
    with os.fdopen(os.dup(out_fd), "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue  # sockets, fifos, links: nothing CRIU reopens by content
                total += st.st_size
                if total > max_bytes:
                    raise ShmError(f"{root} holds more than {max_bytes >> 20} MiB")
                # tarfile writes a second name of the same inode as a hard link.
                tar.add(path, arcname=os.path.relpath(path, root), recursive=False)
                count += 1
    return count


def _safe_name(name: str) -> str:
    norm = os.path.normpath(name)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ShmError(f"refusing /dev/shm entry {name!r}: outside the folder")
    return norm


def apply(tar_fd: int, root: str = SHM_DIR) -> int:
    """Unpack a captured tar into ``root``; how many entries it wrote."""
    os.makedirs(root, exist_ok=True)
    count = 0
    with os.fdopen(os.dup(tar_fd), "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            name = _safe_name(member.name)
            if member.islnk():
                member = member.replace(name=name, linkname=_safe_name(member.linkname))
            elif member.isfile():
                member = member.replace(name=name)
            else:
                raise ShmError(f"refusing /dev/shm entry {member.name!r}: not a regular file")
            dest = os.path.join(root, name)
            if os.path.lexists(dest):
                os.unlink(dest)
            tar.extract(member, root, filter="tar")
            count += 1
    return count
