"""Two ``thaw snapshot restore --into`` on one placeholder: one worker, and it survives.

Real CRIU, a real placeholder container, two real CLI processes started together.
Without a lock the loser's cleanup (kill what CRIU made in the namespace) killed
the winner's restored worker while the winner reported success.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from agent import leftovers, procfs
from agent.checkpoint import checkpoint
from agent.local import start_checkpoint_pod, start_restore_pod
from agent.store import Store
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import AGENT_LOCK_FILE, Signal

pytestmark = pytest.mark.criu
STATE_MB = 16
THAW = [sys.executable, "-m", "thaw.cli"]


@pytest.fixture
def snapshot(criu_ready, tmp_path):
    spec, version = criu_ready
    store = Store(tmp_path / "store")
    src = start_checkpoint_pod(tmp_path / "pods", "src", worker_argv(state_mb=STATE_MB), key="k1")
    try:
        src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
        worker = procfs.children_of(src.box.pid)[-1]
        result = checkpoint(worker, store, key="k1", spec=spec, criu_version=version)
    finally:
        src.stop()
    yield store.path(result.name), result.manifest.root_pid
    shutil.rmtree(tmp_path, ignore_errors=True)


def restore_cli(folder, into: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*THAW, "snapshot", "restore", str(folder), "--into", str(into)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def workers(holder: int) -> list[int]:
    """Live sample workers in holder's pid namespace (namespace pids)."""
    return sorted(
        n
        for h, n in leftovers.ns_members(holder).items()
        if procfs.alive(h) and "thaw.sample_worker" in procfs.cmdline(h)[1:3]
    )


def test_concurrent_cli_restores_one_wins_and_its_worker_survives(snapshot, tmp_path, pods):
    folder, root_pid = snapshot
    dst = start_restore_pod(
        tmp_path / "pods", "dst", worker_argv(state_mb=STATE_MB), key="k1", request=False
    )
    pods.append(dst)
    deadline = time.monotonic() + 30
    while not procfs.catches(dst.box.pid, signal.SIGUSR1):  # the placeholder is up
        assert time.monotonic() < deadline, "placeholder never came up"
        time.sleep(0.05)

    procs = [restore_cli(folder, dst.box.pid) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outs
    won, lost = (outs[0], outs[1]) if codes[0] == 0 else (outs[1], outs[0])
    restored = json.loads(won[0])
    assert "Traceback" not in lost[1]
    assert [line for line in lost[1].splitlines() if line.strip()] == [lost[1].strip()]
    assert "placeholder" in lost[1]

    time.sleep(1.0)  # a loser's late cleanup would strike now
    assert procfs.alive(restored["pid"])
    assert workers(dst.box.pid) == [root_pid]

    # A third restore, after the fact, is refused and harms nothing either.
    late = restore_cli(folder, dst.box.pid)
    _, err = late.communicate(timeout=300)
    assert late.returncode == 1 and "already" in err, err
    assert procfs.alive(restored["pid"]) and workers(dst.box.pid) == [root_pid]

    # The winner is a working worker: hand it to the placeholder as the agent would.
    dst.signal_path(Signal.RESTORE_COMPLETE).write_text(json.dumps({"pid": restored["ns_pid"]}))
    os.kill(dst.box.pid, signal.SIGUSR1)
    state = sample_worker.query(str(dst.control), "state", timeout=60)["sha256"]
    assert state == sample_worker.expected_sha256(SEED, STATE_MB)
    again = restore_cli(folder, dst.box.pid)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 1 and "was restored already" in err, err
    assert procfs.alive(restored["pid"])


def test_cli_restore_is_refused_at_once_while_the_agent_holds_the_pod(snapshot, tmp_path, pods):
    folder, _ = snapshot
    dst = start_restore_pod(
        tmp_path / "pods", "dst", worker_argv(state_mb=STATE_MB), key="k1", request=False
    )
    pods.append(dst)
    fd = os.open(dst.control / AGENT_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what the agent holds during its checkpoint or restore
        t0 = time.monotonic()
        proc = restore_cli(folder, dst.box.pid)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "the agent or another restore is working" in err, err
        assert time.monotonic() - t0 < 30
    finally:
        os.close(fd)
    assert workers(dst.box.pid) == []  # nothing was restored
