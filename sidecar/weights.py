"""Model weights that leave the snapshot and come back from the model's own files.

A checkpoint through CUDA's default path copies every byte of device memory
into the process's host memory, then CRIU writes it and, on restore, pages
it back in with a single thread before CUDA copies it to the GPU again. For
an inference engine most of those bytes are weights that already sit on the
node in safetensors files. ``ReleasableWeights`` moves the parameters onto a
VMM pool (``sidecar.kv_cache.VmmPool``): on quiesce the pool's physical
memory is released (the snapshot keeps only the addresses), on resume it is
mapped at the same addresses and refilled from the safetensors files.
Compiled graphs and every tensor that points at a weight stay valid.

Where the bytes come from on resume:
  * after a restore, the agent's loader (``agent.gpu_regions``) has already
    filled a fresh allocation while CRIU restored this process: the pool
    receives it over ``GPU_REGIONS_SOCKET`` and maps it, no copy at all. At
    quiesce the pool describes itself in ``GPU_REGIONS_FILE`` (files, sizes,
    mtimes, ranges) so the agent can take that description into the snapshot;
  * otherwise (the source after its checkpoint, or no loader) the process
    reads the files itself with parallel readers through pinned buffers.
Either way files whose size or mtime changed since the checkpoint are refused.

Parameters with no tensor of the same name and size in the files (computed
buffers, for instance) stay where they are and are snapshotted as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sidecar import hooks
from sidecar.kv_cache import VmmPool, _check
from thaw import fdpass
from thaw.contract import (
    GPU_REGIONS_FILE,
    GPU_REGIONS_SOCKET,
    GpuRegion,
    GpuRegions,
    RegionSource,
    SourceFile,
    format_gpu_uuid,
)

log = logging.getLogger(__name__)
LOADER_TIMEOUT_S = 300.0

CHUNK = 32 << 20
READERS = 8


class WeightsError(RuntimeError):
    """The model files do not match the weights they are supposed to restore."""


def safetensors_index(files: Iterable[Path]) -> dict[str, tuple[Path, int, int]]:
    """Tensor name -> (file, absolute byte offset, byte length), from the files' headers."""
    index: dict[str, tuple[Path, int, int]] = {}
    for path in files:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightsError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise WeightsError(f"{path} has a broken safetensors header: {e}") from None
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            index[name] = (Path(path), base + begin, end - begin)
    return index


