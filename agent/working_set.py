"""The file pages a restored worker really touches, learned after the snapshot is published.

At checkpoint the dump records every file page the worker had mapped
(``agent.file_pages``), and a restore reads them all ahead. Most were only
needed while the engine warmed up: on the H100 bench a restored engine
touched 94 MB of the 0.6 GB recorded by its first token; the rest is
compile-time code (Triton, NVRTC, nvJitLink). Reading them costs a restore
about a third of a second of disk.

So the agent samples each restored tree a while after the restore (pages of
its file mappings in its page tables that are not private copies: a freshly
restored process has only what it faulted in since) and keeps the union of
those samples beside the snapshot in ``WORKING_SET_FILE``. Later restores
read that set instead of the recorded one.

It is advisory. It is not in the manifest, so a snapshot verifies with or
without it. It only decides what is read into the page cache, always under
the worker's own root. A file that is missing, malformed or too large is
ignored, and the restore falls back to the recorded set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.file_pages import FilePages, FilePagesError, FileRange, merge, record
from agent.file_pages import total_bytes as range_bytes
from thaw.contract import WORKING_SET_FILE

log = logging.getLogger(__name__)

# The agent samples a restored worker this long after its restore: it has resumed,
# reloaded what it released and usually served its first requests by then.
LEARN_AFTER_S = 30.0
MAX_FILE_BYTES = 16 << 20  # the record itself
MAX_SET_BYTES = 2 << 30  # what it may make a restore read


def sample(pids: Iterable[int]) -> tuple[FileRange, ...]:
    """File pages the tree has mapped in and does not hold a private copy of (worker paths)."""
    # a fresh restore has in its page tables what it touched since
    return record(pids, heads=False).mapped


def load(folder: Path) -> tuple[FileRange, ...] | None:
    """The snapshot's learned set, or None (none yet, or one not to trust: logged)."""
    try:
        fd = os.open(folder / WORKING_SET_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s/%s ignored: %s", folder.name, WORKING_SET_FILE, e.strerror)
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise FilePagesError(f"{WORKING_SET_FILE} is larger than {MAX_FILE_BYTES} bytes")
        found = FilePages.from_json(raw, WORKING_SET_FILE)
        if found.cow:
            raise FilePagesError(f"{WORKING_SET_FILE}: a working set has no private copies")
        if range_bytes(found.mapped) > MAX_SET_BYTES:
            raise FilePagesError(f"{WORKING_SET_FILE} asks for more than {MAX_SET_BYTES} bytes")
    except FilePagesError as e:
        log.warning("%s: %s; reading the recorded file pages instead", folder.name, e)
        return None
    return found.mapped


def learn(folder: Path, pids: Iterable[int], scratch: Path) -> int:
    """Add what the tree ``pids`` touched to ``folder``'s working set; bytes added.

    Nothing new: nothing is written (0). The new set is written in
    ``scratch`` (a folder on the same filesystem, e.g. a staging folder of
    the store) and renamed into place, so a restore reads the old set or
    the new one, never half of one.
    """
    seen = sample(pids)
    if not seen:
        return 0
    old = load(folder) or ()
    union = tuple(merge([*old, *seen]))
    added = range_bytes(union) - range_bytes(old)
    if union == tuple(old) or range_bytes(union) > MAX_SET_BYTES:
        return 0
    tmp = scratch / WORKING_SET_FILE
    tmp.write_text(FilePages(mapped=union).to_json())
    os.replace(tmp, folder / WORKING_SET_FILE)
    return max(added, 0)


def describe(ranges: Sequence[FileRange] | None) -> dict:
    """For logs and the bench: how much, over how many files."""
    if ranges is None:
        return {"learned": False}
    return {"learned": True, "bytes": range_bytes(ranges), "files": len({r.path for r in ranges})}
