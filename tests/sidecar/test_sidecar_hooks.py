"""The engine-side hook protocol, with a real worker process and real signal files.

The agent's side is played by the test writing the files the agent would
write; the thing under test is the worker's library (sidecar.hooks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thaw.contract import ENV_CONTROL_DIR, ENV_MODE, AbandonReason, Signal

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("hook_worker.py")


def start(tmp_path: Path, mode: str | None = "checkpoint", **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_MODE, ENV_CONTROL_DIR)}
    env.update(PYTHONPATH=str(REPO), EVENTS=str(tmp_path / "events"), **extra)
    env[ENV_CONTROL_DIR] = str(tmp_path / "control")
    if mode is not None:
        env[ENV_MODE] = mode
    return subprocess.Popen(
        [sys.executable, str(WORKER)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def events(tmp_path: Path) -> list[str]:
    p = tmp_path / "events"
    return p.read_text().split() if p.exists() else []


def finish(proc: subprocess.Popen) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=30)
    assert out.strip(), f"worker printed nothing; stderr: {err}"
    return proc.returncode, json.loads(out.strip().splitlines()[-1])


def test_checkpoint_then_resume(tmp_path: Path) -> None:
    proc = start(tmp_path)
    ready = tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value
    wait_for(ready)
    payload = json.loads(ready.read_text())
    assert payload["pid"] == proc.pid
    # Quiesced and blocked: nothing after quiesce until the agent answers.
    time.sleep(0.2)
    assert events(tmp_path) == ["quiesce"]
    assert proc.poll() is None
    (tmp_path / "control" / Signal.CHECKPOINT_COMPLETE.value).write_text('{"snapshot": "s1"}')
    rc, out = finish(proc)
    assert rc == 0
    assert out == {"event": "checkpointed", "ok": True, "detail": {"snapshot": "s1"}}
    assert events(tmp_path) == ["quiesce", "resume", "serving"]


def test_restored_copy_resumes_on_restore_complete(tmp_path: Path) -> None:
    proc = start(tmp_path)
    wait_for(tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value)
    (tmp_path / "control" / Signal.RESTORE_COMPLETE.value).write_text('{"pid": 42}')
    rc, out = finish(proc)
    assert rc == 0 and out["event"] == "restored" and out["detail"] == {"pid": 42}
    assert events(tmp_path) == ["quiesce", "resume", "serving"]


def test_failed_checkpoint_still_resumes(tmp_path: Path) -> None:
    proc = start(tmp_path)
    wait_for(tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value)
    (tmp_path / "control" / Signal.CHECKPOINT_COMPLETE.value).write_text(
        '{"ok": false, "error": "criu dump failed"}'
    )
    rc, out = finish(proc)
    assert rc == 0 and out["event"] == "checkpointed" and out["ok"] is False
    assert events(tmp_path) == ["quiesce", "resume", "serving"]


def test_timeout_resumes_and_raises(tmp_path: Path) -> None:
    proc = start(tmp_path, TIMEOUT="0.3")
    rc, out = finish(proc)
    assert rc == 3 and out["error"] == "timeout"
    assert "engine resumed" in out["message"]
    assert events(tmp_path) == ["quiesce", "resume"]
    # Said out loud, so the sidecar stops holding the pod Not Ready and no agent dumps it.
    abandoned = json.loads((tmp_path / "control" / Signal.CHECKPOINT_ABANDONED.value).read_text())
    assert abandoned["reason"] == AbandonReason.HOOK_TIMEOUT and abandoned["by"] == "hook"
    assert "engine resumed" in abandoned["detail"]


def test_abandoned_checkpoint_is_not_waited_for(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / Signal.CHECKPOINT_ABANDONED.value).write_text('{"reason": "warm-window-expired"}')
    rc, out = finish(start(tmp_path))
    assert rc == 0 and out["event"] == "abandoned" and out["ok"] is False
    assert out["detail"] == {"reason": "warm-window-expired"}
    assert events(tmp_path) == ["serving"]  # never quiesced
    assert not (control / Signal.READY_FOR_CHECKPOINT.value).exists()


def test_abandoned_while_waiting_resumes(tmp_path: Path) -> None:
    """The sidecar's checkpoint deadline passed: stop waiting, resume, serve."""
    proc = start(tmp_path)
    wait_for(tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value)
    payload = '{"reason": "checkpoint-deadline", "by": "sidecar"}'
    (tmp_path / "control" / Signal.CHECKPOINT_ABANDONED.value).write_text(payload)
    rc, out = finish(proc)
    assert rc == 0 and out["event"] == "abandoned" and not out["ok"]
    assert out["detail"]["reason"] == "checkpoint-deadline"
    assert events(tmp_path) == ["quiesce", "resume", "serving"]


def test_frozen_time_is_not_counted(tmp_path: Path) -> None:
    """A dumped-then-restored worker sees a clock jump; it must not time out on it."""
    proc = start(tmp_path, TIMEOUT="1.5")
    wait_for(tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(2.5)  # frozen longer than the timeout
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(0.3)
    assert proc.poll() is None, "worker timed out on time it spent frozen"
    (tmp_path / "control" / Signal.RESTORE_COMPLETE.value).write_text("{}")
    rc, out = finish(proc)
    assert rc == 0 and out["event"] == "restored"


def test_without_checkpoint_mode_returns_at_once(tmp_path: Path) -> None:
    for mode in (None, "restore"):  # a cold-started restore-mode pod has nothing to wait for
        proc = start(tmp_path, mode=mode)
        rc, out = finish(proc)
        assert rc == 0 and out["event"] == "skipped"
        assert not (tmp_path / "control").exists()
    assert events(tmp_path) == ["serving", "serving"]


def test_quiesce_failure_is_reported(tmp_path: Path) -> None:
    proc = start(tmp_path, FAIL_QUIESCE="1")
    rc, out = finish(proc)
    assert rc == 4 and "engine refused to quiesce" in out["message"]
    assert not (tmp_path / "control" / Signal.READY_FOR_CHECKPOINT.value).exists()


def test_unwritable_control_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permissions: make the control "dir" a file instead.
        (tmp_path / "control").write_text("not a directory")
    else:
        (tmp_path / "control").mkdir(mode=0o500)
    proc = start(tmp_path)
    rc, out = finish(proc)
    assert rc == 4 and "cannot write ready-for-checkpoint" in out["message"]
    assert events(tmp_path) == ["quiesce", "resume"]


@pytest.mark.parametrize("text", ["", "plain reason", "[1, 2]"])
def test_signal_payload_parsing(tmp_path: Path, text: str) -> None:
    from sidecar.hooks import read_signal

    p = tmp_path / "sig"
    p.write_text(text)
    assert read_signal(p) == ({} if not text else {"message": text})
