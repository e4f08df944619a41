"""Clean up what an interrupted restore left inside a placeholder's pid namespace.

CRIU creates the restored tasks before it is done with them. If CRIU (or the
agent driving it) dies half-way, those tasks stay behind in the placeholder's
container, stopped in CRIU's restorer or half-built, and hold the worker's
pids: a cold start would run beside them, and a retry would fail on
"pid taken". The pids a snapshot needs are listed in its ``pstree.img``; in
a placeholder nothing else can hold them (the PID-offset wrapper keeps the
worker's pids above the placeholder's), so whatever holds them there is a
leftover of an earlier attempt and is killed, with everything below it.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

from agent import procfs

PSTREE_IMAGE = "pstree.img"  # CRIU's own file name in its images dir


def tree_pids(images_dir: Path, root_pid: int) -> set[int]:
    """Every pid and thread id the snapshot's tree uses (at least its root's)."""
    pids = {root_pid}
    try:
        from pycriu.images import pstree_pb2

        data = (images_dir / PSTREE_IMAGE).read_bytes()
    except (ImportError, OSError):
        return pids
    # Image layout: 1 or 2 magic words, then entries of <u32 size><protobuf>.
    off = 8 if len(data) >= 8 else len(data)
    while off + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, off)
        entry = pstree_pb2.pstree_entry()
        try:
            entry.ParseFromString(data[off + 4 : off + 4 + size])
        except Exception:  # a damaged image: CRIU will refuse it; keep what we have
            break
        pids.add(entry.pid)
        pids.update(entry.threads)
        off += 4 + size
    return pids


def ns_members(holder: int) -> dict[int, int]:
    """Host pid -> pid inside the namespace, for every process in ``holder``'s pid namespace."""
    target = procfs.ns_inode(holder, "pid")
    out: dict[int, int] = {}
    for entry in os.listdir(procfs.PROC):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if procfs.ns_inode(pid, "pid") == target:
                out[pid] = procfs.ns_pids(pid)[-1]
        except (OSError, ProcessLookupError):
            continue
    return out


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) names one process even after its pid is reused."""
    try:
        stat = (procfs.PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return pid, stat.rsplit(")", 1)[1].split()[19]


def _with_descendants(roots: list[int]) -> list[int]:
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(procfs.children_of(p))
    return out


def kill_leftovers(
    holder: int,
    pids: set[int],
    spare: set[tuple[int, str]] | None = None,
    timeout: float = 10.0,
) -> list[int]:
    """SIGKILL the processes in ``holder``'s pid namespace that hold one of ``pids``.

    ``spare``: identities of processes to leave alone (those there before we started).
    Waits until they are reaped (a zombie still holds its pid); returns their host pids.
    Raises TimeoutError if they do not go away.
    """
    members = ns_members(holder)
    roots = [
        host
        for host, ns_pid in members.items()
        if ns_pid in pids and ns_pid != 1 and (spare is None or identity(host) not in spare)
    ]
    victims = [p for p in _with_descendants(roots) if p != holder]
    ids = {p: identity(p) for p in victims}
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    while any(identity(p) == ids[p] and ids[p] is not None for p in victims):
        if time.monotonic() > deadline:
            left = [p for p in victims if identity(p) == ids[p]]
            raise TimeoutError(f"leftover restored tasks {left} in {holder}'s pid namespace")
        time.sleep(0.01)
    return victims
