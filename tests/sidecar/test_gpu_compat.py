"""GPU compatibility rules, manifest GPU fields and the CUDA step's process discovery (CPU only)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from agent.cuda_checkpoint import (
    CudaCheckpointStep,
    CudaUnavailable,
    GpuIncompatible,
    format_uuid,
    gpu_compat_problem,
    parse_uuid,
    plan_gpu_mapping,
    process_tree,
    uuid_pairs,
)
from thaw.contract import GpuInfo, Manifest

DRV, CUDA = "580.159.04", "13.0"


def gpu(model: str = "NVIDIA H100 80GB HBM3", n: int = 1, driver: str = DRV, cuda: str = CUDA):
    return GpuInfo(model, f"GPU-{n:08x}-0000-0000-0000-000000000000", driver, cuda)


def test_cpu_only_snapshot_fits_anywhere() -> None:
    assert gpu_compat_problem((), ()) is None
    assert plan_gpu_mapping((), (gpu(),)) == []


def test_same_gpu_maps_to_itself_without_remap() -> None:
    a, b = gpu(n=1), gpu(n=2)
    plan = plan_gpu_mapping((b,), (a, b))
    assert plan == [(b, b)] and uuid_pairs(plan) == []


def test_other_card_of_same_model_is_remapped() -> None:
    old, new = gpu(n=1), gpu(n=9)
    assert uuid_pairs(plan_gpu_mapping((old,), (new,))) == [(old.uuid, new.uuid)]


def test_multi_gpu_each_gets_its_own_card() -> None:
    snap = (gpu(n=1), gpu(n=2))
    node = (gpu(n=7), gpu(n=1))
    plan = plan_gpu_mapping(snap, node)
    assert [new.uuid for _, new in plan] == [gpu(n=1).uuid, gpu(n=7).uuid]


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ((), "has none"),
        ((gpu(n=1),), "needs 2 GPUs but this node offers 1"),
        ((gpu(n=1, driver="570.1"), gpu(n=2, driver="570.1")), "driver 570.1 on this node"),
        ((gpu(n=1, cuda="12.8"), gpu(n=2, cuda="12.8")), "CUDA 12.8 on this node"),
        ((gpu("NVIDIA A100", 1), gpu("NVIDIA A100", 2)), "no free NVIDIA H100"),
        (
            (gpu(n=1), gpu("NVIDIA A100", 2)),
            "no free NVIDIA H100 80GB HBM3 on this node (free: NVIDIA A100)",
        ),
    ],
)
def test_incompatible_nodes_are_refused_with_reason(node, words: str) -> None:
    snap = (gpu(n=1), gpu(n=2))
    with pytest.raises(GpuIncompatible, match=re.escape(words)):
        plan_gpu_mapping(snap, node)
    assert words in gpu_compat_problem(snap, node)


def test_uuid_round_trip_and_bad_uuid() -> None:
    raw = bytes(range(16))
    text = format_uuid(raw)
    assert text == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert parse_uuid(text) == raw
    with pytest.raises(ValueError, match="not a GPU UUID"):
        parse_uuid("GPU-xyz")


def test_manifest_carries_gpu_fields() -> None:
    m = Manifest(
        name="s", key="k", created="t", image="i", kernel="6", arch="x86_64",
        criu_version="4.1.1", root_pid=1, gpus=(gpu(n=3),),
    )  # fmt: skip
    back = Manifest.from_json(m.to_json())
    assert back.gpus == (gpu(n=3),)
    assert gpu_compat_problem(back.gpus, (gpu(n=3, driver="999.0"),)) is not None


def test_process_tree_finds_grandchildren() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & (sleep 30 &) ; wait"])
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(proc.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        tree = process_tree(proc.pid)
        assert tree[0] == proc.pid and len(set(tree)) == len(tree)
        assert process_tree(2**22 + 12345) == [2**22 + 12345]  # absent pid: just itself
    finally:
        for pid in reversed(process_tree(proc.pid)):
            subprocess.run(["kill", str(pid)], check=False)
        proc.wait(timeout=10)


def test_step_without_driver_is_a_cpu_checkpoint() -> None:
    def no_driver():
        raise CudaUnavailable("cuInit", "DynamicLibNotFoundError")

    step = CudaCheckpointStep(driver_factory=no_driver)
    assert step.before_dump(1) == []
    step.after_dump()  # nothing to resume
    assert step.after_restore(1, ()) == []
