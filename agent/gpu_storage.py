"""GPU memory straight to and from a snapshot file (CUDA's custom-storage checkpoint).

By default ``cuCheckpointProcessCheckpoint`` copies device memory into the
process's own host memory, so it travels through CRIU twice: dumped as
anonymous pages, restored page by page by one CRIU thread, then copied back
to the GPU from pageable memory. With custom storage the driver instead maps
the process's device memory into *our* context; we copy it to a file beside
the CRIU images and, on restore, from that file back to the GPU with
parallel readers through pinned staging buffers. CRIU's image shrinks to the
host pages and the GPU bytes stream from disk at full speed, overlapped with
the rest of the restore.

File layout (per CUDA process): ``gpu-<n>.bin`` holds each device segment in
the driver's order; ``gpu-<n>.json`` records the segment sizes so a restore
can refuse a mismatch instead of corrupting memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.cuda_checkpoint import CudaCheckpointError, CudaDriver, CudaUnavailable

CHUNK = 64 << 20
READERS = 8
_ENTRY = 24  # CUcheckpointCustomStoragePerDeviceData: devPtr, size, stream


def supported(driver: CudaDriver) -> bool:
    """Custom storage arrived after CUDA 13.0: older bindings lack the argument field."""
    return hasattr(driver._d.CUcheckpointCheckpointArgs(), "customStorageInfo_out")


class _Staging:
    """Pinned host buffers, allocated once per agent and reused (no per-restore pinning)."""

    def __init__(self, driver: CudaDriver, count: int, size: int) -> None:
        self._d = driver._d
        self.size = size
        self._free: list[tuple[int, memoryview]] = []
        self._lock = threading.Lock()
        for _ in range(count):
            (ptr,) = driver._check(
                "cuMemHostAlloc",
                self._d.cuMemHostAlloc(size, self._d.CU_MEMHOSTALLOC_PORTABLE),  # any context
            )
            view = memoryview((ctypes.c_char * size).from_address(int(ptr))).cast("B")
            self._free.append((int(ptr), view))

    def take(self) -> tuple[int, memoryview]:
        with self._lock:
            return self._free.pop()

    def give(self, buf: tuple[int, memoryview]) -> None:
        with self._lock:
            self._free.append(buf)


class GpuStateFiles:
    """Checkpoint/restore a process's device memory to/from files, with the driver's help."""

    _instance: GpuStateFiles | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls, driver: CudaDriver) -> GpuStateFiles:
        """One per agent: contexts retained and staging pinned once, not per restore."""
        with cls._instance_lock:
            if cls._instance is None or cls._instance.driver is not driver:
                cls._instance = cls(driver)
            return cls._instance

    def __init__(self, driver: CudaDriver, readers: int = READERS, chunk: int = CHUNK) -> None:
        self.driver = driver
        self._d = driver._d
        if not supported(driver):
            raise CudaUnavailable(
                "cuCheckpointProcessCheckpoint", "CUSTOM_STORAGE_UNSUPPORTED",
                detail="these CUDA bindings/driver have no custom-storage checkpoint",
            )  # fmt: skip
        self.readers, self.chunk = readers, chunk
        (count,) = driver._check("cuDeviceGetCount", self._d.cuDeviceGetCount())
        # custom storage needs every device's primary context retained
        self._ctx = [driver.retain_primary_context(i) for i in range(count)]
        driver._check("cuCtxSetCurrent", self._d.cuCtxSetCurrent(self._ctx[0]))
        self._staging = _Staging(driver, readers, chunk)

    # --- driver structures ----------------------------------------------------------
    def _segments(self, slot: ctypes.c_uint64) -> tuple[Any, list[tuple[int, int, Any]]]:
        addr = slot.value
        if not addr:
            raise CudaCheckpointError("customStorageInfo_out", "NULL_STORAGE_INFO")
        info = self._d.CUcheckpointCustomStorageInfo(_ptr=addr)
        per = ctypes.c_uint64.from_address(addr + 8).value
        count = ctypes.c_uint32.from_address(addr + 16).value
        segs = []
        for i in range(count):
            base = per + i * _ENTRY
            dev_ptr = ctypes.c_uint64.from_address(base).value
            size = ctypes.c_uint64.from_address(base + 8).value
            stream = self._d.CUstream(ctypes.c_uint64.from_address(base + 16).value)
            segs.append((dev_ptr, size, stream))
        return info.handle, segs

    def _ctx_of(self, stream: Any) -> Any:
        (ctx,) = self.driver._check("cuStreamGetCtx", self._d.cuStreamGetCtx(stream))
        return ctx

    # --- checkpoint ------------------------------------------------------------------
    def checkpoint(self, pid: int, path: Path) -> int:
        """Lock must be held. Leaves ``pid`` CHECKPOINTED with its memory in ``path``."""
        d = self._d
        slot = ctypes.c_uint64(0)
        args = d.CUcheckpointCheckpointArgs()
        args.customStorageInfo_out = ctypes.addressof(slot)
        self.driver._check(
            "cuCheckpointProcessCheckpoint", d.cuCheckpointProcessCheckpoint(pid, args), pid
        )
        handle, segs = self._segments(slot)
        total = 0
        buf = self._staging.take()
        try:
            with open(path, "wb") as f:
                for dev_ptr, size, stream in segs:
                    self.driver._check("cuCtxSetCurrent", d.cuCtxSetCurrent(self._ctx_of(stream)))
                    for off in range(0, size, self.chunk):
                        n = min(self.chunk, size - off)
                        self.driver._check(
                            "cuMemcpyDtoH", d.cuMemcpyDtoH(buf[0], dev_ptr + off, n), pid
                        )
                        f.write(buf[1][:n])
                    total += size
        finally:
            self._staging.give(buf)
            self.driver._check(
                "cuCheckpointOperationComplete", d.cuCheckpointOperationComplete(handle), pid
            )
        meta = {"segments": [size for _, size, _ in segs], "bytes": total}
        path.with_suffix(".json").write_text(json.dumps(meta))
        return total

    # --- restore ---------------------------------------------------------------------
    def restore(self, pid: int, path: Path, args: Any | None = None) -> dict[str, float]:
        """After CRIU restore: device memory of ``pid`` back from ``path``; leaves it LOCKED."""
        d = self._d
        meta = json.loads(path.with_suffix(".json").read_text())
        slot = ctypes.c_uint64(0)
        args = args or d.CUcheckpointRestoreArgs()
        args.customStorageInfo_out = ctypes.addressof(slot)
        t0 = time.monotonic()
        self.driver._check(
            "cuCheckpointProcessRestore", d.cuCheckpointProcessRestore(pid, args), pid
        )
        t1 = time.monotonic()
        handle, segs = self._segments(slot)
        try:
            sizes = [size for _, size, _ in segs]
            if sizes != meta["segments"]:
                raise CudaCheckpointError(
                    "cuCheckpointProcessRestore", "SEGMENT_MISMATCH", pid,
                    f"driver asks for {sizes}, {path.name} holds {meta['segments']}",
                )  # fmt: skip
            jobs = []
            file_off = 0
            for dev_ptr, size, stream in segs:
                ctx = self._ctx_of(stream)
                jobs += [
                    (ctx, dev_ptr + off, file_off + off, min(self.chunk, size - off))
                    for off in range(0, size, self.chunk)
                ]
                file_off += size
            fd = os.open(path, os.O_RDONLY)
            try:
                current = threading.local()

                def copy(job: tuple[Any, int, int, int]) -> None:
                    ctx, dst, src, n = job
                    if getattr(current, "ctx", None) is not ctx:
                        self.driver._check("cuCtxSetCurrent", d.cuCtxSetCurrent(ctx))
                        current.ctx = ctx
                    buf = self._staging.take()
                    try:
                        got = 0
                        while got < n:
                            r = os.preadv(fd, [buf[1][got:n]], src + got)
                            if r <= 0:
                                raise CudaCheckpointError(
                                    "read", "SHORT_GPU_STATE_FILE", pid, str(path)
                                )
                            got += r
                        self.driver._check("cuMemcpyHtoD", d.cuMemcpyHtoD(dst, buf[0], n), pid)
                    finally:
                        self._staging.give(buf)

                with ThreadPoolExecutor(self.readers, thread_name_prefix="gpu-restore") as pool:
                    list(pool.map(copy, jobs))
            finally:
                os.close(fd)
            t2 = time.monotonic()
        finally:
            self.driver._check(
                "cuCheckpointOperationComplete", d.cuCheckpointOperationComplete(handle), pid
            )
        return {"cuda_restore_call_s": t1 - t0, "gpu_copy_s": t2 - t1}
