"""A KV-cache pool on CUDA virtual memory that can drop its pages for a checkpoint.

Engines pre-allocate most of the GPU for the KV cache. Checkpointed as is,
every one of those (empty) bytes lands in the snapshot and is copied back on
every restore. This pool reserves a virtual address range once
(``cuMemAddressReserve``) and backs it with physical memory
(``cuMemCreate`` + ``cuMemMap`` + ``cuMemSetAccess``). Before a checkpoint
``release()`` unmaps and frees the physical memory but keeps the reservation;
after the checkpoint or a restore ``remap()`` backs the *same addresses*
again, so tensors, compiled graphs and CUDA graphs that captured the
pointers stay valid. The contents after ``remap()`` are undefined: a cache is
scratch, and ``on_remap`` callbacks may reset it.

Tensors are zero-copy views made through ``__cuda_array_interface__``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar import hooks

_ALIGN = 256  # bytes; every carved tensor starts on this boundary


class VmmError(RuntimeError):
    """A CUDA virtual-memory call failed (named by its CUDA error)."""


def _driver() -> Any:
    from cuda.bindings import driver

    return driver


def _check(d: Any, call: str, result: tuple) -> tuple:
    err = result[0]
    if err != d.CUresult.CUDA_SUCCESS:
        _, name = d.cuGetErrorName(err)
        raise VmmError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    return result[1:]


def device_memory(d: Any, device: int, shareable: bool = False) -> Any:
    """Allocation properties of plain device memory on ``device`` (a POSIX fd if shareable)."""
    prop = d.CUmemAllocationProp()
    prop.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = device
    if shareable:
        prop.requestedHandleTypes = (
            d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        )
    return prop


def read_write(d: Any, device: int) -> Any:
    """Read/write access for ``device`` to a mapped range."""
    access = d.CUmemAccessDesc()
    access.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    access.location.id = device
    access.flags = d.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    return access


class _Span:
    """What ``torch.as_tensor`` needs to alias device memory without copying."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (ptr, False),
            "version": 3,
            "strides": None,
        }


class VmmPool:
    """``nbytes`` of device memory at a fixed virtual address, releasable and remappable."""

    def __init__(self, nbytes: int, device: int = 0) -> None:
        d = self._d = _driver()
        _check(d, "cuInit", d.cuInit(0))
        (self._dev,) = _check(d, "cuDeviceGet", d.cuDeviceGet(device))
        # Use the device's primary context: the one PyTorch and most engines run in.
        (self._ctx,) = _check(d, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(self._dev))
        self._make_current()
        self.device = device
        prop = self._prop = device_memory(d, device)
        (gran,) = _check(
            d,
            "cuMemGetAllocationGranularity",
            d.cuMemGetAllocationGranularity(
                prop, d.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
            ),
        )
        self.nbytes = -(-int(nbytes) // int(gran)) * int(gran)
        (ptr,) = _check(
            d, "cuMemAddressReserve", d.cuMemAddressReserve(self.nbytes, int(gran), 0, 0)
        )
        self.ptr = int(ptr)
        self._handle: Any = None
        self._next = 0
        self._mutex = threading.Lock()
        self.on_remap: list[Callable[[], object]] = []
        self.last_timings: dict[str, float] = {}  # of the last remap(): where resume time goes
        self.remap()

    @property
    def mapped(self) -> bool:
        return self._handle is not None

    def _make_current(self) -> None:
        _check(self._d, "cuCtxSetCurrent", self._d.cuCtxSetCurrent(self._ctx))

    def remap(self) -> None:
        """Back the reserved range with fresh physical memory (no-op when mapped)."""
        d = self._d
        with self._mutex:
            if self._handle is not None:
                return
            t0 = time.monotonic()
            self._make_current()
            (handle,) = _check(d, "cuMemCreate", d.cuMemCreate(self.nbytes, self._prop, 0))
            t1 = time.monotonic()
            try:
                _check(d, "cuMemMap", d.cuMemMap(self.ptr, self.nbytes, 0, handle, 0))
                self._set_access()
            except VmmError:
                d.cuMemUnmap(self.ptr, self.nbytes)
                d.cuMemRelease(handle)
                raise
            self._handle = handle
        t2 = time.monotonic()
        for fn in list(self.on_remap):
            fn()
        self.last_timings = {
            "create_s": t1 - t0,
            "map_s": t2 - t1,
            "on_remap_s": time.monotonic() - t2,
        }

    def adopt(self, handle: Any) -> None:
        """Map someone else's allocation (imported, same size) at the reserved addresses.

        The pool owns ``handle`` from here on: ``release()`` drops it like its own.
        """
        d = self._d
        with self._mutex:
            if self._handle is not None:
                raise VmmError("adopt: the pool is still mapped")
            self._make_current()
            _check(d, "cuMemMap", d.cuMemMap(self.ptr, self.nbytes, 0, handle, 0))
            try:
                self._set_access()
            except VmmError:
                d.cuMemUnmap(self.ptr, self.nbytes)
                raise
            self._handle = handle

    def _set_access(self) -> None:
        d = self._d
        access = read_write(d, self.device)
        _check(d, "cuMemSetAccess", d.cuMemSetAccess(self.ptr, self.nbytes, [access], 1))

    def release(self) -> None:
        """Free the physical memory, keep the addresses (no-op when released)."""
        d = self._d
        with self._mutex:
            if self._handle is None:
                return
            self._make_current()
            _check(d, "cuCtxSynchronize", d.cuCtxSynchronize())  # nothing may still use it
            _check(d, "cuMemUnmap", d.cuMemUnmap(self.ptr, self.nbytes))
            _check(d, "cuMemRelease", d.cuMemRelease(self._handle))
            self._handle = None

    def close(self) -> None:
        """Release everything, the address range too; views must not be used afterwards."""
        self.release()
        _check(self._d, "cuMemAddressFree", self._d.cuMemAddressFree(self.ptr, self.nbytes))
        self.ptr = 0

    def register_hooks(self) -> VmmPool:
        """Release on quiesce, remap on resume (``sidecar.hooks``)."""
        hooks.quiesce(self.release)
        hooks.resume(self.remap)
        return self

    # --- tensors -------------------------------------------------------------------
    def span(self, offset: int, nbytes: int) -> _Span:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ValueError(f"span {offset}+{nbytes} outside the {self.nbytes}-byte pool")
        return _Span(self.ptr + offset, nbytes)

    def tensor(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Carve the next ``shape``/``dtype`` tensor out of the pool (a zero-copy view)."""
        import torch

        count = 1
        for s in shape:
            count *= int(s)
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        with self._mutex:
            offset = -(-self._next // _ALIGN) * _ALIGN
            if offset + nbytes > self.nbytes:
                raise VmmError(
                    f"KV pool exhausted: {nbytes} more bytes requested, "
                    f"{self.nbytes - offset} of {self.nbytes} left"
                )
            self._next = offset + nbytes
        raw = torch.as_tensor(self.span(offset, nbytes), device=f"cuda:{self.device}")
        return raw.view(dtype).view(*shape)

    @property
    def used_bytes(self) -> int:
        return self._next
