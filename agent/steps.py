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
import subprocess
import threading
from pathlib import Path
from typing import Protocol

from thaw.contract import (
    FILE_PAGES_FILE,
    GPU_REGIONS_FILE,
    GpuInfo,
    GpuRegions,
    Manifest,
    RegionsError,
)

log = logging.getLogger(__name__)

# The restore's reader pool (agent.gpu_regions): reads of 4 MiB, 4 in flight while CRIU
# restores (its own synchronous reads then wait behind 16 MiB of queue, not 256 MiB), 16 once
# it is done and the weights have the disk to themselves (measured on H100 nodes with
# bench/gpu_restore.py --explore: 1.55 GB/s instead of 1.30 for the rest of the weights).
RESTORE_READERS = 16
RESTORE_READERS_BESIDE_CRIU = 4
RESTORE_CHUNK = 4 << 20
# The agent itself asks the kernel for the whole read order (agent.file_pages.advise) the moment
# the reader process is spawned, then for the weights, in one stream with at most RESTORE_DEPTH
# asked for and not yet read: the disk reads at full speed while that process starts (~0.1 s) and
# brings up CUDA (~0.3-0.5 s), and a synchronous read (CRIU's own, a process's start) waits behind
# 64 MiB, not behind the disk's whole queue. The loader copies the first RESTORE_CACHED bytes of
# weights from the page cache and reads any rest with O_DIRECT. Measured on H100 nodes
# (bench/results/gpu-restore.md): restores of 2.18 s median with a 64 MiB bound, 2.26 s with
# 256 MiB, 2.37-2.46 s unbounded, 2.64 s with the agent's former 512 MiB prime.
RESTORE_DEPTH = 64 << 20
# The bound for the weights' part of the stream, which only the loader waits for: deeper, since
# the loader's readers stop until its CUDA context is up (0.8-2 s into a restore) and the stream
# alone then keeps the disk busy. Measured on an H100 node (bench/results/gpu-restore.md,
# session 7): restores of 2.71-2.97 s with 256 MiB, 3.06-3.36 s with 64 MiB, interleaved.
RESTORE_WEIGHTS_DEPTH = 256 << 20
RESTORE_CACHED = 32 << 30
# Page-cache reads the loader asks for ahead of its own readers (agent.gpu_regions._Hints): off,
# the agent's stream is ahead of them (2.36 s with 64 MiB of hints and a 128 MiB bound).
RESTORE_HINT = 0
# Past RESTORE_CACHED: 0, the weights are read by the loader's pool; N, by one sequential stream of
# N O_DIRECT reads in flight behind the read list (agent.gpu_regions, --direct-inflight).
RESTORE_DIRECT_INFLIGHT = 0


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


class FilePagesStep(BaseStep):
    """Record the file pages the tree has mapped, so a restore can read them ahead in order.

    Advisory: a tree that cannot be read (gone, no permission) records nothing,
    and the restore then just faults the pages in as before (``agent.file_pages``).
    """

    name = "file-pages"

    def before_dump(self, ctx: DumpContext) -> None:
        import time

        from agent import file_pages, procfs

        t = time.monotonic()
        pages = file_pages.record(procfs.process_tree(ctx.host_pid))
        (ctx.staging / FILE_PAGES_FILE).write_text(pages.to_json())
        ctx.timings["file_pages_s"] = time.monotonic() - t
        ctx.timings["file_pages_bytes"] = float(pages.bytes)


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
        self.reads: Path | None = None
        self.criu_running: int | None = None  # held open until CRIU is done (loader's pace)
        self.stop_reads = threading.Event()

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
        import tempfile

        from agent import file_pages, gpu_regions, loader_standby, working_set
        from agent.loader_standby import FD_TOKEN
        from agent.pods import control_via_proc

        # One stream, one order: what CRIU reads, the pages the resumed worker faults in
        # (the learned working set once there is one), then the regions' bytes. At most
        # RESTORE_DEPTH in flight keeps each of CRIU's own synchronous reads short; the disk
        # is still kept busy (bench/results/gpu-restore.md). The loader reads the same order
        # behind the stream, mostly from the page cache.
        learned = working_set.load(ctx.folder)
        order = file_pages.restore_reads(ctx.folder, learned=learned)
        try:
            regions = GpuRegions.from_json(spec.read_bytes())
            cached = gpu_regions.cached_ranges(regions, RESTORE_CACHED, RESTORE_CHUNK)
        except (OSError, RegionsError):  # the loader says why and the worker reads its files
            cached = []
        if learned is not None:
            ctx.timings["working_set_bytes"] = float(file_pages.total_bytes(learned))
        fd, reads = tempfile.mkstemp(prefix="thaw-reads-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(file_pages.to_json(order))
        self.reads = Path(reads)
        done_r, self.criu_running = os.pipe()
        args = [
            "--spec", str(spec),
            "--control", str(control_via_proc(ctx.into)), "--root", f"/proc/{ctx.into}/root",
            "--uid", str(os.stat(f"/proc/{ctx.into}").st_uid), "--first", reads,
            "--readers", str(RESTORE_READERS), "--chunk-mib", str(RESTORE_CHUNK >> 20),
            "--gentle", str(RESTORE_READERS_BESIDE_CRIU), "--gentle-until-eof", FD_TOKEN % 0,
            "--hint-mib", str(RESTORE_HINT >> 20), "--cached-mib", str(RESTORE_CACHED >> 20),
            "--direct-inflight", str(RESTORE_DIRECT_INFLIGHT),
        ]  # fmt: skip
        uuid = _placeholder_gpu(ctx.into)
        if uuid:
            args += ["--device-uuid", uuid]
        try:  # the agent's standby loader when one is up (driver already initialised)
            self.loader = loader_standby.spawn(args, [done_r], loader_standby.shared())
        except OSError:
            self.reads.unlink(missing_ok=True)
            self._criu_done()
            raise
        finally:
            os.close(done_r)
        # After the spawn: measured, a spawn waits behind a prime already under way.
        threading.Thread(
            target=file_pages.advise_parts,
            args=([(order, RESTORE_DEPTH), (cached, RESTORE_WEIGHTS_DEPTH)],),
            kwargs={"root": Path(f"/proc/{ctx.into}/root"), "stop": self.stop_reads},
            name="restore-reads",
            daemon=True,
        ).start()
        threading.Thread(target=self._reap, name="gpu-regions-reap", daemon=True).start()

    def after_restore(self, ctx: RestoreContext) -> None:
        self._criu_done()  # the weights get the disk to themselves

    def _criu_done(self) -> None:
        if self.criu_running is not None:
            os.close(self.criu_running)
            self.criu_running = None

    def _reap(self) -> None:
        if self.loader is not None and self.loader.wait() != 0:
            log.warning("GPU region loader exited with %s", self.loader.returncode)
        if self.reads is not None:
            self.reads.unlink(missing_ok=True)

    def abort_restore(self, ctx: RestoreContext) -> None:
        self.stop_reads.set()
        self._criu_done()
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
    # File pages before the CUDA lock (the tree as it served); regions before CUDA: the
    # loader starts ahead of everything else in a restore.
    return [FilePagesStep(), GpuRegionsStep(), CudaStep(gpu_files=gpu_files)]
