"""Small published snapshots and CRIU process lookups that several agent tests share."""

from __future__ import annotations

import platform
from pathlib import Path

from agent import procfs
from agent.store import Store, file_entries
from thaw.contract import CRIU_IMAGES_DIR, PROCESS_INFO_FILE, Manifest


def publish_fake(
    store: Store,
    name: str = "snap-a",
    key: str = "k",
    payload: bytes = b"pages",
    process_info: bool = False,
) -> tuple[Path, Manifest]:
    """Publish a snapshot of one page image (no process behind it) through the real store."""
    staging = store.new_staging(name)
    (staging / CRIU_IMAGES_DIR).mkdir()
    (staging / CRIU_IMAGES_DIR / "pages-1.img").write_bytes(payload)
    if process_info:
        (staging / PROCESS_INFO_FILE).write_text("{}")
    manifest = Manifest(
        name=name,
        key=key,
        created="2026-01-01T00:00:00Z",
        image="img",
        kernel=platform.release(),
        arch=platform.machine(),
        criu_version="4.1.1",
        root_pid=301,
        files=file_entries(staging),
    )
    return store.publish(staging, manifest), manifest


def swrk_below(pid: int) -> int | None:
    """The first ``criu swrk`` process in ``pid``'s tree (the agent's CRIU helper), if any."""
    todo = [pid]
    while todo:
        for kid in procfs.children_of(todo.pop()):
            if any("swrk" in a for a in procfs.cmdline(kid)):
                return kid
            todo.append(kid)
    return None
