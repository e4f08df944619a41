"""Refill a restored worker's released GPU regions while CRIU restores the process.

An engine that releases its weights before the checkpoint (``sidecar.weights``)
keeps only their addresses in the snapshot; the bytes come back from model
files already on the node. Read by the worker itself, that happens after CRIU
and the CUDA restore are done, in series with them. This loader runs beside
CRIU instead, from the moment the restore starts:

  * it allocates each region with ``cuMemCreate`` as a shareable (POSIX fd)
    allocation on the worker's GPU;
  * parallel readers pull the recorded file ranges into page-aligned pinned
    buffers and copy them to the GPU: the first ``--cached-mib`` from the page
    cache, where the agent's read stream (``file_pages.advise``) brings them
    in order behind CRIU's images from the restore's first moment, the rest
    with ``O_DIRECT``;
  * it listens on ``GPU_REGIONS_SOCKET`` in the pod's control dir; the resumed
    worker connects, receives the allocations' fds (SCM_RIGHTS), maps them at
    the addresses it kept and acknowledges. Then the loader lets go and exits.

If anything fails (a file changed since the checkpoint, no GPU memory) the
loader removes its socket and exits with the reason; the worker then reads
its files itself, and refuses them too if they changed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import mmap
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent import file_pages
from agent.file_pages import OPENERS, FileRange
from thaw import fdpass
from thaw.contract import GPU_REGIONS_SOCKET, GpuRegion, GpuRegions, RegionsError
from thaw.scratch import scratch

log = logging.getLogger(__name__)

ALIGN = 4096  # O_DIRECT: offsets, lengths and buffers on this boundary
DEFAULT_CHUNK = 16 << 20
DEFAULT_READERS = 16
# While CRIU restores: READERS[:GB_PER_S] (see Throttle); measured on the GPU node.
DEFAULT_GENTLE = "2:0.8"
DEFAULT_STAGING = 512 << 20  # read-ahead of the GPU copies for --direct-inflight
COPIERS = 2  # threads copying staged reads onto the GPU
BATCH_RANGES, BATCH_SMALL = 8, 256 << 10  # see batches()
ACCEPT_TIMEOUT_S = 300.0


class RegionLoadError(RuntimeError):
    """The regions could not be loaded; the message says why (sent to the worker too)."""


@dataclasses.dataclass(frozen=True)
class ReadJob:
    """One aligned read of ``length`` bytes at ``offset``; ``segments`` scatter it.

    segment: (offset in the read buffer, region index, offset in the region, bytes)
    """

    path: str
    offset: int
    length: int
    segments: tuple[tuple[int, int, int, int], ...]


def plan_reads(regions: Sequence[GpuRegion], chunk: int = DEFAULT_CHUNK) -> list[ReadJob]:
    """Cover every source range with chunk-aligned reads; a window shared by ranges is read once.

    Jobs come in file order, so the disk sees long sequential runs per reader.
    """
    if chunk <= 0 or chunk % ALIGN:
        raise ValueError(f"chunk must be a positive multiple of {ALIGN}")
    windows: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {}
    for ri, region in enumerate(regions):
        for s in region.sources:
            pos, end = s.file_offset, s.file_offset + s.length
            while pos < end:
                w = pos - pos % chunk
                n = min(end, w + chunk) - pos
                windows.setdefault((s.path, w), []).append(
                    (pos - w, ri, s.region_offset + (pos - s.file_offset), n)
                )
                pos += n
    jobs = []
    for (path, w), segs in sorted(windows.items()):
        need = max(b + n for b, _, _, n in segs)
        jobs.append(ReadJob(path, w, -(-need // ALIGN) * ALIGN, tuple(sorted(segs))))
    return jobs


def cached_count(jobs: Sequence[ReadJob], budget: int) -> int:
    """How many leading jobs fit in ``budget`` bytes: the ones read through the page cache.

    The agent asks the kernel for those bytes itself, behind the restore's other
    reads (:func:`cached_ranges`), so the disk keeps reading while this process
    starts and brings up CUDA; the loader then copies them from the page cache.
    """
    n = total = 0
    for job in jobs:
        if total + job.length > budget:
            break
        total += job.length
        n += 1
    return n


def cached_ranges(spec: GpuRegions, budget: int, chunk: int = DEFAULT_CHUNK) -> list[FileRange]:
    """The worker-root file ranges of the first ``budget`` bytes the loader reads, in its order."""
    jobs = plan_reads(spec.regions, chunk)
    return [FileRange(j.path, j.offset, j.length, True) for j in jobs[: cached_count(jobs, budget)]]


class _Tracker:
    """Counts finished pool tasks and keeps the first failure.

    ``concurrent.futures.wait`` over thousands of futures locks and re-arms each
    of them on every call: Python work, under the GIL the readers need between
    their reads. A done-callback per future costs one short lock instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.left = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.finished.set()

    def add(self, future) -> None:
        with self._lock:
            self.left += 1
            if self.error is None:
                self.finished.clear()
        future.add_done_callback(self._done)

    def _done(self, future) -> None:
        err = None if future.cancelled() else future.exception()
        with self._lock:
            self.left -= 1
            if err is not None and self.error is None:
                self.error = err
            if self.left == 0 or self.error is not None:
                self.finished.set()


