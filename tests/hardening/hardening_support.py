"""Shared helpers of the hardening tests: real snapshot folders published by the real store."""

from __future__ import annotations

import platform
from pathlib import Path

from agent.store import Store, file_entries, utc_now
from thaw import contract


def publish_snapshot(
    store_root: Path, name: str = "snap-a", key: str = "v1-k", namespace: str = "ml"
) -> Path:
    """A published snapshot with CRIU-like image files, a rootfs diff and a real manifest."""
    store = Store(store_root)
    staging = store.new_staging(name)
    images = staging / contract.CRIU_IMAGES_DIR
    images.mkdir()
    (images / "pages-1.img").write_bytes(bytes(range(256)) * 64)
    (images / "core-1.img").write_bytes(b"core" * 100)
    (staging / contract.ROOTFS_DIFF_FILE).write_bytes(b"\0" * 1024)
    (staging / contract.PROCESS_INFO_FILE).write_text('{"root_pid": 1}\n')
    manifest = contract.Manifest(
        name=name,
        key=key,
        created=utc_now(),
        image="registry.invalid/worker:1",
        kernel=platform.release(),
        arch=platform.machine(),
        criu_version="4.1.1",
        root_pid=1,
        source=contract.Source(namespace=namespace, pod=f"{name}-src", container="server"),
        files=file_entries(staging),
    )
    return store.publish(staging, manifest)
