"""The real agent (local pods, real CRIU) checkpoints and restores a CUDA worker.

This is the CUDA step inside the agent's pipeline (``agent.steps.CudaStep``):
lock + checkpoint before the dump, source resumed after it, restore + unlock
after CRIU restores the tree into a fresh placeholder container.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.cuda_checkpoint import CudaDriver
from thaw.contract import MANIFEST_FILE, Manifest, Signal

REPO = Path(__file__).resolve().parents[2]

# Keeps 64 MiB on the GPU; after each checkpoint/restore writes whether it is intact.
WORKER = textwrap.dedent(
    """
    import json, os, time, torch
    from pathlib import Path
    from sidecar import hooks
    x = torch.arange(16 << 20, device="cuda", dtype=torch.float32)
    want = float(x.double().sum())
    ctl = Path(os.environ["THAW_CONTROL_DIR"])
    out = hooks.wait_for_checkpoint_or_restore(timeout_s=600)
    ok = float((x * 1).double().sum()) == want
    (ctl / f"result-{out.event}").write_text(json.dumps({"ok": ok}))
    while True:
        time.sleep(1)
    """
)


def wait_json(path: Path, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.mark.criu
def test_agent_checkpoints_and_restores_a_cuda_worker(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root for CRIU")
    from agent import criu
    from agent.local import start_agent, start_checkpoint_pod, start_restore_pod

    try:
        criu.require(check_kernel=False)
    except criu.CriuMissing as e:
        pytest.skip(str(e))
    env = {"PYTHONPATH": str(REPO), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    argv = [sys.executable, "-c", WORKER]
    agent = start_agent(tmp_path)
    pods = []
    try:
        src = start_checkpoint_pod(tmp_path, "src", argv, key="k-gpu", env=env)
        pods.append(src)
        done = json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 300))
        assert done["ok"], done
        assert wait_json(src.control / "result-checkpointed")["ok"]  # source serves on
        manifest = Manifest.from_json(
            (tmp_path / "store" / done["snapshot"] / MANIFEST_FILE).read_text()
        )
        assert manifest.gpus and set(manifest.gpus) <= set(CudaDriver.get().gpus())

        dst = start_restore_pod(tmp_path, "dst", [sys.executable, "-c", "pass"], key="k-gpu")
        pods.append(dst)
        complete = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 300))
        assert not dst.signal_path(Signal.RESTORE_FAILED).exists(), complete
        assert wait_json(dst.control / "result-restored")["ok"]  # device memory intact
    finally:
        for p in pods:
            p.stop()
        agent.stop(wait=True)
