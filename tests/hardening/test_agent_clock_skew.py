"""Clock skew between nodes changes nothing: verify and restore never compare wall-clock times.

A snapshot taken on a node whose clock ran ahead (or far behind) carries that
``created`` date and those file times. Verification is by content (sizes,
checksums, platform) and the restore by CRIU images, so the date on a
manifest and the mtimes on its files must not matter. No clock is changed
here: the manifest is rewritten with a skewed date and the files re-dated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from agent.store import Store, verify
from tests.support.snapshots import publish_fake
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import CRIU_IMAGES_DIR, MANIFEST_FILE, Manifest, Signal

SKEWED = ["1970-01-01T00:00:00Z", "2999-12-31T23:59:59Z", "2026-13-45T99:99:99Z"]
FAR_PAST, FAR_FUTURE = 0, 32503680000  # 1970, year 3000


def redate(folder: Path, created: str, mtime: int) -> Manifest:
    """Rewrite the manifest's date and every file's times, as a skewed node would have."""
    manifest = Manifest.from_json((folder / MANIFEST_FILE).read_bytes())
    skewed = dataclasses.replace(manifest, created=created)
    (folder / MANIFEST_FILE).write_text(skewed.to_json())
    for dirpath, _dirs, files in os.walk(folder):
        for name in [*files, "."]:
            os.utime(os.path.join(dirpath, name), (mtime, mtime))
    return skewed


def publish(store: Store, name: str) -> Path:
    return publish_fake(store, name, payload=os.urandom(4096))[0]


@pytest.mark.parametrize("created", SKEWED)
@pytest.mark.parametrize("mtime", [FAR_PAST, FAR_FUTURE])
def test_verify_ignores_dates(tmp_path, created, mtime):
    folder = publish(Store(tmp_path), "snap-a")
    skewed = redate(folder, created, mtime)
    assert verify(folder, "4.1.1") == skewed
    # ...while content still counts: the same dates with one byte changed are refused.
    pages = folder / CRIU_IMAGES_DIR / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[0] ^= 1
    pages.write_bytes(bytes(data))
    os.utime(pages, (mtime, mtime))
    with pytest.raises(Exception, match="checksum mismatch"):
        verify(folder, "4.1.1")


@pytest.mark.criu
def test_snapshot_dated_in_the_future_restores(tmp_path):
    """A real snapshot, re-dated to year 2999 with 1970 file times, restores normally."""
    if os.geteuid() != 0:
        pytest.skip("CRIU tests need root (CAP_SYS_ADMIN, ptrace, namespaces)")
    from agent.daemon import Agent
    from agent.local import LocalPods, LocalSink, start_checkpoint_pod, start_restore_pod

    root = tmp_path / "pods"
    store = Store(tmp_path / "store")
    agent = Agent(LocalPods(root), LocalSink(root), store, node="test")
    threading.Thread(target=agent.run, daemon=True).start()
    started = []
    try:
        src = start_checkpoint_pod(root, "src", worker_argv(state_mb=16), key="k-skew")
        started.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
        assert done["ok"], done
        src.stop()
        skewed = redate(store.path(done["snapshot"]), SKEWED[1], FAR_PAST)
        assert store.newest_for_key("k-skew") == done["snapshot"]
        dst = start_restore_pod(root, "dst", worker_argv(state_mb=16), key="k-skew")
        started.append(dst)
        complete = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 60))
        assert complete["pid"] == skewed.root_pid
        state = sample_worker.query(str(dst.control), "state")["sha256"]
        assert state == sample_worker.expected_sha256(SEED, 16)
        assert not dst.signal_path(Signal.RESTORE_FAILED).exists()
    finally:
        agent.stop(wait=True)
        for p in started:
            p.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
