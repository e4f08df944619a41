"""Names and keys from pod annotations, and snapshot folders, never lead outside the store;
a rootfs diff applied by the real helper never writes outside the container.

Complements tests/agent/test_agent_store.py (``..``, ``/``, symlinked snapshot,
symlink inside an artifact) and tests/hardening/test_hardening_rootfs_paths.py
(hostile diffs against ``rootfs.apply`` unconfined): here the cases those leave
out, and the agent itself fed hostile annotations.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from agent.store import (
    SnapshotInvalid,
    Store,
    StoreError,
    validate_key,
    validate_name,
    verify,
)
from tests.support.snapshots import publish_fake
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import (
    CRIU_IMAGES_DIR,
    MANIFEST_FILE,
    STORE_STAGING_DIR,
    Manifest,
    Signal,
)


def publish(store: Store, name: str = "snap-a") -> Path:
    return publish_fake(store, name)[0]


@pytest.mark.parametrize("name", ["snap\n", "snap\x00", "snap\x00/../../etc", "\nsnap", "snap/"])
def test_names_with_newline_or_nul_are_refused(tmp_path, name):
    with pytest.raises(StoreError, match="invalid snapshot name"):
        Store(tmp_path).path(name)
    with pytest.raises(StoreError):
        validate_name(name)


@pytest.mark.parametrize("key", ["k\n", "k\x00", "k\x00/../x", " k", "k/"])
def test_keys_with_newline_or_nul_are_refused(key):
    with pytest.raises(StoreError, match="invalid snapshot key"):
        validate_key(key)


def test_staging_dir_that_is_a_symlink_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    os.symlink(outside, tmp_path / "store" / STORE_STAGING_DIR)
    with pytest.raises(StoreError, match="symlink"):
        Store(tmp_path / "store")
    assert list(outside.iterdir()) == []


def test_images_dir_swapped_for_a_symlink_is_refused(tmp_path):
    """The files are byte-identical, but they now live outside the store: refuse."""
    folder = publish(Store(tmp_path / "store"))
    outside = tmp_path / "outside-criu"
    shutil.move(folder / CRIU_IMAGES_DIR, outside)
    os.symlink(outside, folder / CRIU_IMAGES_DIR)
    with pytest.raises(SnapshotInvalid, match="symlinks are not allowed"):
        verify(folder, "4.1.1")


@pytest.mark.parametrize("path", ["/etc/passwd", "criu/../../x", "..", MANIFEST_FILE])
def test_manifest_listing_unsafe_paths_is_refused(tmp_path, path):
    folder = publish(Store(tmp_path / "store"))
    manifest = Manifest.from_json((folder / MANIFEST_FILE).read_bytes())
    entry = dataclasses.replace(manifest.files[0], path=path)
    (folder / MANIFEST_FILE).write_text(dataclasses.replace(manifest, files=(entry,)).to_json())
    with pytest.raises(SnapshotInvalid, match="unsafe path"):
        verify(folder, "4.1.1")


def test_delete_does_not_follow_a_symlinked_snapshot(tmp_path):
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    os.symlink(outside, store.root / "evil")
    with pytest.raises(StoreError, match="symlink"):
        store.delete("evil")
    assert (outside / "precious").read_text() == "keep"


# --- the agent fed hostile annotations (real CRIU, real containers) ------------------


@pytest.fixture
def agent_root(criu_ready, tmp_path):
    from agent.daemon import Agent
    from agent.local import LocalPods, LocalSink

    root = tmp_path / "pods"
    agent = Agent(LocalPods(root), LocalSink(root), Store(tmp_path / "store"), node="test")
    threading.Thread(target=agent.run, daemon=True).start()
    started: list = []
    yield root, started
    agent.stop(wait=True)
    for p in started:
        p.stop()


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.criu
@pytest.mark.parametrize("snapshot", ["../outside", "/etc", "ok\n", "evil"])
def test_hostile_snapshot_annotation_cold_starts(agent_root, snapshot):
    """``evil`` is a valid name, but a symlink in the store to a copy outside it."""
    from agent.local import start_restore_pod

    root, started = agent_root
    store = root.parent / "store"
    outside = root.parent / "outside"
    outside.mkdir()
    before = _listing(root.parent)
    os.symlink(outside, store / "evil")
    pod = start_restore_pod(root, "dst", worker_argv(state_mb=16), key="k", snapshot=snapshot)
    started.append(pod)
    reason = json.loads(pod.wait_signal(Signal.RESTORE_FAILED, 60))["reason"]
    assert "invalid snapshot name" in reason or "symlink" in reason, reason
    state = sample_worker.query(str(pod.control), "state", timeout=60)["sha256"]
    assert state == sample_worker.expected_sha256(SEED, 16)  # cold start
    (store / "evil").unlink()
    assert list(outside.iterdir()) == []
    assert set(before) <= set(_listing(root.parent))


@pytest.mark.criu
def test_hostile_key_annotation_fails_the_checkpoint_and_writes_nothing(agent_root):
    from agent.local import start_checkpoint_pod

    root, started = agent_root
    store = root.parent / "store"
    pod = start_checkpoint_pod(root, "src", worker_argv(state_mb=16), key="../../escape")
    started.append(pod)
    done = json.loads(pod.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
    assert done["ok"] is False and "invalid snapshot key" in done["error"], done
    assert _listing(store) == [STORE_STAGING_DIR]
    assert not (root.parent / "escape").exists() and not (store.parent.parent / "escape").exists()
    assert sample_worker.query(str(pod.control), "counter")["counter"] >= 0  # resumed


# --- a hostile diff through the real untar helper (chrooted into a box) ---------------
@pytest.mark.criu
def test_untar_helper_keeps_dotdot_and_hardlinks_inside_the_box(criu_ready, tmp_path):
    from agent import criu
    from agent.sandbox import Box

    # Under /var/tmp: the box sees the host's / as its lower layer there.
    victim = Path(tempfile.mkdtemp(prefix="thaw-victim-", dir="/var/tmp"))
    (victim / "file").write_text("host file")
    spec, _ = criu_ready

    def untar(box: Box, *members: tuple[tarfile.TarInfo, bytes | None]) -> None:
        path = tmp_path / "diff.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                if data is not None:
                    info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        criu.call(
            "untar",
            spec,
            images_dir=tmp_path,
            work_dir=tmp_path,
            log_file="-",
            opts={},
            ns_pid=box.pid,
            extra={"tar": str(path)},
        )

    box = Box([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "ctl", name="t")
    try:
        dotdot = tarfile.TarInfo("../../../../.." + str(victim / "file"))
        with pytest.raises(criu.CriuFailed, match="outside the container root"):
            untar(box, (dotdot, b"pwned"))
        hard = tarfile.TarInfo("hl")
        hard.type, hard.linkname = tarfile.LNKTYPE, str(victim / "file")
        over = tarfile.TarInfo("hl")
        untar(box, (hard, None), (over, b"pwned"))  # link, then write over the link
        assert (victim / "file").read_text() == "host file"
        assert os.stat(victim / "file").st_nlink == 1
        assert (box.upper / "hl").read_bytes() == b"pwned"
    finally:
        box.stop()
        shutil.rmtree(victim, ignore_errors=True)
