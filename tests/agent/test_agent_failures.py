"""Failure paths on real CRIU: the agent killed mid-dump, the worker gone mid-checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent import procfs
from agent.checkpoint import CheckpointError, checkpoint
from agent.daemon import Agent
from agent.local import start_checkpoint_pod
from agent.steps import BaseStep
from agent.store import Store
from tests.support.workers import worker_argv
from thaw import sample_worker
from thaw.contract import STORE_STAGING_DIR, Signal

pytestmark = pytest.mark.criu

AGENT_RUN = (sys.executable, "-m", "thaw.cli", "agent", "run")


def _criu_running_under(pid: int) -> bool:
    """Is a `criu swrk` running somewhere below ``pid``?"""
    todo = [pid]
    while todo:
        p = todo.pop()
        for kid in procfs.children_of(p):
            if any("swrk" in a for a in procfs.cmdline(kid)):
                return True
            todo.append(kid)
    return False


def test_agent_killed_mid_dump_leaves_no_snapshot(criu_ready, local_root, pods):
    store = Store(local_root / "store")
    src = start_checkpoint_pod(local_root, "src", worker_argv(state_mb=512), key="k-kill")
    pods.append(src)
    src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
    agent = subprocess.Popen(
        # killed at its first CRIU child: the dump, not the self-test's
        [*AGENT_RUN, "--no-self-test", "--local", str(local_root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not _criu_running_under(agent.pid):
            assert agent.poll() is None, agent.stderr.read().decode()
            assert time.monotonic() < deadline, "criu dump never started"
            time.sleep(0.002)
        agent.send_signal(signal.SIGKILL)
    finally:
        agent.wait()
    assert not src.signal_path(Signal.CHECKPOINT_COMPLETE).exists()
    # Whatever the orphaned dump does next, nothing is ever published: no rename happens.
    time.sleep(3)
    assert store.names() == []
    assert [p.name for p in store.root.iterdir()] == [STORE_STAGING_DIR]
    staged = list(store.staging_root.iterdir())
    assert len(staged) == 1  # the half-written snapshot is only in staging, hidden
    out = subprocess.run(
        [sys.executable, "-m", "thaw.cli", "snapshot", "list", str(store.root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"snapshots": []}
    # A new agent removes the dead agent's staging folder and redoes the checkpoint.
    from agent.local import LocalPods, LocalSink

    again = Agent(LocalPods(local_root), LocalSink(local_root), store, node="test")
    assert not staged[0].exists()
    again.tick()
    done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 120))
    again.stop()
    assert done["ok"] and store.names() == [done["snapshot"]]
    assert sample_worker.query(str(src.control), "counter")["counter"] >= 0


class KillWorker(BaseStep):
    """A real step that makes the worker disappear right before CRIU runs."""

    name = "kill-worker"

    def before_dump(self, ctx) -> None:
        os.kill(ctx.host_pid, signal.SIGKILL)
        while procfs.alive(ctx.host_pid):
            time.sleep(0.01)


def test_worker_gone_mid_checkpoint_fails_clearly(criu_ready, local_root, pods):
    spec, version = criu_ready
    store = Store(local_root / "store")
    src = start_checkpoint_pod(local_root, "src", worker_argv(), key="k-gone")
    pods.append(src)
    src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
    worker = procfs.children_of(src.box.pid)[-1]
    with pytest.raises(CheckpointError, match=f"process {worker} exited during the checkpoint"):
        checkpoint(
            worker, store, key="k-gone", steps=[KillWorker()], spec=spec, criu_version=version
        )
    assert store.names() == []
    assert list(store.staging_root.iterdir()) == []


def test_checkpoint_of_missing_process(criu_ready, local_root):
    spec, version = criu_ready
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint(2**22 + 7, Store(local_root / "s"), spec=spec, criu_version=version)


def test_daemon_reports_failed_checkpoint_to_the_worker(running_agent, local_root, pods):
    """A pod whose container init has no worker child: failure, and the worker is told."""
    from agent.local import _start_pod
    from thaw.contract import ENV_MODE, InjectedMode

    # No PID-offset wrapper: the worker is PID 1, which the agent cannot dump in place.
    pod = _start_pod(
        local_root,
        "bare",
        worker_argv(),
        {"mode": InjectedMode.CHECKPOINT.value, "key": "k-bare"},
        {ENV_MODE: InjectedMode.CHECKPOINT.value},
    )
    pods.append(pod)
    done = json.loads(pod.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
    assert not done["ok"] and "is the command wrapped?" in done["error"]
