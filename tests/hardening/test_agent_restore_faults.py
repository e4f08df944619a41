"""Restore faults on real CRIU: the artifact deleted mid-restore, CRIU killed, the agent killed,
two agents racing for one placeholder.

Whatever happens, the pod is never stuck: it ends restored (one worker, the
snapshot's memory) or cold-started (``restore-failed``, the placeholder exec'd
the original command) with no half-restored task left beside it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import leftovers, procfs
from agent.checkpoint import checkpoint
from agent.local import (
    read_events,
    start_checkpoint_pod,
    start_restore_pod,
)
from agent.steps import BaseStep
from agent.store import Store, verify
from tests.support.snapshots import swrk_below
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import MANIFEST_FILE, Manifest, Signal

pytestmark = pytest.mark.criu
STATE_MB = 16


@pytest.fixture(scope="module")
def snapshot(criu_ready, tmp_path_factory):
    """One real snapshot of a sample worker; each test restores its own copy of it."""
    spec, version = criu_ready
    root = tmp_path_factory.mktemp("restore-faults")
    store = Store(root / "store")
    src = start_checkpoint_pod(root / "pods", "src", worker_argv(state_mb=STATE_MB), key="k-rf")
    try:
        src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
        worker = procfs.children_of(src.box.pid)[-1]
        result = checkpoint(worker, store, key="k-rf", spec=spec, criu_version=version)
    finally:
        src.stop()
    yield store, result.name
    shutil.rmtree(root, ignore_errors=True)


def clone(store: Store, name: str, new: str, **changes: object) -> Path:
    """A copy of a published snapshot under another name (manifest fields changed as asked)."""
    dest = store.root / new
    shutil.copytree(store.path(name), dest)
    manifest = Manifest.from_json((dest / MANIFEST_FILE).read_bytes())
    (dest / MANIFEST_FILE).write_text(dataclasses.replace(manifest, name=new, **changes).to_json())
    return dest


@pytest.fixture
def root(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def live_in_ns(holder: int) -> dict[int, int]:
    """Host pid -> namespace pid of the live (not zombie) processes in holder's pid ns."""
    return {h: n for h, n in leftovers.ns_members(holder).items() if procfs.alive(h)}


def workers_in_ns(holder: int) -> list[int]:
    """Namespace pids of the sample workers running in holder's pid namespace."""

    def is_worker(host: int) -> bool:
        argv = procfs.cmdline(host)
        return "thaw.sample_worker" in argv[1:3]  # python -m ..., not the placeholder

    return sorted(n for h, n in live_in_ns(holder).items() if is_worker(h))


def assert_cold_started(pod, reason_pattern: str) -> str:
    reason = json.loads(pod.wait_signal(Signal.RESTORE_FAILED, 60))["reason"]
    assert re.search(reason_pattern, reason), reason
    assert not pod.signal_path(Signal.RESTORE_COMPLETE).exists()
    state = sample_worker.query(str(pod.control), "state", timeout=60)["sha256"]
    assert state == sample_worker.expected_sha256(SEED, STATE_MB)
    assert sample_worker.query(str(pod.control), "pid")["pid"] == 1
    # Nothing half-restored beside the cold start: the exec'd worker (PID 1) is alone.
    assert sorted(live_in_ns(pod.box.pid).values()) == [1]
    assert "cold start" in pod.box.log()
    return reason


def assert_restored(pod, manifest: Manifest) -> dict:
    done = json.loads(pod.wait_signal(Signal.RESTORE_COMPLETE, 90))
    assert not pod.signal_path(Signal.RESTORE_FAILED).exists()
    assert done["pid"] == manifest.root_pid
    assert workers_in_ns(pod.box.pid) == [manifest.root_pid]  # exactly one worker
    state = sample_worker.query(str(pod.control), "state")["sha256"]
    assert state == sample_worker.expected_sha256(SEED, STATE_MB)
    c0 = sample_worker.query(str(pod.control), "counter")["counter"]
    time.sleep(0.3)
    assert sample_worker.query(str(pod.control), "counter")["counter"] > c0
    return done


# --- 2: the artifact folder deleted during the restore ------------------------------
IN_OPEN = 0x20