def check_files(spec: GpuRegions, root: Path) -> dict[str, Path]:
    """Each source file as seen under ``root``, refused if it is not the checkpoint's file."""
    found: dict[str, Path] = {}
    for region in spec.regions:
        for f in region.files:
            host = root / f.path.lstrip("/")
            try:
                st = os.stat(host)
            except OSError as e:
                raise RegionLoadError(f"{f.path}: {e.strerror}") from None
            if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
                raise RegionLoadError(
                    f"{f.path} changed since the checkpoint (size {st.st_size} vs {f.size}, "
                    f"mtime_ns {st.st_mtime_ns} vs {f.mtime_ns})"
                )
            found[f.path] = host
    return found


def _open(path: Path, direct: bool) -> tuple[int, bool]:
    if direct:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT), True
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT (tmpfs)
                raise
    return os.open(path, os.O_RDONLY), False


class Throttle:
    """Keep the loader out of CRIU's way while CRIU restores, then let it run flat out.

    CRIU restores pages on one thread and reads its images through the page
    cache a readahead window at a time; deep O_DIRECT queues in front of each
    window starve it (measured on an H100 node: CRIU's restore went from 2.4 s
    to 4-5 s beside an unthrottled loader). While gentle: at most ``readers``
    reads in flight (0: no limit), paced to ``bytes_per_s`` (0: unpaced), in
    the idle I/O class if ``idle`` (the block layer then serves CRIU first).
    ``full()`` (the agent closing its pipe once CRIU is done, or SIGUSR1) lifts all of it.
    """

    def __init__(self) -> None:
        self.readers, self.rate, self.idle = 0, 0.0, False
        self.unleashed = threading.Event()
        self.unleashed.set()
        self.signalled = False
        self._cond = threading.Condition()
        self._active = 0
        self._next = time.monotonic()

    @classmethod
    def parse(cls, text: str) -> Throttle:
        """``READERS[:GB_PER_S][:idle]``, e.g. ``4``, ``2:0.8``, ``0:0:idle``."""
        t = cls()
        parts = [x.strip() for x in text.split(":")] if text else []
        try:
            readers = int(parts[0]) if parts else 0
            rate = float(parts[1]) * 1e9 if len(parts) > 1 and parts[1] else 0.0
        except ValueError:
            raise ValueError(f"--gentle {text!r}: want READERS[:GB_PER_S][:idle]") from None
        if (len(parts) > 2 and parts[2] != "idle") or len(parts) > 3:
            raise ValueError(f"--gentle {text!r}: want READERS[:GB_PER_S][:idle]")
        t.configure(readers, rate, len(parts) > 2)
        return t

    def configure(self, readers: int, bytes_per_s: float = 0.0, idle: bool = False) -> None:
        """Become gentle (unless ``full()`` already came: a signal can beat the arguments)."""
        with self._cond:
            self.readers, self.rate, self.idle = readers, bytes_per_s, idle
            if (readers > 0 or bytes_per_s > 0 or idle) and not self.signalled:
                self.unleashed.clear()

    def full(self) -> None:
        self.signalled = True
        self.unleashed.set()
        with self._cond:
            self._cond.notify_all()

    def acquire(self, nbytes: int) -> None:
        _set_io_class(self.idle and not self.unleashed.is_set())
        delay = 0.0
        with self._cond:
            while not self.unleashed.is_set() and 0 < self.readers <= self._active:
                self._cond.wait(0.01)
            self._active += 1
            if not self.unleashed.is_set() and self.rate > 0:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + nbytes / self.rate
                delay = start - now
        if delay > 0:
            self.unleashed.wait(delay)  # returns early when set free

    def release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify()

    def full_at_eof(self, fd: int) -> threading.Thread:
        """Lift the limits when ``fd`` (a pipe the agent holds open while CRIU runs) closes.

        Unlike a signal this cannot arrive before the loader is ready for it, and an
        agent that dies closes it too.
        """

        def wait() -> None:
            with contextlib.suppress(OSError):
                while os.read(fd, 64):
                    pass
            os.close(fd)
            self.full()

        th = threading.Thread(target=wait, name="criu-done", daemon=True)
        th.start()
        return th


