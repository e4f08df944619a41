"""Model weights that leave the snapshot and come back from the model's own files.

A checkpoint through CUDA's default path copies every byte of device memory
into the process's host memory, then CRIU writes it and, on restore, pages
it back in with a single thread before CUDA copies it to the GPU again. For
an inference engine most of those bytes are weights that already sit on the
node in safetensors files. ``ReleasableWeights`` moves the parameters onto a
VMM pool (``sidecar.kv_cache.VmmPool``): on quiesce the pool's physical
memory is released (the snapshot keeps only the addresses), on resume it is
mapped at the same addresses and refilled straight from the safetensors
files by parallel readers through pinned buffers. Compiled graphs and every
tensor that points at a weight stay valid.

Parameters with no tensor of the same name and size in the files (computed
buffers, for instance) stay where they are and are snapshotted as usual.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sidecar import hooks
from sidecar.kv_cache import VmmPool, _check

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
        self.files = list(files)
        self.readers = readers
        self.jobs: list[tuple[Path, int, int, int]] = []  # (file, file offset, device ptr, n)
        with torch.no_grad():
            for name, param in chosen:
                view = self.pool.tensor(tuple(param.shape), param.dtype)
                view.copy_(param.data)
                param.data = view
                path, off, n = index[name]
                for k in range(0, n, CHUNK):
                    self.jobs.append((path, off + k, view.data_ptr() + k, min(CHUNK, n - k)))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.bytes = sum(j[3] for j in self.jobs)
        self.names = [n for n, _ in chosen]
        self._pinned: list[tuple[int, memoryview]] = []
        self._lock = threading.Lock()
        self.last_reload_s = 0.0

    def _buffer(self) -> tuple[int, memoryview]:
        d = self.pool._d
        with self._lock:
            if self._pinned:
                return self._pinned.pop()
        self.pool._make_current()
        (ptr,) = _check(d, "cuMemHostAlloc", d.cuMemHostAlloc(CHUNK, d.CU_MEMHOSTALLOC_PORTABLE))
        return int(ptr), memoryview((ctypes.c_char * CHUNK).from_address(int(ptr))).cast("B")

    def release(self) -> None:
        """Drop the weights' device memory (the addresses stay reserved)."""
        self.pool.release()

    def reload(self) -> None:
        """Map the addresses again and read every weight back from the files, in parallel."""
        t0 = time.monotonic()
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
        self.last_reload_s = time.monotonic() - t0

    def register_hooks(self) -> ReleasableWeights:
        hooks.quiesce(self.release)
        hooks.resume(self.reload)
        return self
