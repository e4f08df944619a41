"""Checkpoint faults on real CRIU: a full store, CRIU killed mid-dump, two agents racing.

Each fault must end the same way for the source pod: ``checkpoint-complete``
is written (``ok: false`` with a reason a person can act on), the worker
resumes and answers, none of its tasks is left stopped or traced, and the
store holds no snapshot and no staging leftovers.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import procfs
from agent.daemon import Agent
from agent.local import LocalPods, LocalSink, read_events, start_checkpoint_pod
from agent.store import Store
from tests.support.snapshots import swrk_below
from tests.support.workers import SEED, worker_argv
from thaw import sample_worker
from thaw.contract import CRIU_IMAGES_DIR, STORE_STAGING_DIR, Signal

pytestmark = pytest.mark.criu
STATE_MB = 64  # the store below is 16 MiB: the memory image cannot fit


@pytest.fixture
def root(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def assert_worker_serves(pod) -> None:
    """The source resumed: not stopped, not traced, counting, memory intact."""
    worker = procfs.children_of(pod.box.pid)[-1]
    for tid in os.listdir(f"/proc/{worker}/task"):
        status = Path(f"/proc/{worker}/task/{tid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert not fields["State"].startswith(("T", "t")), f"task {tid}: {fields['State']}"
        assert fields["TracerPid"].strip() == "0", f"task {tid} still traced"
    c0 = sample_worker.query(str(pod.control), "counter")["counter"]
    time.sleep(0.3)
    assert sample_worker.query(str(pod.control), "counter")["counter"] > c0
    state = sample_worker.query(str(pod.control), "state")["sha256"]
    assert state == sample_worker.expected_sha256(SEED, STATE_MB)


def assert_store_empty(store: Path) -> None:
    assert [p.name for p in store.iterdir()] == [STORE_STAGING_DIR]
    assert list((store / STORE_STAGING_DIR).iterdir()) == []


def test_store_full_fails_clearly_and_source_keeps_serving(criu_ready, root, pods, agents):
    store = root / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "thaw-full", str(store)], check=True)
    try:
        agents(root, store)
        src = start_checkpoint_pod(root, "src", worker_argv(state_mb=STATE_MB), key="k-full")
        pods.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
        assert done["ok"] is False
        assert "no space left on the snapshot store" in done["error"], done["error"]
        assert str(store) in done["error"]
        assert_store_empty(store)  # the partial images were removed: the space is back
        assert os.statvfs(store).f_bfree * os.statvfs(store).f_frsize > 15 << 20
        assert_worker_serves(src)
        events = [e["event"] for e in read_events(root, "src")]
        assert events == ["Checkpointing", "Failed"]  # never Ready
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def test_criu_killed_mid_dump_leaves_source_running(criu_ready, root, pods, agents):
    store = root / "store"
    agents(root, store)
    killed: list[int] = []

    def kill_criu_while_it_writes_pages() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            swrk = swrk_below(os.getpid())
            if swrk is None:
                time.sleep(0.002)
                continue
            pattern = str(store / STORE_STAGING_DIR / "*" / CRIU_IMAGES_DIR / "pages-*.img")
            while not glob.glob(pattern) and procfs.alive(swrk):
                pass  # CRIU is dumping memory now: the worker is frozen, the parasite inside
            os.kill(swrk, signal.SIGKILL)
            killed.append(swrk)
            return

    killer = threading.Thread(target=kill_criu_while_it_writes_pages, daemon=True)
    killer.start()
    src = start_checkpoint_pod(root, "src", worker_argv(state_mb=STATE_MB), key="k-kill")
    pods.append(src)
    done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
    killer.join(5)
    assert killed, "criu never ran"
    assert done["ok"] is False
    assert "criu was killed by SIGKILL during the dump" in done["error"], done["error"]
    assert_store_empty(store)
    assert_worker_serves(src)
    assert [e["event"] for e in read_events(root, "src")] == ["Checkpointing", "Failed"]


def test_two_agents_take_one_checkpoint(criu_ready, root, pods):
    """Two agent processes over one pods dir: the pod lock lets exactly one dump it."""
    store = root / "store"
    cmd = [sys.executable, "-m", "thaw.cli", "agent", "run", "--local", str(root)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        time.sleep(1.5)  # both polling before the pod asks
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        src = start_checkpoint_pod(root, "src", worker_argv(state_mb=16), key="k-race")
        pods.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 90))
        assert done["ok"], done
        time.sleep(2)  # the loser would have started by now
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=30)[1] for p in procs]
    assert Store(store).names() == [done["snapshot"]], logs
    events = [e["event"] for e in read_events(root, "src")]
    assert events == ["Checkpointing", "Ready"], logs
    assert sum("already done by another agent" in log for log in logs) == 1, logs


def test_pod_lock_is_one_lock_whichever_way_the_control_dir_is_reached(criu_ready, root, pods):
    """In a cluster the agent reaches the control dir through /proc/<init>/root (as KubePods
    does), a second agent may reach it through the volume's host path: still one lock."""
    from agent.pods import PodRef, control_via_proc
    from thaw.contract import InjectedMode

    src = start_checkpoint_pod(root, "src", worker_argv(state_mb=16), key="k-lock")
    pods.append(src)
    src.wait_signal(Signal.READY_FOR_CHECKPOINT, 60)
    via_proc = control_via_proc(src.box.pid)
    assert via_proc != src.control  # two paths, one directory
    assert (via_proc / Signal.READY_FOR_CHECKPOINT.value).exists()

    def ref(control: Path) -> PodRef:
        return PodRef("uid", "ns", "src", InjectedMode.CHECKPOINT, src.box.pid, control)

    first = Agent(LocalPods(root / "none"), LocalSink(root), Store(root / "store"))
    second = Agent(LocalPods(root / "none"), LocalSink(root), Store(root / "store"))
    got = threading.Event()
    try:
        with first.pod_lock(ref(via_proc)) as fd:
            assert fd is not None and fd >= 0

            def take() -> None:
                with second.pod_lock(ref(src.control)) as fd2:
                    assert fd2 is not None and fd2 >= 0
                    got.set()

            waiter = threading.Thread(target=take, daemon=True)
            waiter.start()
            assert not got.wait(0.5), "the second agent got the lock while the first held it"
        assert got.wait(5), "the lock was not handed on"
        waiter.join(5)
    finally:
        first.stop()
        second.stop()
