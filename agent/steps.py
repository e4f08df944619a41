"""Hooks around CRIU's dump and restore, so work that CRIU cannot do slots in as a step.

A checkpoint runs: ``before_dump`` of every step in order (quiesce, lock,
GPU checkpoint) -> CRIU dump (left running) -> ``after_dump`` of every step
in reverse order, always, with ``ok`` telling whether the dump worked (GPU
restore + unlock so the source keeps serving) -> rootfs capture -> publish.
A restore runs: verify -> ``before_restore`` -> rootfs apply -> CRIU restore
-> ``after_restore`` (GPU restore + unlock of the restored tree).
Steps add what they learned to the context (``gpus``, ``timings``); the
manifest is written from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

from thaw.contract import GpuInfo, Manifest


@dataclasses.dataclass
class DumpContext:
    host_pid: int  # root of the tree, host pid namespace
    ns_pid: int  # the same process in its own pid namespace
    staging: Path  # snapshot folder being built
    gpus: list[GpuInfo] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RestoreContext:
    manifest: Manifest
    folder: Path
    into: int | None  # host pid of the placeholder whose namespaces we restore into
    host_pid: int = 0  # restored root (host pid), set after CRIU restore
    ns_pid: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


class Step(Protocol):
    name: str

    def before_dump(self, ctx: DumpContext) -> None: ...
    def after_dump(self, ctx: DumpContext, ok: bool) -> None: ...
    def before_restore(self, ctx: RestoreContext) -> None: ...
    def after_restore(self, ctx: RestoreContext) -> None: ...


class BaseStep:
    """No-op hooks; subclass and override what you need."""

    name = "base"

    def before_dump(self, ctx: DumpContext) -> None:
        pass

    def after_dump(self, ctx: DumpContext, ok: bool) -> None:
        pass

    def before_restore(self, ctx: RestoreContext) -> None:
        pass

    def after_restore(self, ctx: RestoreContext) -> None:
        pass


class CudaStep(BaseStep):
    """GPU state through the CUDA checkpoint API (``agent.cuda_checkpoint``).

    On a machine without a CUDA driver it finds no CUDA process and does nothing.
    """

    name = "cuda"

    def __init__(self, gpu_files: bool = False) -> None:
        from agent.cuda_checkpoint import CudaCheckpointStep

        self._step = CudaCheckpointStep()
        # Device memory as files in the snapshot instead of through CRIU's pages. Off by
        # default: driver 580 has no custom-storage checkpoint, so this path is unproven.
        self.gpu_files = gpu_files

    def before_dump(self, ctx: DumpContext) -> None:
        if self.gpu_files:
            self._step.state_dir = ctx.staging
        self._step.before_dump(ctx.host_pid)
        ctx.gpus.extend(self._step.gpus)
        ctx.timings.update(self._step.timings)

    def after_dump(self, ctx: DumpContext, ok: bool) -> None:
        if ok:
            self._step.after_dump()
        else:
            self._step.abort()
        ctx.timings.update(self._step.timings)

    def after_restore(self, ctx: RestoreContext) -> None:
        if self.gpu_files:
            self._step.state_dir = ctx.folder
        self._step.after_restore(ctx.host_pid, ctx.manifest.gpus)
        ctx.timings.update(self._step.timings)


def default_steps(gpu_files: bool = False) -> list[Step]:
    """A fresh step list per operation (steps keep per-operation state)."""
    return [CudaStep(gpu_files=gpu_files)]
