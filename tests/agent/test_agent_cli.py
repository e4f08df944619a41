"""The low-level `thaw snapshot ...` commands, run as the real console script on real CRIU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent import doctor, procfs
from agent.local import start_checkpoint_pod, start_restore_pod
from tests.support.workers import worker_argv
from thaw import sample_worker
from thaw.contract import CRIU_IMAGES_DIR, Signal

pytestmark = pytest.mark.criu


def thaw(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "thaw.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_plain_process_dump_then_restore_on_host(criu_ready, tmp_path):
    """No container: dump (tree gone afterwards), then restore in the host namespaces."""
    # setsid: a real daemon-like tree (its own session), so it can be restored anywhere.
    script = "import time\nn = 0\nwhile True:\n    n += 1\n    time.sleep(0.01)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.3)
    store = tmp_path / "store"
    out = json.loads(
        thaw(
            "snapshot", "checkpoint", "--pid", str(proc.pid), "--out", str(store), "--key", "k"
        ).stdout
    )
    assert proc.wait(10) == -signal.SIGKILL  # without --leave-running the tree is gone
    assert out["bytes"] > 0 and out["seconds"]["criu_dump_s"] > 0
    folder = store / out["name"]
    assert json.loads(thaw("snapshot", "verify", str(folder)).stdout)["ok"]
    listing = json.loads(thaw("snapshot", "list", str(store)).stdout)["snapshots"]
    assert [s["name"] for s in listing] == [out["name"]]

    restored = json.loads(thaw("snapshot", "restore", str(folder)).stdout)
    pid = restored["pid"]
    try:
        assert pid == proc.pid  # same pid, host namespace
        assert procfs.alive(pid) and "time.sleep" in " ".join(procfs.cmdline(pid))
        assert restored["seconds"]["verify_s"] >= 0 and restored["seconds"]["criu_restore_s"] > 0
    finally:
        os.kill(pid, signal.SIGKILL)
    assert json.loads(thaw("snapshot", "delete", str(store), out["name"]).stdout)
    assert json.loads(thaw("snapshot", "list", str(store)).stdout)["snapshots"] == []


def test_cli_checkpoint_and_restore_into_placeholder(criu_ready, local_root, pods, expected_state):
    src = start_checkpoint_pod(local_root, "src", worker_argv(), key="k-cli")
    pods.append(src)
    src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
    worker = procfs.children_of(src.box.pid)[-1]
    store = local_root / "store"
    out = json.loads(
        thaw(
            "snapshot",
            "checkpoint",
            "--pid",
            str(worker),
            "--out",
            str(store),
            "--key",
            "k-cli",
            "--leave-running",
        ).stdout
    )
    assert procfs.alive(worker)
    inspected = json.loads(thaw("snapshot", "inspect", str(store / out["name"])).stdout)
    assert inspected["root_pid"] == procfs.ns_pids(worker)[-1]

    # request=False: no agent here, the CLI does the agent's job.
    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-cli", request=False)
    pods.append(dst)
    restored = json.loads(
        thaw("snapshot", "restore", str(store / out["name"]), "--into", str(dst.box.pid)).stdout
    )
    assert restored["ns_pid"] == inspected["root_pid"]
    assert procfs.ns_pids(restored["pid"])[-1] == restored["ns_pid"]
    dst.signal_path(Signal.RESTORE_COMPLETE).write_text(json.dumps({"pid": restored["ns_pid"]}))
    os.kill(dst.box.pid, signal.SIGUSR1)
    assert sample_worker.query(str(dst.control), "state")["sha256"] == expected_state


def test_verify_refuses_tampered_snapshot(criu_ready, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.2)
    store = tmp_path / "store"
    out = json.loads(
        thaw("snapshot", "checkpoint", "--pid", str(proc.pid), "--out", str(store)).stdout
    )
    proc.wait(10)
    folder = store / out["name"]
    (folder / CRIU_IMAGES_DIR / "stray.img").write_bytes(b"x")
    bad = thaw("snapshot", "verify", str(folder), check=False)
    assert bad.returncode != 0 and "not in the manifest" in bad.stderr
    rst = thaw("snapshot", "restore", str(folder), check=False)
    assert rst.returncode != 0 and "refused" in rst.stderr
    assert not procfs.alive(proc.pid)  # nothing was restored


# --- thaw agent doctor -------------------------------------------------------------------


def test_doctor_dumps_and_restores_real_sockets(criu_ready):
    report = json.loads(thaw("agent", "doctor").stdout)
    assert report["ok"] and report["criu"] == criu_ready[1], report
    assert [c["name"] for c in report["checks"]] == list(doctor.CHECKS)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert not failed, failed
    assert "tcp, udp, unix answer" in report["checks"][-1]["detail"]


def test_doctor_names_the_failing_check(criu_ready, tmp_path):
    env = {**os.environ, "THAW_CRIU": str(tmp_path / "no-criu")}
    proc = subprocess.run(
        [sys.executable, "-m", "thaw.cli", "agent", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    first, *rest = report["checks"]
    assert first["name"] == "criu-version" and not first["ok"]
    assert "cannot run CRIU" in first["detail"] and "no-criu" in first["detail"]
    assert [c["name"] for c in rest] == list(doctor.CHECKS[1:])
    assert all(not c["ok"] and c["detail"].startswith("skipped") for c in rest)
    assert report["reason"].startswith("criu-version: cannot run CRIU")
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("thaw: doctor: criu-version")


def test_doctor_version_only_for_image_builds(criu_ready):
    report = json.loads(thaw("agent", "doctor", "--version-only").stdout)
    assert report["ok"] and [c["name"] for c in report["checks"]] == ["criu-version"]


def test_agent_refuses_every_pod_when_its_self_test_fails(
    criu_ready, local_root, pods, expected_state, tmp_path
):
    """An agent whose socket self-test cannot run (here: no tools on its PATH to start the
    throw-away server) says why, and every pod goes on cold instead of meeting CRIU."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    agent = subprocess.Popen(
        [sys.executable, "-m", "thaw.cli", "agent", "run", "--local", str(local_root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": str(empty)},
    )
    try:
        src = start_checkpoint_pod(local_root, "src", worker_argv(), key="k-refused")
        pods.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
        assert done["ok"] is False
        assert "socket self-test failed (dump-tcp: cannot start the probe" in done["error"]
        assert "No such file or directory" in done["error"]
        c0 = sample_worker.query(str(src.control), "counter")["counter"]
        time.sleep(0.3)
        assert sample_worker.query(str(src.control), "counter")["counter"] > c0  # resumed

        dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-refused")
        pods.append(dst)
        failed = json.loads(dst.wait_signal(Signal.RESTORE_FAILED, 60))
        assert "socket self-test failed" in failed["reason"]
        state = sample_worker.query(str(dst.control), "state", timeout=60)
        assert state["sha256"] == expected_state  # cold start
        assert "cold start" in dst.box.log()
    finally:
        agent.send_signal(signal.SIGTERM)
        log = agent.communicate(timeout=30)[1]
    assert "every checkpoint and restore is refused" in log, log
    assert not (local_root / "store").exists() or not list((local_root / "store").glob("k-*"))
