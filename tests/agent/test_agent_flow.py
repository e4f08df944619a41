"""End to end on real CRIU: the agent (local pod source) checkpoints a worker in one namespace
container and restores it into a fresh placeholder container."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import time
from pathlib import Path

import pytest

from agent import procfs, working_set
from agent.local import read_events, start_checkpoint_pod, start_restore_pod
from agent.store import Store, file_entries, verify
from tests.support.workers import MARKER, SEED, worker_argv
from thaw import sample_worker
from thaw.contract import (
    CRIU_IMAGES_DIR,
    MANIFEST_FILE,
    PROCESS_INFO_FILE,
    ROOTFS_DIFF_FILE,
    Manifest,
    Signal,
)

pytestmark = pytest.mark.criu


def _counter(control) -> int:
    return sample_worker.query(str(control), "counter")["counter"]


def _checkpointed(local_root, pods, key="k-flow"):
    src = start_checkpoint_pod(local_root, "src", worker_argv(), key=key)
    pods.append(src)
    done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
    assert done["ok"], done
    return src, done


def test_checkpoint_then_restore_into_placeholder(running_agent, local_root, pods, expected_state):
    src, done = _checkpointed(local_root, pods)
    store = Store(local_root / "store")
    assert store.names() == [done["snapshot"]]
    folder = store.path(done["snapshot"])
    manifest = verify(folder, running_agent.criu_version)
    assert manifest.key == "k-flow" and manifest.root_pid > 300  # PID offset: never low pids
    paths = {f.path for f in manifest.files}
    assert PROCESS_INFO_FILE in paths and ROOTFS_DIFF_FILE in paths
    assert any(p.startswith(CRIU_IMAGES_DIR + "/pages-") for p in paths)

    # The source was left running: it resumed after checkpoint-complete and serves.
    c0 = _counter(src.control)
    time.sleep(0.3)
    assert _counter(src.control) > c0
    assert sample_worker.query(str(src.control), "state")["sha256"] == expected_state

    running_agent.learn_after_s = 0.5  # sample the restored worker soon (default: 30 s)
    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-flow")
    pods.append(dst)
    complete = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 60))
    assert not dst.signal_path(Signal.RESTORE_FAILED).exists()
    host_pid = complete["host_pid"]
    assert procfs.ns_pids(host_pid)[-1] == complete["pid"] == manifest.root_pid
    assert procfs.ns_inode(host_pid, "pid") == procfs.ns_inode(dst.box.pid, "pid")
    assert procfs.ns_inode(host_pid, "mnt") == procfs.ns_inode(dst.box.pid, "mnt")
    assert host_pid in procfs.children_of(dst.box.pid)  # reparented to the placeholder

    # Same memory, running on: the counter continues from where the snapshot froze it.
    state = sample_worker.query(str(dst.control), "state")
    assert state["sha256"] == expected_state
    c1 = _counter(dst.control)
    time.sleep(0.3)
    assert _counter(dst.control) > c1
    # The file the worker wrote into its source container's rootfs travelled along.
    assert sample_worker.query(str(dst.control), "file")["file"] == f"written by {SEED}\n"
    assert (dst.box.upper / MARKER.lstrip("/")).is_file()
    # Kernel objects held across the dump: unread pipe data, a flock, the listening socket
    # (every query above went through the socket CRIU re-bound in the new control dir).
    held = sample_worker.query(str(dst.control), "held")
    assert held["pipe"] == "in flight"
    lock = procfs.resolve_in_root(dst.box.pid, held["lock"])
    with open(lock) as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # stdout was re-wired to the new container's log.
    assert "resumed after snapshot" in dst.box.log()
    assert "restored worker pid" in dst.box.log()
    assert [e["event"] for e in read_events(local_root, "dst")] == ["Restored"]
    assert [e["event"] for e in read_events(local_root, "src")] == ["Checkpointing", "Ready"]

    # The agent learned what the restored worker touched, beside the snapshot, outside the
    # manifest: the snapshot still verifies, and the next restore reads that set ahead.
    deadline = time.monotonic() + 30
    while (learned := working_set.load(folder)) is None:
        assert time.monotonic() < deadline, "no working set learned"
        time.sleep(0.1)
    assert any(Path(r.path).name == "libc.so.6" for r in learned)  # code the worker runs
    assert all(r.in_root for r in learned)
    assert verify(folder, running_agent.criu_version) == manifest
    stale = (host_pid, "0")  # a pid that names another process by now: never sampled
    assert running_agent.learn("dst", folder.name, host_pid, stale) == 0

    # The placeholder mirrors the restored worker: worker gone -> container exits.
    os.kill(host_pid, signal.SIGKILL)
    assert dst.box.wait(10) == 0


def test_corrupt_snapshot_is_refused_and_pod_cold_starts(
    running_agent, local_root, pods, expected_state
):
    _src, done = _checkpointed(local_root, pods, key="k-corrupt")
    folder = Store(local_root / "store").path(done["snapshot"])
    pages = sorted((folder / CRIU_IMAGES_DIR).glob("pages-*.img"))[0]
    with open(pages, "r+b") as f:  # flip one byte in the middle of the memory image
        f.seek(pages.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))

    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-corrupt")
    pods.append(dst)
    reason = json.loads(dst.wait_signal(Signal.RESTORE_FAILED, 60))["reason"]
    assert "checksum mismatch" in reason and pages.name in reason
    assert not dst.signal_path(Signal.RESTORE_COMPLETE).exists()
    # Cold start: the placeholder exec'd the original command, which warms up from scratch.
    assert sample_worker.query(str(dst.control), "state", timeout=60)["sha256"] == expected_state
    assert sample_worker.query(str(dst.control), "pid")["pid"] == 1  # exec'd in place of PID 1
    assert "cold start" in dst.box.log()
    assert read_events(local_root, "dst")[0]["event"] == "RestoreFailed"


def test_restore_without_snapshot_cold_starts(running_agent, local_root, pods, expected_state):
    dst = start_restore_pod(local_root, "dst", worker_argv(), key="no-such-key")
    pods.append(dst)
    failed = json.loads(dst.wait_signal(Signal.RESTORE_FAILED, 30))
    assert "no snapshot for key" in failed["reason"] and failed["stage"] == "agent"
    assert sample_worker.query(str(dst.control), "state", timeout=60)["sha256"] == expected_state


def test_slow_dump_does_not_delay_a_restore(running_agent, local_root, pods, expected_state):
    _checkpointed(local_root, pods, key="k-fast")  # a snapshot to restore from
    big = start_checkpoint_pod(local_root, "big", worker_argv(state_mb=768), key="k-big")
    pods.append(big)
    big.wait_signal(Signal.READY_FOR_CHECKPOINT, 120)  # the agent starts dumping it now
    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-fast")
    pods.append(dst)
    dst.wait_signal(Signal.RESTORE_COMPLETE, 60)
    assert not big.signal_path(Signal.CHECKPOINT_COMPLETE).exists()  # still dumping
    assert sample_worker.query(str(dst.control), "state")["sha256"] == expected_state
    assert json.loads(big.wait_signal(Signal.CHECKPOINT_COMPLETE, 120))["ok"]


def test_criu_failure_after_verify_still_cold_starts(
    running_agent, local_root, pods, expected_state
):
    """Checksums fine, images unusable (as if a bad dump had been published): CRIU fails,
    the agent says so, and the pod comes up cold instead of hanging."""
    _src, done = _checkpointed(local_root, pods, key="k-badimg")
    folder = Store(local_root / "store").path(done["snapshot"])
    (folder / CRIU_IMAGES_DIR / "pstree.img").write_bytes(b"\0" * 64)
    manifest = Manifest.from_json((folder / MANIFEST_FILE).read_text())
    resigned = dataclasses.replace(manifest, files=file_entries(folder))
    (folder / MANIFEST_FILE).write_text(resigned.to_json())
    verify(folder, running_agent.criu_version)  # passes: only CRIU can tell

    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-badimg")
    pods.append(dst)
    failed = json.loads(dst.wait_signal(Signal.RESTORE_FAILED, 60))
    assert failed["reason"].startswith("criu restore failed")
    assert sample_worker.query(str(dst.control), "state", timeout=60)["sha256"] == expected_state