class ReleasableWeights:
    """A module's parameters on a releasable VMM pool, refilled from safetensors on resume."""

    def __init__(
        self, module: Any, files: Sequence[Path], device: int = 0, readers: int = READERS
    ) -> None:
        import torch

        index = safetensors_index(files)
        seen: dict[int, str] = {}
        chosen: list[tuple[str, Any]] = []
        for name, param in module.named_parameters(remove_duplicate=False):
            ptr = param.data_ptr()
            if ptr in seen:  # tied weights: one copy, restored once
                continue
            entry = index.get(name)
            if entry and entry[2] == param.numel() * param.element_size():
                seen[ptr] = name
                chosen.append((name, param))
        if not chosen:
            raise WeightsError("no parameter matches a tensor of the given safetensors files")
        total = sum(-(-p.numel() * p.element_size() // 256) * 256 for _, p in chosen)
        self.pool = VmmPool(total, device)
        self.files = [Path(f).resolve() for f in files]
        self.stats = {str(f): _stat(f) for f in self.files}
        self.readers = readers
        self.jobs: list[tuple[Path, int, int, int]] = []  # (file, file offset, device ptr, n)
        self.sources: list[RegionSource] = []
        with torch.no_grad():
            for name, param in chosen:
                view = self.pool.tensor(tuple(param.shape), param.dtype)
                view.copy_(param.data)
                param.data = view
                path, off, n = index[name]
                path = path.resolve()
                at = view.data_ptr() - self.pool.ptr
                self.sources.append(RegionSource(str(path), off, at, n))
                for k in range(0, n, CHUNK):
                    self.jobs.append((path, off + k, view.data_ptr() + k, min(CHUNK, n - k)))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.bytes = sum(j[3] for j in self.jobs)
        self.names = [n for n, _ in chosen]
        self._pinned: list[tuple[int, memoryview]] = []
        self._lock = threading.Lock()
        self.last_reload_s = 0.0
        self.last_source = ""

    def _buffer(self) -> tuple[int, memoryview]:
        d = self.pool._d
        with self._lock:
            if self._pinned:
                return self._pinned.pop()
        self.pool._make_current()
        (ptr,) = _check(d, "cuMemHostAlloc", d.cuMemHostAlloc(CHUNK, d.CU_MEMHOSTALLOC_PORTABLE))
        return int(ptr), memoryview((ctypes.c_char * CHUNK).from_address(int(ptr))).cast("B")

    def regions(self) -> GpuRegions:
        """This pool as ``GPU_REGIONS_FILE`` describes it (what the agent's loader needs)."""
        files = tuple(SourceFile(p, size, mtime) for p, (size, mtime) in self.stats.items())
        region = GpuRegion("weights", self.pool.nbytes, files, tuple(self.sources))
        return GpuRegions((region,), self.pool.device, _device_uuid(self.pool))

    def release(self) -> None:
        """Drop the weights' device memory (the addresses stay reserved) and describe it."""
        directory = hooks.control_dir()
        if directory.is_dir():
            tmp = directory / f".{GPU_REGIONS_FILE}.{os.getpid()}.tmp"
            try:
                tmp.write_text(self.regions().to_json())
                os.replace(tmp, directory / GPU_REGIONS_FILE)
            except OSError as e:  # the snapshot still works: the weights reload from files
                log.warning("cannot write %s in %s: %s", GPU_REGIONS_FILE, directory, e)
        self.pool.release()

    def reload(self) -> None:
        """Get the weights back: from the agent's loader if one waits, else from the files."""
        t0 = time.monotonic()
        self._check_files()
        if not self.pool.mapped and self._adopt_from_loader():
            self.last_source = "loader"
        else:
            self._read_files()
            self.last_source = "files"
        self.last_reload_s = time.monotonic() - t0

    def _check_files(self) -> None:
        for path, (size, mtime) in self.stats.items():
            now = _stat(Path(path))
            if now != (size, mtime):
                raise WeightsError(
                    f"{path} changed since the weights were loaded (size, mtime_ns "
                    f"{now} vs {(size, mtime)}): refusing to serve other weights"
                )

    def _adopt_from_loader(self) -> bool:
        """Take the region the agent filled during the restore; False: read the files instead."""
        path = hooks.control_dir() / GPU_REGIONS_SOCKET
        if not path.exists():
            return False
        d = self.pool._d
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(LOADER_TIMEOUT_S)
                sock.connect(str(path))
                message, fds = fdpass.recv(sock)
                try:
                    regions = message.get("regions") or []
                    if not message.get("ok"):
                        raise WeightsError(f"loader: {message.get('error', 'failed')}")
                    if len(fds) != 1 or len(regions) != 1:
                        raise WeightsError(f"loader sent {len(fds)} fds for {len(regions)} regions")
                    if regions[0].get("bytes") != self.pool.nbytes:
                        raise WeightsError(
                            f"loader's region has {regions[0].get('bytes')} bytes, "
                            f"the pool {self.pool.nbytes}"
                        )
                    self.pool._make_current()
                    kind = d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
                    (handle,) = _check(
                        d, "cuMemImportFromShareableHandle",
                        d.cuMemImportFromShareableHandle(fds[0], kind),
                    )  # fmt: skip
                finally:
                    for fd in fds:
                        os.close(fd)  # an open fd would pin the memory after a release
                try:
                    self.pool.adopt(handle)
                except Exception:
                    d.cuMemRelease(handle)
                    raise
                fdpass.send(sock, {"ok": True})
            return True
        except (OSError, fdpass.FdPassError, WeightsError, RuntimeError) as e:
            log.warning("GPU regions from the agent's loader unusable (%s); reading files", e)
            return False

    def _read_files(self) -> None:
        self.pool.remap()
        d = self.pool._d
        fds = {p: os.open(p, os.O_RDONLY) for p in self.files}
        local = threading.local()

        def copy(job: tuple[Path, int, int, int]) -> None:
            path, off, dst, n = job
            if not getattr(local, "ready", False):
                self.pool._make_current()
                local.ready = True
            buf = self._buffer()
            try:
                got = 0
                while got < n:
                    r = os.preadv(fds[path], [buf[1][got:n]], off + got)
                    if r <= 0:
                        raise WeightsError(f"{path} ended early at byte {off + got}")
                    got += r
                _check(d, "cuMemcpyHtoD", d.cuMemcpyHtoD(dst, buf[0], n))
            finally:
                with self._lock:
                    self._pinned.append(buf)

        try:
            with ThreadPoolExecutor(self.readers, thread_name_prefix="weights") as pool:
                list(pool.map(copy, self.jobs))
        finally:
            for fd in fds.values():
                os.close(fd)

    def register_hooks(self) -> ReleasableWeights:
        hooks.quiesce(self.release)
        hooks.resume(self.reload)
        return self


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _device_uuid(pool: VmmPool) -> str:
    with contextlib.suppress(Exception):
        (uuid,) = _check(pool._d, "cuDeviceGetUuid", pool._d.cuDeviceGetUuid(pool._dev))
        return format_gpu_uuid(bytes(uuid.bytes))
    return ""