def delete_on_first_open(folder: Path) -> threading.Thread:
    """Remove ``folder`` as soon as anything opens a file in it (inotify): mid-verify."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, bytes(folder), IN_OPEN) >= 0

    def run() -> None:
        try:
            if select.select([fd], [], [], 90)[0]:
                shutil.rmtree(folder)
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_artifact_deleted_while_verifying(snapshot, root, pods, agents):
    store, name = snapshot
    folder = clone(store, name, "rf-deleted-in-verify")
    agents(root, store)
    deleter = delete_on_first_open(folder)
    dst = start_restore_pod(
        root, "dst", worker_argv(state_mb=STATE_MB), key="k-rf", snapshot=folder.name
    )
    pods.append(dst)
    reason = assert_cold_started(
        dst, "missing files|changed while being verified|disappeared during the restore"
    )
    deleter.join(5)
    assert folder.name in reason and not folder.exists()
    assert [e["event"] for e in read_events(root, "dst")] == ["RestoreFailed"]


class DeleteArtifact(BaseStep):
    """Runs after verify and before CRIU: the snapshot folder goes away right there."""

    name = "delete-artifact"

    def before_restore(self, ctx) -> None:
        shutil.rmtree(ctx.folder)


def test_artifact_deleted_between_verify_and_criu(snapshot, root, pods, agents):
    store, name = snapshot
    folder = clone(store, name, "rf-deleted-after-verify")
    agents(root, store, steps=lambda: [DeleteArtifact()])
    dst = start_restore_pod(
        root, "dst", worker_argv(state_mb=STATE_MB), key="k-rf", snapshot=folder.name
    )
    pods.append(dst)
    reason = assert_cold_started(dst, "disappeared during the restore")
    assert folder.name in reason


# --- 3: CRIU killed mid-restore -------------------------------------------------------


def _wait_restore_in_flight(dst, root_pid: int, under: int, timeout: float = 60) -> int:
    """Wait until CRIU (below ``under``) has created the restored root in ``dst``: CRIU's pid.

    The box's own /proc shows its pid namespace, so one stat tells whether the
    snapshot's root pid exists there yet.
    """
    in_box = Path(f"/proc/{dst.box.pid}/root/proc/{root_pid}")
    deadline = time.monotonic() + timeout
    swrk = None
    while time.monotonic() < deadline:
        swrk = swrk if swrk is not None and procfs.alive(swrk) else swrk_below(under)
        if swrk is not None and in_box.exists():
            return swrk
    raise TimeoutError("the restore never got under way (or ended before it was seen)")


def test_criu_killed_mid_restore_cold_starts_alone(snapshot, root, pods, agents):
    store, name = snapshot
    folder = clone(store, name, "rf-criu-killed")
    manifest = verify(folder)
    agents(root, store)
    dst = start_restore_pod(
        root, "dst", worker_argv(state_mb=STATE_MB), key="k-rf", snapshot=folder.name
    )
    pods.append(dst)
    swrk = _wait_restore_in_flight(dst, manifest.root_pid, os.getpid())
    os.kill(swrk, signal.SIGKILL)
    assert_cold_started(dst, "criu was killed by SIGKILL during the restore")


# --- 4: the agent killed mid-restore, a new one takes over ----------------------------
def test_agent_killed_mid_restore_new_agent_finishes(snapshot, root, pods, agents):
    store, name = snapshot
    folder = clone(store, name, "rf-agent-killed")
    manifest = verify(folder)
    dst = start_restore_pod(
        root, "dst", worker_argv(state_mb=STATE_MB), key="k-rf", snapshot=folder.name
    )
    pods.append(dst)
    cmd = [sys.executable, "-m", "thaw.cli", "agent", "run", "--local", str(root)]
    old = subprocess.Popen([*cmd, "--store", str(store.root)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_restore_in_flight(dst, manifest.root_pid, old.pid)
    finally:
        old.kill()  # SIGKILL, mid-restore (or, if the wait failed, so the test ends)
        old.wait()
    # Its CRIU helper lives on as an orphan; the pod has neither answer yet.
    assert not dst.signal_path(Signal.RESTORE_COMPLETE).exists()
    assert not dst.signal_path(Signal.RESTORE_FAILED).exists()
    agents(root, store)  # the restarted agent
    assert_restored(dst, manifest)
    assert "restored worker pid" in dst.box.log() and "cold start" not in dst.box.log()


# --- 5: two agents, one placeholder ---------------------------------------------------
def test_two_agents_restore_once(snapshot, root, pods):
    store, name = snapshot
    folder = clone(store, name, "rf-two-agents")
    manifest = verify(folder)
    cmd = [sys.executable, "-m", "thaw.cli", "agent", "run", "--local", str(root)]
    cmd += ["--store", str(store.root)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        time.sleep(1.5)  # both polling before the pod asks
        assert all(p.poll() is None for p in procs)
        dst = start_restore_pod(
            root, "dst", worker_argv(state_mb=STATE_MB), key="k-rf", snapshot=folder.name
        )
        pods.append(dst)
        assert_restored(dst, manifest)
        time.sleep(2)  # the loser would have started by now
        assert workers_in_ns(dst.box.pid) == [manifest.root_pid]
        assert not dst.signal_path(Signal.RESTORE_FAILED).exists()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=30)[1] for p in procs]
    assert [e["event"] for e in read_events(root, "dst")] == ["Restored"], logs
    assert sum("already done by another agent" in log for log in logs) == 1, logs