_IOPRIO_SET = 251  # x86-64 syscall number
_io_class = threading.local()


def _set_io_class(idle: bool) -> None:
    """This thread's I/O priority: idle class while gentle, best-effort otherwise."""
    if getattr(_io_class, "idle", False) == idle:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    value = (3 << 13) if idle else (2 << 13 | 4)  # IOPRIO_CLASS_IDLE / IOPRIO_CLASS_BE, level 4
    if libc.syscall(_IOPRIO_SET, 1, 0, value) == 0:  # IOPRIO_WHO_PROCESS, this thread
        _io_class.idle = idle


def batches(ranges: Sequence[FileRange]) -> list[list[tuple[int, FileRange]]]:
    """The read list in order, as tasks for the readers: up to ``BATCH_RANGES`` small ranges each.

    A restore's list holds thousands of ranges of a few KiB; one pool task per
    range spent more time in the pool's own Python (under the GIL the readers
    share) than in the reads. A range of ``BATCH_SMALL`` or more ends its batch.
    """
    out: list[list[tuple[int, FileRange]]] = []
    cur: list[tuple[int, FileRange]] = []
    for i, r in enumerate(ranges):
        cur.append((i, r))
        if r.length >= BATCH_SMALL or len(cur) >= BATCH_RANGES:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


class _Hints:
    """Asks the kernel for the page-cache reads up to ``depth`` bytes ahead of the readers.

    The readers wait for each read; many of the ranges are small (a few pages of
    a library), so a handful of readers leaves the disk's queue shallow. Hints
    (``POSIX_FADV_WILLNEED``, asynchronous) deepen it for those without more
    threads; the readers then find the pages arriving or there.
    """

    def __init__(self, ranges: Sequence[FileRange], depth: int) -> None:
        self.ranges, self.depth = ranges, depth
        self.ends: list[int] = []
        total = 0
        for r in ranges:
            total += r.length
            self.ends.append(total)
        self.reached = 0  # bytes of the list up to the last range a reader started
        self._cond = threading.Condition()
        self._stopped = False

    def started(self, i: int) -> None:
        with self._cond:
            self.reached = max(self.reached, self.ends[i] - self.ranges[i].length)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self, fd_of) -> None:
        for i, r in enumerate(self.ranges):
            with self._cond:
                while not self._stopped and self.ends[i] - r.length > self.reached + self.depth:
                    self._cond.wait(0.05)
                if self._stopped:
                    return
            fd = fd_of(r)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, r.offset, r.length, os.POSIX_FADV_WILLNEED)


