"""The real agent (local pods, real CRIU) checkpoints and restores a CUDA worker.

This is the CUDA step inside the agent's pipeline (``agent.steps.CudaStep``):
lock + checkpoint before the dump, source resumed after it, restore + unlock
after CRIU restores the tree into a fresh placeholder container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


def wait_json(path: Path, pod, timeout: float = 240) -> dict:
    """Wait for a file the pod writes; fail at once (with its log) if the pod died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert pod.box.alive(), f"{pod.name} died:\n{pod.box.log()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared:\n{pod.box.log()}"
        time.sleep(0.05)
    return json.loads(path.read_text())


def driver_libs_for_boxes() -> dict[str, str]:
    """Env that lets a sandbox box find the CUDA driver library.

    The boxes' root is an overlay of the host's ``/``, which does not show other
    mounts; where the driver's libraries live on their own mount (as on GPU hosts
    that bind them in), copy them to a folder the overlay shows. In Kubernetes the
    NVIDIA container toolkit mounts them into the container instead.
    """
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    libcuda = next(
        (line.split("=>")[1].strip() for line in out.splitlines() if "libcuda.so.1 " in line), ""
    )
    if not libcuda:
        return {}
    src = Path(os.path.realpath(libcuda)).parent
    if os.stat(src).st_dev == os.stat("/").st_dev:
        return {"LD_LIBRARY_PATH": str(src)}
    dst = REPO / ".bench-work" / "nvlib"
    dst.mkdir(parents=True, exist_ok=True)
    wanted = ("libcuda.so", "libnvidia-ptxjitcompiler", "libnvidia-nvvm")
    for lib in src.iterdir():
        if lib.name.startswith(wanted) and not (dst / lib.name).exists():
            shutil.copy2(lib, dst / lib.name, follow_symlinks=True)
    return {"LD_LIBRARY_PATH": str(dst)}


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
    env = {"PYTHONPATH": str(REPO), **driver_libs_for_boxes()}
    argv = [sys.executable, "-c", WORKER]
    agent = start_agent(tmp_path)
    pods = []
    try:
        src = start_checkpoint_pod(tmp_path, "src", argv, key="k-gpu", env=env)
        pods.append(src)
        done = wait_json(src.control / Signal.CHECKPOINT_COMPLETE.value, src)
        assert done["ok"], done
        assert wait_json(src.control / "result-checkpointed", src)["ok"]  # source serves on
        manifest = Manifest.from_json(
            (tmp_path / "store" / done["snapshot"] / MANIFEST_FILE).read_text()
        )
        assert manifest.gpus and set(manifest.gpus) <= set(CudaDriver.get().gpus())

        dst = start_restore_pod(tmp_path, "dst", [sys.executable, "-c", "pass"], key="k-gpu")
        pods.append(dst)
        complete = dst.wait_signal(Signal.RESTORE_COMPLETE, 240)
        assert not dst.signal_path(Signal.RESTORE_FAILED).exists(), complete
        assert wait_json(dst.control / "result-restored", dst)["ok"]  # device memory intact
    finally:
        for p in pods:
            p.stop()
        agent.stop(wait=True)
