"""thaw.launch's shell launchers, run for real as PID 1 of namespace containers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from agent import procfs
from agent.local import start_checkpoint_pod, start_restore_pod
from tests.support.workers import worker_argv
from thaw import launch, sample_worker
from thaw.contract import ENV_RESTORE_TIMEOUT, Signal

pytestmark = pytest.mark.criu


def test_wrapper_starts_worker_as_child_past_the_pid_offset(criu_ready, local_root, pods):
    pod = start_checkpoint_pod(local_root, "src", worker_argv(), key="k")
    pods.append(pod)
    pod.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
    assert procfs.ns_pids(pod.box.pid)[-1] == 1
    assert procfs.cmdline(pod.box.pid)[:2] == [launch.SHELL, "-c"]
    (worker,) = [k for k in procfs.children_of(pod.box.pid) if procfs.alive(k)]
    assert procfs.ns_pids(worker)[-1] > launch.PID_OFFSET
    assert "thaw.sample_worker" in procfs.cmdline(worker)


def test_placeholder_times_out_into_a_cold_start(criu_ready, local_root, pods, expected_state):
    pod = start_restore_pod(
        local_root, "dst", worker_argv(), key="k", request=False, env={ENV_RESTORE_TIMEOUT: "1"}
    )
    pods.append(pod)
    t0 = time.monotonic()
    assert sample_worker.query(str(pod.control), "state", timeout=60)["sha256"] == expected_state
    assert time.monotonic() - t0 >= 1
    assert "cold start" in pod.box.log()


def test_placeholder_falls_back_on_restore_failed(criu_ready, local_root, pods, expected_state):
    pod = start_restore_pod(local_root, "dst", worker_argv(), key="k", request=False)
    pods.append(pod)
    time.sleep(0.3)
    assert procfs.cmdline(pod.box.pid)[3] == launch.PLACEHOLDER_ARGV0  # still waiting
    (pod.control / Signal.RESTORE_FAILED.value).write_text("test says no\n")
    os.kill(pod.box.pid, signal.SIGUSR1)
    assert sample_worker.query(str(pod.control), "state", timeout=60)["sha256"] == expected_state
    assert "thaw.sample_worker" in procfs.cmdline(pod.box.pid)  # exec'd in place of PID 1


def test_agent_sees_when_the_placeholder_can_take_sigusr1(criu_ready, local_root, pods):
    """The agent signals only a placeholder that has trapped SIGUSR1 (else it would die)."""
    pod = start_restore_pod(local_root, "dst", worker_argv(), key="k", request=False)
    pods.append(pod)
    deadline = time.monotonic() + 10
    while not procfs.catches(pod.box.pid, signal.SIGUSR1):
        assert time.monotonic() < deadline, "placeholder never trapped SIGUSR1"
        time.sleep(0.01)
    (timer,) = procfs.children_of(pod.box.pid)  # the placeholder's sleep: default handlers
    assert not procfs.catches(timer, signal.SIGUSR1)