class Loader:
    """Regions allocated, filled and exported on one GPU of this process."""

    def __init__(
        self,
        spec: GpuRegions,
        root: Path = Path("/"),
        device_uuid: str = "",
        readers: int = DEFAULT_READERS,
        chunk: int = DEFAULT_CHUNK,
        direct: bool = True,
        throttle: Throttle | None = None,
        first: Sequence[FileRange] = (),
        hint_bytes: int = 0,
        cached_bytes: int = 0,
        direct_inflight: int = 0,
        staging_bytes: int = DEFAULT_STAGING,
        direct_now: bool = False,
    ) -> None:
        self.spec, self.root, self.readers, self.chunk = spec, Path(root), readers, chunk
        # past cached_bytes: 0, the readers' pool; N, one stream of N reads (see _fill), behind
        # the read list or, direct_now, beside it from the start
        self.direct_inflight, self.staging_bytes = direct_inflight, staging_bytes
        self.direct_now = direct_now
        self.cached_bytes = cached_bytes  # leading region bytes read through the page cache
        self.hint_bytes = hint_bytes  # see _Hints
        self.first = list(first)  # page-cache reads ahead of the regions (CRIU's images)
        self.first_bytes = 0
        self.throttle = throttle or Throttle()
        self.direct = direct
        self.device_uuid = device_uuid or spec.device_uuid
        self.handles: list[Any] = []
        self.ptrs: list[int] = []
        self.timings: dict[str, float] = {}
        self.bytes_read = 0
        self.used_direct = direct
        self.unleashed_at: float | None = None
        # (kind, started, read done, finished, bytes) per read, seconds into the fill: where
        # the readers wait (--trace, for the benchmark)
        self.trace: list[tuple[str, float, float, float, int]] | None = None

    # --- CUDA ------------------------------------------------------------------------
    def _cuda(self) -> None:
        from agent.cuda_checkpoint import CudaDriver, format_uuid

        self.drv = CudaDriver.get()
        d = self.d = self.drv._d
        chk = self.drv._check
        (count,) = chk("cuDeviceGetCount", d.cuDeviceGetCount())
        ordinal = None
        for i in range(count):
            (dev,) = chk("cuDeviceGet", d.cuDeviceGet(i))
            (uuid,) = chk("cuDeviceGetUuid", d.cuDeviceGetUuid(dev))
            if not self.device_uuid or format_uuid(bytes(uuid.bytes)) == self.device_uuid:
                ordinal = i
                break
        if ordinal is None:
            raise RegionLoadError(f"no GPU with uuid {self.device_uuid} on this node")
        self.ordinal = ordinal
        (self.dev,) = chk("cuDeviceGet", d.cuDeviceGet(ordinal))
        (self.ctx,) = chk("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(self.dev))
        chk("cuCtxSetCurrent", d.cuCtxSetCurrent(self.ctx))

    def _allocate(self, nbytes: int) -> tuple[Any, int]:
        from sidecar.kv_cache import device_memory, read_write

        d, chk = self.d, self.drv._check
        prop = device_memory(d, self.ordinal, shareable=True)
        (handle,) = chk("cuMemCreate", d.cuMemCreate(nbytes, prop, 0))
        (ptr,) = chk("cuMemAddressReserve", d.cuMemAddressReserve(nbytes, 0, 0, 0))
        chk("cuMemMap", d.cuMemMap(ptr, nbytes, 0, handle, 0))
        access = read_write(d, self.ordinal)
        chk("cuMemSetAccess", d.cuMemSetAccess(ptr, nbytes, [access], 1))
        return handle, int(ptr)

    # --- the work ----------------------------------------------------------------------
    def load(self) -> None:
        """Allocate every region and fill it from the files; raises RegionLoadError.

        The files are read from the first moment: the CUDA context (a few hundred
        ms) and the allocations come up on another thread meanwhile, and reads
        that finish first wait for it with their buffers full.
        """
        t0 = self.t_fill = time.monotonic()
        files = check_files(self.spec, self.root)
        jobs = plan_reads(self.spec.regions, self.chunk)
        n_cached = cached_count(jobs, self.cached_bytes)
        self.timings["cached_bytes"] = float(sum(j.length for j in jobs[:n_cached]))
        fds: dict[str, int] = {}
        cached_fds: dict[str, int] = {}  # the agent asked the kernel for these bytes
        ready = threading.Event()
        failure: list[BaseException] = []

        def bring_up() -> None:
            try:
                if not self.spec.regions:  # a read list alone: nothing goes to a GPU
                    return
                t = time.monotonic()
                self._cuda()
                self.timings["cuda_init_s"] = time.monotonic() - t
                t = time.monotonic()
                for region in self.spec.regions:
                    handle, ptr = self._allocate(region.bytes)
                    self.handles.append(handle)
                    self.ptrs.append(ptr)
                self.timings["allocate_s"] = time.monotonic() - t
            except BaseException as e:  # handed to the readers, re-raised by load()
                failure.append(e)
            finally:
                self.timings["gpu_ready_at_s"] = time.monotonic() - t0
                ready.set()

        cuda = threading.Thread(target=bring_up, name="regions-cuda", daemon=True)
        cuda.start()
        try:
            for path, host in files.items():
                fds[path], direct = _open(host, self.direct)
                self.used_direct = self.used_direct and direct
            for path in {j.path for j in jobs[:n_cached]}:
                cached_fds[path] = os.open(files[path], os.O_RDONLY)
                # exactly the asked-for pages: readahead past them would read bytes that
                # the O_DIRECT reads then fetch from the disk a second time
                os.posix_fadvise(cached_fds[path], 0, 0, os.POSIX_FADV_RANDOM)
            self.timings["files_opened_at_s"] = time.monotonic() - t0
            self._fill(jobs, fds, ready, failure, cached_fds, n_cached)
            self.timings["read_copy_s"] = time.monotonic() - t0
        except OSError as e:
            raise RegionLoadError(f"reading the region files failed: {e}") from None
        finally:
            cuda.join()
            for fd in [*fds.values(), *cached_fds.values()]:
                os.close(fd)
        if failure:
            raise failure[0]
        self.timings["load_s"] = time.monotonic() - t0

    def _fill(
        self,
        jobs: list[ReadJob],
        fds: dict[str, int],
        ready: threading.Event,
        failure: list[BaseException],
        cached_fds: dict[str, int] | None = None,
        n_cached: int = 0,
    ) -> None:
        buffers: list[tuple[mmap.mmap, int]] = []  # page-aligned, pinned once CUDA is up
        free: list[tuple[int, bool]] = []  # (address, registered with CUDA)
        lock = threading.Lock()
        local = threading.local()
        counted = [0]

        def buffer() -> tuple[int, bool]:
            with lock:
                if free:
                    return free.pop()
            m = mmap.mmap(-1, self.chunk)
            with contextlib.suppress(AttributeError, OSError):
                # huge pages: a 4 MiB O_DIRECT read is then a request or two, not one per
                # 254 scattered 4 KiB pages (the disk's segment limit)
                m.madvise(mmap.MADV_HUGEPAGE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            with lock:
                buffers.append((m, addr))
            return addr, False

        def read(job: ReadJob, buf: int, fd: int) -> int:
            view = (ctypes.c_char * job.length).from_address(buf)
            got = 0
            while got < job.length:
                r = os.preadv(fd, [memoryview(view).cast("B")[got:]], job.offset + got)
                if r == 0:
                    break  # end of file: the window's tail past it is not needed
                got += r
            need = max(b + n for b, _, _, n in job.segments)
            if got < need:
                raise RegionLoadError(f"{job.path} ended at {job.offset + got}, need {need}")
            return got

        def copy(
            job: ReadJob, slot: list, got: int, t_start: float, t_read: float, kind: str = "region"
        ) -> None:
            """Onto the GPU from ``slot`` ([address, pinned]), once CUDA is up."""
            ready.wait()
            if failure:
                return
            d, chk = self.d, self.drv._check
            if not getattr(local, "ready", False):
                chk("cuCtxSetCurrent", d.cuCtxSetCurrent(self.ctx))
                local.ready = True
            buf = slot[0]
            if not slot[1]:  # DMA straight from this buffer from now on
                err = d.cuMemHostRegister(buf, self.chunk, 0)[0]
                slot[1] = err == d.CUresult.CUDA_SUCCESS
            for b, ri, off, n in job.segments:
                chk("cuMemcpyHtoD", d.cuMemcpyHtoD(self.ptrs[ri] + off, buf + b, n))
            with lock:
                counted[0] += got
                if self.trace is not None:
                    self.trace.append((kind, t_start, t_read, time.monotonic(), got))

        def run(job: ReadJob, cached: bool = False) -> None:
            t_start = time.monotonic()
            self.throttle.acquire(job.length)
            slot = list(buffer())
            try:
                fd = cached_fds[job.path] if cached and cached_fds else fds[job.path]
                got = read(job, slot[0], fd)
                copy(job, slot, got, t_start, time.monotonic())
            finally:
                with lock:
                    free.append((slot[0], slot[1]))
                self.throttle.release()

        # The reads past the page-cache part, with --direct-inflight: one sequential O_DIRECT
        # stream of that many reads in flight, started once the read list's last range has
        # (the disk then reads one thing at a time), into at most staging_bytes of buffers
        # that copier threads empty onto the GPU. The reads never wait for CUDA: its context
        # can come up late, and another process's CUDA restore holds the driver for a while.
        tracker = _Tracker()
        gate = threading.Event()  # the read list's ranges have all started
        staging = threading.Semaphore(max(1, self.staging_bytes // self.chunk))

        def until(ready_now) -> bool:
            """Poll ``ready_now(timeout)`` until it holds; False once another task failed."""
            while not ready_now(0.05):
                if tracker.error is not None:
                    return False
            return True

        def unstage(slot: list) -> None:
            with lock:
                free.append((slot[0], slot[1]))
            staging.release()

        def run_direct(job: ReadJob) -> None:
            if not until(gate.wait) or not until(lambda t: staging.acquire(timeout=t)):
                return
            t_start = time.monotonic()
            slot, handed = list(buffer()), False
            try:
                got = read(job, slot[0], fds[job.path])
                tracker.add(copier.submit(copy_back, job, slot, got, t_start, time.monotonic()))
                handed = True
            finally:
                if not handed:
                    unstage(slot)

        def copy_back(job: ReadJob, slot: list, got: int, t_start: float, t_read: float) -> None:
            try:
                copy(job, slot, got, t_start, t_read, "direct")
            finally:
                unstage(slot)

        t_first = time.monotonic()
        first_left = [len(self.first)]
        first_unstarted = [len(self.first)]  # a batch's ranges start one after another
        cached: dict[tuple[str, bool], int] = {}
        hints = _Hints(self.first, self.hint_bytes)

        def fd_of(r: FileRange) -> int:
            key = (r.path, r.in_root)
            with lock:
                fd = cached.get(key)
            if fd is None:  # opened outside the lock: a cold lookup must not stall the rest
                fd = file_pages.open_for_reads(r.path, r.in_root, self.root)
                with lock:
                    if key in cached:  # another reader won the race
                        if fd >= 0:
                            os.close(fd)
                        fd = cached[key]
                    else:
                        cached[key] = fd
            return fd

        def ahead(i: int, r: FileRange) -> None:
            """One page-cache read of what CRIU or the resumed process reads next."""
            t_start = time.monotonic()
            hints.started(i)
            with lock:
                first_unstarted[0] -= 1
                if first_unstarted[0] == 0:
                    gate.set()
            try:
                fd = fd_of(r)
                if fd >= 0:
                    # WILLNEED reads exactly the range (no readahead marks that would pull
                    # more in later); the read below just waits for it
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(fd, r.offset, r.length, os.POSIX_FADV_WILLNEED)
                    if not hasattr(local, "scratch"):
                        local.scratch = scratch(self.chunk)
                    pos, end = r.offset, r.offset + r.length
                    while pos < end:
                        n = os.preadv(
                            fd, [memoryview(local.scratch)[: min(self.chunk, end - pos)]], pos
                        )
                        if n <= 0:
                            break
                        pos += n
                    with lock:
                        self.first_bytes += pos - r.offset
                        if self.trace is not None:
                            now = time.monotonic()
                            self.trace.append(("first", t_start, now, now, pos - r.offset))
            finally:
                with lock:
                    first_left[0] -= 1
                    if first_left[0] == 0:
                        self.timings["first_done_at_s"] = time.monotonic() - t_first

        def ahead_all(batch: list[tuple[int, FileRange]]) -> None:
            for i, r in batch:
                ahead(i, r)

        # Open every file of the list at once: each cold open waits on the disk for
        # directories and inodes, one after another on a reader; many in parallel keep the
        # disk's queue full instead, and CRIU's own opens of the same files find them cached.
        opener = ThreadPoolExecutor(OPENERS, thread_name_prefix="open")
        for r in {(r.path, r.in_root): r for r in self.first}.values():
            opener.submit(fd_of, r)
        opener.shutdown(wait=False)
        hinter = threading.Thread(target=hints.run, args=(fd_of,), name="hints", daemon=True)
        if self.hint_bytes > 0 and self.first:
            hinter.start()
        if not self.first or self.direct_now:
            gate.set()
        sequential = jobs[n_cached:] if self.direct_inflight > 0 else []
        pooled = jobs[: len(jobs) - len(sequential)]
        try:
            pool = ThreadPoolExecutor(self.readers, thread_name_prefix="regions")
            direct_pool = ThreadPoolExecutor(max(1, self.direct_inflight), "regions-direct")
            copier = ThreadPoolExecutor(COPIERS, thread_name_prefix="regions-copy")
            try:
                for batch in batches(self.first):  # FIFO: these go first
                    tracker.add(pool.submit(ahead_all, batch))
                for k, j in enumerate(pooled):
                    tracker.add(pool.submit(run, j, k < n_cached))
                for j in sequential:
                    tracker.add(direct_pool.submit(run_direct, j))
                # short waits: the main thread must stay free for signals
                while not tracker.finished.wait(0.05):
                    if self.unleashed_at is None and self.throttle.signalled:
                        self.unleashed_at = time.monotonic() - self.t_fill
            finally:  # a failure leaves the queued reads unrun
                for ex in (pool, direct_pool, copier):
                    ex.shutdown(wait=True, cancel_futures=tracker.error is not None)
            if tracker.error is not None:
                raise tracker.error
            ready.wait()
            if not failure and self.spec.regions:  # this thread too (export and close run here)
                self.drv._check("cuCtxSetCurrent", self.d.cuCtxSetCurrent(self.ctx))
                self.drv._check("cuCtxSynchronize", self.d.cuCtxSynchronize())
        finally:
            hints.stop()
            if hinter.is_alive():
                hinter.join()
            opener.shutdown(wait=True, cancel_futures=True)
            for fd in cached.values():
                if fd >= 0:
                    os.close(fd)
            for addr, is_pinned in free:
                if is_pinned:
                    self.d.cuMemHostUnregister(addr)
            for m, _ in buffers:
                with contextlib.suppress(BufferError):  # a ctypes view may still pin it
                    m.close()
        self.bytes_read = counted[0]

    def export(self) -> list[int]:
        if not self.handles:
            return []
        kind = self.d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        return [
            int(self.drv._check("cuMemExportToShareableHandle",
                                self.d.cuMemExportToShareableHandle(h, kind, 0))[0])
            for h in self.handles
        ]  # fmt: skip

    def close(self) -> None:
        for handle, ptr, region in zip(self.handles, self.ptrs, self.spec.regions, strict=False):
            self.d.cuMemUnmap(ptr, region.bytes)
            self.d.cuMemAddressFree(ptr, region.bytes)
            self.d.cuMemRelease(handle)
        self.handles, self.ptrs = [], []


@contextlib.contextmanager
def _control_dir(control: Path) -> Iterator[int]:
    """An O_NOFOLLOW handle of the pod's control dir: a planted link there is refused."""
    dfd = os.open(control, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        yield dfd
    finally:
        os.close(dfd)


def listen(control: Path, name: str, uid: int | None = None) -> socket.socket:
    """A listening unix socket ``name`` in ``control``, reached without following symlinks.

    The control dir belongs to the pod: the path goes through an O_NOFOLLOW
    handle of the directory, so a planted link cannot move the socket elsewhere.
    """
    with _control_dir(control) as dfd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"/proc/self/fd/{dfd}/{name}")
        if uid is not None:
            os.chown(name, uid, -1, dir_fd=dfd, follow_symlinks=False)
        os.chmod(f"/proc/self/fd/{dfd}/{name}", 0o660 if uid is not None else 0o666)
        sock.listen(4)
        return sock


def serve(
    spec: GpuRegions,
    control: Path,
    root: Path = Path("/"),
    device_uuid: str = "",
    readers: int = DEFAULT_READERS,
    direct: bool = True,
    uid: int | None = None,
    timeout_s: float = ACCEPT_TIMEOUT_S,
    name: str = "",
    throttle: Throttle | None = None,
    first: Sequence[FileRange] = (),
    chunk: int = DEFAULT_CHUNK,
    hint_bytes: int = 0,
    trace: bool = False,
    cached_bytes: int = 0,
    direct_inflight: int = 0,
    direct_now: bool = False,
) -> dict:
    """Listen first (the worker waits on us), load, hand over; returns what happened."""
    name = name or GPU_REGIONS_SOCKET
    t0 = time.monotonic()
    listener = listen(control, name, uid)
    stats: dict[str, Any] = {"ok": False}
    loader = Loader(
        spec, root, device_uuid, readers, chunk, direct, throttle, first, hint_bytes, cached_bytes,
        direct_inflight, direct_now=direct_now,
    )  # fmt: skip
    if trace:
        loader.trace = []
    try:
        try:
            loader.load()
        except (RegionLoadError, RuntimeError) as e:
            # Gone at once: a worker finds no socket (or a closed one) and reads its files.
            stats["error"] = str(e)
            return stats
        finally:
            stats.update(loader.timings, bytes=loader.bytes_read, direct=loader.used_direct)
            if loader.first:
                stats["first_bytes"] = loader.first_bytes
            if loader.unleashed_at is not None:  # into the fill, when CRIU was done
                stats["full_speed_after_s"] = loader.unleashed_at
            if loader.trace is not None and hasattr(loader, "t_fill"):
                z = loader.t_fill
                stats["fill_started_at_s"] = z - t0
                stats["trace"] = [
                    [kind, round(a - z, 4), round(b - z, 4), round(c - z, 4), n]
                    for kind, a, b, c, n in sorted(loader.trace, key=lambda x: x[1])
                ]
            stats["loaded_at_s"] = time.monotonic() - t0
        listener.settimeout(timeout_s)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            stats["error"] = f"no worker connected within {timeout_s:.0f}s"
            return stats
        with conn:
            conn.settimeout(timeout_s)
            fds = loader.export()
            try:
                regions = [{"name": r.name, "bytes": r.bytes} for r in spec.regions]
                fdpass.send(conn, {"ok": True, "regions": regions, "timings": loader.timings}, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            reply, extra = fdpass.recv(conn)
            for fd in extra:
                os.close(fd)
            stats["ok"] = bool(reply.get("ok"))
            if not stats["ok"]:
                stats["error"] = str(reply.get("error", "worker refused the regions"))
            stats["handed_over_at_s"] = time.monotonic() - t0
    except (OSError, fdpass.FdPassError) as e:
        stats["error"] = f"handing the regions over failed: {e}"
    finally:
        listener.close()
        with contextlib.suppress(OSError), _control_dir(control) as dfd:
            os.unlink(name, dir_fd=dfd)
        if loader.handles:
            loader.close()
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    started = time.time()
    # First thing: SIGUSR1 means "CRIU is done, read at full speed", never "die".
    signalled = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: signalled.set())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, type=Path, help="the snapshot's regions file")
    p.add_argument("--control", required=True, type=Path, help="the pod's control dir (host path)")
    p.add_argument("--root", default="/", type=Path, help="the worker's root, e.g. /proc/PID/root")
    p.add_argument("--device-uuid", default="")
    p.add_argument("--readers", type=int, default=DEFAULT_READERS)
    p.add_argument("--chunk-mib", type=int, default=DEFAULT_CHUNK >> 20, help="bytes per read")
    p.add_argument("--buffered", action="store_true", help="read through the page cache")
    p.add_argument("--uid", type=int, default=None, help="owner of the socket (the worker's uid)")
    p.add_argument("--timeout", type=float, default=ACCEPT_TIMEOUT_S)
    p.add_argument("--stats", type=Path, default=None, help="write what happened here (JSON)")
    p.add_argument(
        "--gentle", default="", metavar="READERS[:GB_PER_S][:idle]",
        help="until SIGUSR1: at most READERS reads in flight (0: any), paced to GB_PER_S, "
        "in the idle I/O class with :idle",
    )  # fmt: skip
    p.add_argument(
        "--first", type=Path, default=None,
        help="file ranges (file-pages JSON) to read into the page cache before the regions",
    )  # fmt: skip
    p.add_argument(
        "--hint-mib", type=int, default=0,
        help="ask the kernel for --first reads up to this far ahead of the readers (0: no)",
    )  # fmt: skip
    p.add_argument(
        "--gentle-until-eof", type=int, default=None, metavar="FD",
        help="like SIGUSR1: lift --gentle when this inherited pipe closes (CRIU is done)",
    )  # fmt: skip
    p.add_argument(
        "--cached-mib", type=int, default=0,
        help="read the regions' first MiB through the page cache (the agent asked for them)",
    )  # fmt: skip
    p.add_argument(
        "--direct-inflight", type=int, default=0,
        help="past --cached-mib: one sequential stream of this many O_DIRECT reads in flight, "
        "behind the --first reads (0: the readers' pool)",
    )  # fmt: skip
    p.add_argument(
        "--direct-now", action="store_true",
        help="start the --direct-inflight stream at once, beside the --first reads",
    )  # fmt: skip
    p.add_argument("--trace", action="store_true", help="every read's times in --stats")
    a = p.parse_args(argv)
    try:
        throttle = Throttle.parse(a.gentle)
    except ValueError as e:
        p.error(str(e))
    signal.signal(signal.SIGUSR1, lambda *_: throttle.full())
    if signalled.is_set():
        throttle.full()
    if a.gentle_until_eof is not None:
        throttle.full_at_eof(a.gentle_until_eof)
    try:
        spec = GpuRegions.from_json(a.spec.read_bytes())
        first = file_pages.from_json(a.first.read_bytes()) if a.first else []
    except (OSError, RegionsError, file_pages.FilePagesError) as e:
        print(f"gpu-regions: {e}", file=sys.stderr)
        return 2
    stats = serve(
        spec, a.control, a.root, a.device_uuid, a.readers, not a.buffered, a.uid, a.timeout,
        throttle=throttle, first=first, chunk=a.chunk_mib << 20, hint_bytes=a.hint_mib << 20,
        trace=a.trace, cached_bytes=a.cached_mib << 20, direct_inflight=a.direct_inflight,
        direct_now=a.direct_now,
    )  # fmt: skip
    stats["started_wall"] = started
    if a.stats:
        a.stats.write_text(json.dumps(stats, indent=1) + "\n")
    if not stats["ok"]:
        print(f"gpu-regions: {stats.get('error')}", file=sys.stderr)
    return 0 if stats["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
