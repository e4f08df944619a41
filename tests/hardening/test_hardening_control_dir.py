"""The privileged agent's writes into a pod's control dir must not follow the pod's symlinks.

The control dir is an emptyDir the pod's own containers can write. The agent
(root, host PID namespace, host /dev and the store mounted) reaches it from
the host side; a symlink planted there with an absolute target resolves
against the AGENT's root, so following it would let a tenant make the agent
overwrite or read files of the node (here: a file beside the control dir
stands in for them).
"""

from __future__ import annotations

import contextlib

import pytest

from agent.pods import PodRef
from thaw.contract import InjectedMode, Signal


def pod(control) -> PodRef:
    return PodRef(
        uid="u",
        namespace="team-a",
        name="p",
        mode=InjectedMode.RESTORE,
        init_pid=1,
        control=control,
    )


@pytest.fixture
def dirs(tmp_path):
    control, victim = tmp_path / "control", tmp_path / "node-file"
    control.mkdir()
    victim.write_text("node data\n")
    return control, victim


def test_signal_write_does_not_follow_a_planted_tmp_symlink(dirs):
    control, victim = dirs
    (control / f".{Signal.RESTORE_COMPLETE.value}.tmp").symlink_to(victim)
    with contextlib.suppress(OSError):  # refusing is fine
        pod(control).write(Signal.RESTORE_COMPLETE, {"pid": 7})
    assert victim.read_text() == "node data\n"


def test_signal_read_does_not_follow_a_planted_symlink(dirs):
    control, victim = dirs
    (control / Signal.READY_FOR_CHECKPOINT.value).symlink_to(victim)
    assert "node data" not in pod(control).read(Signal.READY_FOR_CHECKPOINT)


def test_signal_write_replaces_a_planted_final_symlink_without_following_it(dirs):
    """The rename step already replaces the link itself (kept as a regression test)."""
    control, victim = dirs
    (control / Signal.RESTORE_FAILED.value).symlink_to(victim)
    pod(control).write(Signal.RESTORE_FAILED, "cold start\n")
    assert victim.read_text() == "node data\n"
    assert (control / Signal.RESTORE_FAILED.value).read_text() == "cold start\n"


def test_pod_lock_does_not_create_files_through_a_planted_symlink(tmp_path, dirs):
    """A dangling symlink as the lock file would make the root agent create the target."""
    import threading
    import types

    from agent.daemon import Agent
    from thaw.contract import AGENT_LOCK_FILE

    control, _ = dirs
    planted = tmp_path / "node-dir" / "created-by-agent"
    planted.parent.mkdir()
    (control / AGENT_LOCK_FILE).symlink_to(planted)
    agent = types.SimpleNamespace(_stop=threading.Event())  # pod_lock only reads _stop
    with contextlib.suppress(OSError), Agent.pod_lock(agent, pod(control)):
        pass
    assert not planted.exists()
