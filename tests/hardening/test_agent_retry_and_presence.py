"""A failed dump is tried again; a node without an agent cold-starts restore pods at once.

Real agent (local pods, real CRIU), real sample workers, the real restore init step
and the real placeholder script.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from agent.checkpoint import CheckpointError
from agent.daemon import Agent
from agent.local import LocalPods, LocalSink, read_events, start_checkpoint_pod, start_restore_pod
from agent.steps import BaseStep
from agent.store import Store
from sidecar.restore_init import run_restore_init
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import AGENT_HEARTBEAT_DIR, Signal

pytestmark = pytest.mark.criu
STATE_MB = 16


@pytest.fixture
def root(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


class FailingDumps(BaseStep):
    """Fails the first ``fails`` dumps before CRIU runs, like a busy device would."""

    def __init__(self, counter: list[int], fails: int) -> None:
        self.counter, self.fails = counter, fails

    def before_dump(self, ctx) -> None:
        self.counter[0] += 1
        if self.counter[0] <= self.fails:
            raise CheckpointError(f"device busy (attempt {self.counter[0]})")


def start(root, store, fails: int, attempts: int = 3, backoff=(0.5, 0.5)) -> Agent:
    counter = [0]
    agent = Agent(
        LocalPods(root),
        LocalSink(root),
        Store(store),
        node="test",
        steps=lambda: [FailingDumps(counter, fails)],
        checkpoint_attempts=attempts,
        checkpoint_backoff_s=backoff,
    )
    agent.counter = counter  # type: ignore[attr-defined]
    threading.Thread(target=agent.run, daemon=True).start()
    return agent


def serves(pod) -> bool:
    c0 = sample_worker.query(str(pod.control), "counter")["counter"]
    time.sleep(0.3)
    return sample_worker.query(str(pod.control), "counter")["counter"] > c0


def test_failed_dump_is_retried_and_succeeds(criu_ready, root, pods):
    agent = start(root, root / "store", fails=1, backoff=(1.5,))
    try:
        src = start_checkpoint_pod(root, "src", worker_argv(state_mb=STATE_MB), key="k-retry")
        pods.append(src)
        src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
        deadline = time.monotonic() + 60
        while agent.counter[0] < 1:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # between the attempts: the source is not told, and it serves
        assert not src.signal_path(Signal.CHECKPOINT_COMPLETE).exists()
        assert serves(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
        assert done["ok"], done
        assert agent.counter[0] == 2  # type: ignore[attr-defined]
        assert Store(root / "store").names() == [done["snapshot"]]
        events = [e["event"] for e in read_events(root, "src")]
        assert events == ["Checkpointing", "Failed", "Checkpointing", "Ready"], events
        assert serves(src)
    finally:
        agent.stop(wait=True)


def test_dump_that_keeps_failing_gives_up_after_the_last_attempt(criu_ready, root, pods):
    agent = start(root, root / "store", fails=99, attempts=3, backoff=(0.5, 1.0))
    try:
        src = start_checkpoint_pod(root, "src", worker_argv(state_mb=STATE_MB), key="k-give-up")
        pods.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
        assert done["ok"] is False and "device busy (attempt 3)" in done["error"], done
        time.sleep(1.5)  # no fourth attempt
        assert agent.counter[0] == 3  # type: ignore[attr-defined]
        assert Store(root / "store").names() == []
        assert serves(src)
    finally:
        agent.stop(wait=True)


def run_init(store, snapshot: str, control, wait_s: float):
    t0 = time.monotonic()
    init = run_restore_init(store, snapshot, control, gpus=lambda: (), agent_wait_s=wait_s)
    return init, time.monotonic() - t0


def test_restore_pod_cold_starts_at_once_without_an_agent(criu_ready, root, pods, agents):
    store = root / "store"
    agent = agents(root, store)
    src = start_checkpoint_pod(root, "src", worker_argv(state_mb=STATE_MB), key="k-p")
    pods.append(src)
    done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
    assert done["ok"], done
    heartbeat = store / AGENT_HEARTBEAT_DIR / "test.json"
    assert not heartbeat.exists()  # no restore pod on the node: the store is left alone

    # With the agent: the restore pod is on the node, the init step finds the agent's
    # heartbeat, makes the request, and the agent restores.
    dst = start_restore_pod(root, "dst", worker_argv(state_mb=STATE_MB), key="k-p", request=False)
    pods.append(dst)
    init, took = run_init(store, done["snapshot"], dst.control, 15)
    assert init.signal == Signal.RESTORE_REQUESTED and took < 10, init
    restored = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 90))
    assert restored["pid"] > 1
    assert heartbeat.exists()

    # The node's agent goes away: the next restore pod knows within seconds and starts
    # cold (the cluster's order: the init step first, then the placeholder).
    agent.stop(wait=True)
    assert not heartbeat.exists()
    control = root / "cold" / "control"
    control.mkdir(parents=True)
    init, took = run_init(store, done["snapshot"], control, 3)
    assert init.signal == Signal.RESTORE_FAILED and took < 6, (init, took)
    assert "no thaw agent on this node" in init.payload["reason"]
    t0 = time.monotonic()
    cold = start_restore_pod(root, "cold", worker_argv(state_mb=STATE_MB), key="k-p", request=False)
    pods.append(cold)
    state = sample_worker.query(str(cold.control), "state", timeout=60)["sha256"]
    assert state == sample_worker.expected_sha256(SEED, STATE_MB)
    assert time.monotonic() - t0 < 30  # not the placeholder's 600 s restore timeout
    assert "cold start" in cold.box.log()
