"""A SIGKILLed session leaves pods in their cgroups; the next session must clean them up."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import cluster
import pytest

pytestmark = pytest.mark.node


@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: root only")
def test_stale_session_is_reaped_and_live_one_kept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix="thaw-node-"))
    live = Path(tempfile.mkdtemp(prefix="thaw-node-"))
    (stale / "holder.pid").write_text(str(dead.pid))
    (live / "holder.pid").write_text(str(os.getpid()))
    stale_root = "/thaw-" + stale.name.removeprefix("thaw-node-").lower().replace("_", "")
    pod_cgroup = cluster.CGROUP_HIERARCHIES / "pids" / stale_root.lstrip("/") / "kubepods" / "pod1"
    pod_cgroup.mkdir(parents=True)
    # A "pod" that outlived its session: a real process inside the stale cgroup tree.
    orphan = subprocess.Popen(["sleep", "300"])
    try:
        (pod_cgroup / "cgroup.procs").write_text(str(orphan.pid))
        reaped = cluster.reap_stale_sessions()
        assert str(stale) in reaped and str(live) not in reaped
        assert orphan.wait(timeout=10) == -9  # SIGKILLed by the reaper
        assert not (cluster.CGROUP_HIERARCHIES / "pids" / stale_root.lstrip("/")).exists()
        assert not stale.exists() and live.exists()
    finally:
        orphan.kill()
        orphan.wait()
        for d in (pod_cgroup, pod_cgroup.parent, pod_cgroup.parent.parent):
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        subprocess.run(["rm", "-rf", str(stale), str(live)], check=False)
