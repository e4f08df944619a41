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
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

from thaw.contract import GPU_REGIONS_FILE, GpuInfo, GpuRegions, Manifest

log = logging.getLogger(__name__)


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
    def abort_restore(self, ctx: RestoreContext) -> None: ...


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

    def abort_restore(self, ctx: RestoreContext) -> None:
        """The restore failed after ``before_restore``: undo what it started."""


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


class GpuRegionsStep(BaseStep):
    """Released GPU regions (``sidecar.weights``): described at dump, refilled beside CRIU.

    Dump: the worker's ``GPU_REGIONS_FILE`` (written at quiesce) is checked and
    copied into the snapshot, so the manifest vouches for it. Restore: the
    loader (``agent.gpu_regions``) starts before CRIU, on the placeholder's
    GPU, and waits on the pod's control dir for the resumed worker. It runs on
    its own; a failed restore stops it (``abort_restore``).
    """

    name = "gpu-regions"

    def __init__(self) -> None:
        self.loader: subprocess.Popen | None = None

    def before_dump(self, ctx: DumpContext) -> None:
        from agent.pods import control_via_proc, open_control_file

        try:
            fd = open_control_file(control_via_proc(ctx.host_pid) / GPU_REGIONS_FILE, os.O_RDONLY)
        except OSError:
            return  # the worker released nothing: nothing to describe
        with os.fdopen(fd, "rb") as f:
            raw = f.read(16 << 20)
        spec = GpuRegions.from_json(raw)  # RegionsError: the checkpoint fails with the reason
        (ctx.staging / GPU_REGIONS_FILE).write_text(spec.to_json())
        ctx.timings["gpu_region_bytes"] = float(sum(r.source_bytes for r in spec.regions))

    def before_restore(self, ctx: RestoreContext) -> None:
        spec = ctx.folder / GPU_REGIONS_FILE
        if ctx.into is None or not spec.is_file():
            return
        from agent.gpu_regions import DEFAULT_GENTLE
        from agent.pods import control_via_proc

        argv = [
            sys.executable, "-m", "agent.gpu_regions", "--spec", str(spec),
            "--control", str(control_via_proc(ctx.into)), "--root", f"/proc/{ctx.into}/root",
            "--uid", str(os.stat(f"/proc/{ctx.into}").st_uid),
        ]  # fmt: skip
        argv += ["--gentle", DEFAULT_GENTLE]  # until after_restore: CRIU reads first
        uuid = _placeholder_gpu(ctx.into)
        if uuid:
            argv += ["--device-uuid", uuid]
        self.loader = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._reap, name="gpu-regions-reap", daemon=True).start()

    def after_restore(self, ctx: RestoreContext) -> None:
        if self.loader is not None and self.loader.poll() is None:
            self.loader.send_signal(signal.SIGUSR1)  # CRIU is done: the disk is the loader's

    def _reap(self) -> None:
        if self.loader is not None and self.loader.wait() != 0:
            log.warning("GPU region loader exited with %s", self.loader.returncode)

    def abort_restore(self, ctx: RestoreContext) -> None:
        if self.loader is not None and self.loader.poll() is None:
            self.loader.kill()


def _placeholder_gpu(pid: int) -> str:
    """UUID of the first GPU the placeholder container was given ('' if unknown)."""
    try:
        from agent.cuda_checkpoint import CudaDriver, process_visible_gpus

        gpus = process_visible_gpus(pid, CudaDriver.get().gpus())
    except Exception:  # no driver here: the loader will say so to the worker
        return ""
    return gpus[0].uuid if gpus else ""


def default_steps(gpu_files: bool = False) -> list[Step]:
    """A fresh step list per operation (steps keep per-operation state)."""
    # Regions first: its after_restore (loader to full speed) must not wait for the GPU restore.
    return [GpuRegionsStep(), CudaStep(gpu_files=gpu_files)]
