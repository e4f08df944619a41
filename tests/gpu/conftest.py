"""GPU tests run only where an NVIDIA GPU and a working CUDA driver are present."""

from __future__ import annotations

import shutil

import pytest


def _gpu_problem() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi: not a GPU machine"
    from agent.cuda_checkpoint import CudaDriver, CudaUnavailable

    try:
        CudaDriver.get()
    except CudaUnavailable as e:
        return f"CUDA driver unusable: {e}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if "tests/gpu/" in str(i.fspath).replace("\\", "/")]
    if not gpu_items:
        return
    problem = _gpu_problem()
    for item in gpu_items:
        item.add_marker(pytest.mark.gpu)
        if problem:
            item.add_marker(pytest.mark.skip(reason=problem))
