"""The CUDA checkpoint step on a real GPU process (lock, checkpoint, restore, unlock)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cuda_checkpoint import (
    CudaCheckpointError,
    CudaCheckpointStep,
    CudaDriver,
    ProcessState,
    plan_gpu_mapping,
    process_tree,
    uuid_pairs,
)

REPO = Path(__file__).resolve().parents[2]

# A CUDA worker under a shell (the CUDA process is not the tree's root): answers "sum" with
# a checksum of a 256 MiB tensor it keeps on the GPU.
WORKER = textwrap.dedent(
    """
    import sys, torch
    x = torch.arange(64 << 20, device="cuda", dtype=torch.float32)
    expected = float(x.double().sum())
    print("ready", flush=True)
    for line in sys.stdin:
        print(float(x.double().sum()) == expected, flush=True)
    """
)


@pytest.fixture
def cuda_tree():
    proc = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0"; :', WORKER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    for pid in reversed(process_tree(proc.pid)):
        subprocess.run(["kill", "-9", str(pid)], check=False)
    proc.wait(timeout=30)


def ask(proc: subprocess.Popen) -> str:
    proc.stdin.write("sum\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_gpus_are_described() -> None:
    gpus = CudaDriver.get().gpus()
    assert gpus, "a GPU machine with no GPU"
    for g in gpus:
        assert g.model and re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", g.uuid)
        assert re.fullmatch(r"\d+\.\d+(\.\d+)*", g.driver_version), g.driver_version
        assert re.fullmatch(r"\d+\.\d+", g.cuda_version)
    assert uuid_pairs(plan_gpu_mapping(gpus, gpus)) == []


def test_checkpoint_and_resume_in_place(cuda_tree: subprocess.Popen) -> None:
    driver = CudaDriver.get()
    tree = process_tree(cuda_tree.pid)
    assert driver.state(cuda_tree.pid) is None  # the shell is not a CUDA process
    cuda_pids = [p for p in tree if driver.state(p) is not None]
    assert len(cuda_pids) == 1 and cuda_pids[0] != cuda_tree.pid
    assert driver.state(cuda_pids[0]) == ProcessState.RUNNING
    step = CudaCheckpointStep(lock_timeout_s=10)
    assert step.before_dump(cuda_tree.pid) == cuda_pids
    assert driver.state(cuda_pids[0]) == ProcessState.CHECKPOINTED
    assert step.gpus and step.timings["cuda_checkpoint_s"] >= 0
    driver.restore_thread_id(cuda_pids[0])  # answers while checkpointed
    step.after_dump()
    assert driver.state(cuda_pids[0]) == ProcessState.RUNNING
    assert ask(cuda_tree) == "True"  # device memory came back intact


def test_errors_carry_the_cuda_name(cuda_tree: subprocess.Popen) -> None:
    driver = CudaDriver.get()
    cuda_pid = next(p for p in process_tree(cuda_tree.pid) if driver.state(p) is not None)
    with pytest.raises(CudaCheckpointError, match=r"cuCheckpointProcessUnlock .* CUDA_ERROR_\w+"):
        driver.unlock(cuda_pid)  # not locked: illegal state
    with pytest.raises(CudaCheckpointError, match=r"CUDA_ERROR_\w+"):
        driver.checkpoint(os.getpid())  # this test process has no CUDA state
    assert ask(cuda_tree) == "True"


def test_checkpoint_to_files_and_back(cuda_tree: subprocess.Popen, tmp_path: Path) -> None:
    """Custom storage: device memory goes to gpu-<n>.bin and comes back from it."""
    from agent.gpu_storage import supported

    if not supported(CudaDriver.get()):
        pytest.skip("custom-storage checkpoint needs newer CUDA bindings and driver than these")
    step = CudaCheckpointStep(lock_timeout_s=10, state_dir=tmp_path)
    (pid,) = step.before_dump(cuda_tree.pid)
    assert CudaDriver.get().state(pid) == ProcessState.CHECKPOINTED
    blob = tmp_path / "gpu-0.bin"
    assert blob.stat().st_size >= 256 << 20  # the 256 MiB tensor is in the file
    step.after_dump()
    assert CudaDriver.get().state(pid) == ProcessState.RUNNING
    assert step.timings["gpu_copy_s"] >= 0
    assert ask(cuda_tree) == "True"


def test_files_fall_back_to_host_path_where_unsupported(
    cuda_tree: subprocess.Popen, tmp_path: Path
) -> None:
    """Asked for GPU state files on a driver without custom storage: still checkpoints."""
    from agent.gpu_storage import supported

    if supported(CudaDriver.get()):
        pytest.skip("custom storage is supported here")
    step = CudaCheckpointStep(lock_timeout_s=10, state_dir=tmp_path)
    assert len(step.before_dump(cuda_tree.pid)) == 1
    assert step.state_dir is None and not list(tmp_path.iterdir())
    step.after_dump()
    assert ask(cuda_tree) == "True"
