"""The agent's ordered read stream at the start of a restore (``file_pages.advise``).

Real files and real page-cache reads: the stream asks for the ranges in order,
resolves worker paths inside the placeholder's root, keeps at most ``depth``
bytes asked for and not yet read, stops when told, and the loader's split
between page-cache and O_DIRECT reads covers every planned read once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import file_pages
from agent.file_pages import FileRange
from agent.gpu_regions import (
    BATCH_RANGES,
    BATCH_SMALL,
    Loader,
    _Tracker,
    batches,
    cached_count,
    cached_ranges,
    plan_reads,
)
from tests.support.page_cache import resident
from tests.support.placeholder import chrooted
from thaw.contract import GpuRegion, GpuRegions, RegionSource, SourceFile

MIB = 1 << 20


def _cold_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


class _Spy:
    """Records the stream's page-cache requests and waits, on top of the real calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, int, int]] = []  # (kind, inode, offset, bytes)
        real_advise, real_pread = os.posix_fadvise, os.pread

        def advise(fd: int, offset: int, n: int, how: int) -> None:
            self.events.append(("ask", os.fstat(fd).st_ino, offset, n))
            real_advise(fd, offset, n, how)

        def pread(fd: int, n: int, offset: int) -> bytes:
            self.events.append(("wait", os.fstat(fd).st_ino, offset, n))
            return real_pread(fd, n, offset)

        monkeypatch.setattr(file_pages.os, "posix_fadvise", advise)
        monkeypatch.setattr(file_pages.os, "pread", pread)


def test_stream_reads_everything_in_order(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "pages.img"
    _cold_file(data, 9 * MIB)
    ranges = [FileRange(str(data), i * MIB, 256 << 10) for i in (3, 0, 5)]
    spy = _Spy(monkeypatch)
    assert file_pages.advise(ranges) == 3 * (256 << 10)
    assert [(e[2], e[3]) for e in spy.events if e[0] == "ask"] == [
        (r.offset, r.length) for r in ranges
    ]
    assert file_pages.advise(ranges, budget=300 << 10) == 300 << 10  # a budget cuts it short
    spy.events.clear()  # a range larger than the kernel reads per request goes out in pieces
    piece = file_pages.ADVISE_PIECE
    assert file_pages.advise([FileRange(str(data), 0, 2 * piece + 4096)]) == 2 * piece + 4096
    assert [(e[2], e[3]) for e in spy.events] == [(0, piece), (piece, piece), (2 * piece, 4096)]


def test_stream_keeps_at_most_its_depth_asked_and_not_read(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "weights.bin"
    _cold_file(data, 16 * MIB)
    ranges = [FileRange(str(data), i * MIB, MIB) for i in range(16)]
    spy = _Spy(monkeypatch)
    assert file_pages.advise(ranges, depth=3 * MIB) == 16 * MIB
    pending, waited = 0, []
    for kind, _, offset, n in spy.events:
        if kind == "ask":
            pending += n
        else:  # the oldest request's last page, in order
            waited.append(offset)
            pending -= MIB
        assert pending <= 4 * MIB  # the depth, plus the request just asked for
    assert waited == [i * MIB + MIB - 1 for i in range(13)]  # 3 MiB left in flight at the end
    fd = os.open(data, os.O_RDONLY)
    try:  # what the stream waited for is in the page cache
        assert all(resident(fd, 16 * MIB)[: 13 * 256])
    finally:
        os.close(fd)


def test_stream_resolves_worker_paths_inside_the_root(tmp_path: Path, monkeypatch) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "models").mkdir(parents=True)
    outside.mkdir()
    inside = root / "models" / "w.bin"
    _cold_file(inside, MIB)
    _cold_file(outside / "w.bin", MIB)
    # a link planted in the worker's root, aimed at the host: resolved inside the root
    (root / "link").symlink_to(outside)
    (root / "models" / "last").symlink_to(outside / "w.bin")  # the last link: never followed
    ranges = [
        FileRange("/link/w.bin", 0, 4096, in_root=True),
        FileRange("/models/w.bin", 0, 4096, in_root=True),
        FileRange("/models/last", 0, 4096, in_root=True),
        FileRange(str(outside / "w.bin"), 4096, 4096),  # a host path (CRIU's images)
    ]
    spy = _Spy(monkeypatch)
    assert file_pages.advise(ranges, root=root) == 2 * 4096
    asked = [(e[1], e[2]) for e in spy.events if e[0] == "ask"]
    assert asked == [(inside.stat().st_ino, 0), ((outside / "w.bin").stat().st_ino, 4096)]
    spy.events.clear()
    assert file_pages.advise(ranges) == 4096  # no root: worker paths are left alone
    assert [e[2] for e in spy.events] == [4096]


def test_stream_stops_when_told(tmp_path: Path) -> None:
    data = tmp_path / "x.bin"
    _cold_file(data, MIB)
    stop = threading.Event()
    stop.set()
    assert file_pages.advise([FileRange(str(data), 0, MIB)], stop=stop) == 0
    assert file_pages.advise([FileRange(str(tmp_path / "gone"), 0, MIB)]) == 0  # missing: skipped


def test_cached_part_and_direct_part_cover_every_planned_read(tmp_path: Path) -> None:
    files = []
    sources = []
    at = 0
    for name, size in (("a.safetensors", 10 * MIB + 123), ("b.safetensors", 7 * MIB)):
        (tmp_path / name).write_bytes(b"\0")
        files.append(SourceFile(f"/models/{name}", size, 1))
        sources.append(RegionSource(f"/models/{name}", 8, at, size - 8))
        at += size
    spec = GpuRegions((GpuRegion("weights", at, tuple(files), tuple(sources)),), 0, "")
    jobs = plan_reads(spec.regions, 4 * MIB)
    assert cached_count(jobs, 0) == 0
    assert cached_count(jobs, 1 << 62) == len(jobs)
    n = cached_count(jobs, 9 * MIB)
    assert n == 2 and sum(j.length for j in jobs[:n]) <= 9 * MIB
    ranges = cached_ranges(spec, 9 * MIB, 4 * MIB)
    assert [(r.path, r.offset, r.length) for r in ranges] == [
        (j.path, j.offset, j.length) for j in jobs[:n]
    ]
    assert all(r.in_root for r in ranges)  # model files are the worker's


def test_tracker_finishes_on_the_last_task_or_the_first_failure() -> None:
    release = threading.Event()

    def task(k: int) -> int:
        release.wait(5)
        if k == 3:
            raise OSError("disk gone")
        return k

    tracker = _Tracker()
    with ThreadPoolExecutor(2) as pool:
        for k in (1, 2):
            tracker.add(pool.submit(task, k))
        assert not tracker.finished.is_set()
        release.set()
        assert tracker.finished.wait(5) and tracker.error is None and tracker.left == 0
        release.clear()
        for k in (3, 4, 5):
            tracker.add(pool.submit(task, k))
        release.set()
        assert tracker.finished.wait(5)
    assert isinstance(tracker.error, OSError)


def test_restore_step_streams_the_order_then_the_weights_from_the_workers_root(
    tmp_path: Path, monkeypatch
) -> None:
    """The agent's restore step: one stream (CRIU's images, then the weights under the
    placeholder's root, bounded) beside a loader told to take those weights from the page cache."""
    from agent.steps import GpuRegionsStep, RestoreContext
    from thaw.contract import CONTROL_DIR, CRIU_IMAGES_DIR, GPU_REGIONS_FILE

    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    (root / CONTROL_DIR.lstrip("/")).mkdir(parents=True)
    (root / "models").mkdir()
    weights = root / "models" / "w.safetensors"  # only inside the worker's root
    _cold_file(weights, 9 * MIB)
    snap = tmp_path / "snap"
    images = snap / CRIU_IMAGES_DIR
    images.mkdir(parents=True)
    (images / "core-1.img").write_bytes(b"c" * 300)
    _cold_file(images / "pages-1.img", 6 * MIB)
    st = weights.stat()
    spec = GpuRegions(
        (
            GpuRegion(
                "weights",
                9 * MIB,
                (SourceFile("/models/w.safetensors", st.st_size, st.st_mtime_ns),),
                (RegionSource("/models/w.safetensors", 0, 0, 9 * MIB),),
            ),
        )
    )
    (snap / GPU_REGIONS_FILE).write_text(spec.to_json())
    calls: list[tuple] = []
    done = threading.Event()
    real = file_pages.advise

    def spy(ranges, budget=None, root=None, depth=None, stop=None) -> int:
        asked = real(ranges, budget, root, depth, stop)
        calls.append((list(ranges), budget, root, depth, asked))
        if len(calls) == 2:
            done.set()
        return asked

    monkeypatch.setattr(file_pages, "advise", spy)
    step = GpuRegionsStep()
    with chrooted(root) as pid:
        try:
            _step_streams(step, snap, pid, calls, done)
        finally:
            step.abort_restore(RestoreContext(None, snap, pid))  # type: ignore[arg-type]


def _step_streams(step, snap: Path, pid: int, calls: list, done: threading.Event) -> None:
    """Restore into the placeholder ``pid``: what the stream was asked, what the loader was told."""
    from agent import steps
    from agent.steps import RestoreContext

    step.before_restore(RestoreContext(None, snap, pid))  # type: ignore[arg-type]
    assert done.wait(30)
    (ranges, budget, where, depth, asked), (tail, _, where2, depth2, asked2) = calls
    assert where == where2 == Path(f"/proc/{pid}/root") and budget is None
    # CRIU's images first, in the restore's order, under their bound; then the weights
    assert depth == steps.RESTORE_DEPTH and depth2 == steps.RESTORE_WEIGHTS_DEPTH
    order = file_pages.restore_reads(snap)
    assert ranges == order and asked == sum(r.length for r in order)
    assert [(r.path, r.in_root) for r in tail] == [("/models/w.safetensors", True)] * 3
    assert [r.offset for r in tail] == [0, 4 * MIB, 8 * MIB]  # the loader's 4 MiB reads
    assert sum(r.length for r in tail) == 9 * MIB
    # resolved inside the placeholder's root: the weights exist nowhere else
    assert asked2 == 9 * MIB
    argv = step.loader.args
    assert argv[argv.index("--cached-mib") + 1] == str(steps.RESTORE_CACHED >> 20)


class _HostDriver:
    """The few driver calls ``Loader._fill`` makes, copying into host memory.

    CPU coverage of how the fill schedules its reads (tests/gpu runs the same
    path onto a real GPU): every byte lands once, the sequential O_DIRECT part
    starts behind the read list and never holds more than its staging bytes
    while the copies wait, and a failed copy ends the fill instead of hanging it.
    """

    class CUresult:
        CUDA_SUCCESS = 0

    def __init__(self, fail_at: int | None = None) -> None:
        self._d = self
        self.copies = 0
        self.fail_at = fail_at

    def _check(self, call: str, result: tuple) -> tuple:
        if result[0] != 0:
            raise RuntimeError(f"{call} failed")
        return result[1:]

    def cuCtxSetCurrent(self, ctx) -> tuple:
        return (0,)

    def cuCtxSynchronize(self) -> tuple:
        return (0,)

    def cuMemHostRegister(self, buf: int, n: int, flags: int) -> tuple:
        return (0,)

    def cuMemHostUnregister(self, buf: int) -> tuple:
        return (0,)

    def cuMemcpyHtoD(self, dst: int, src: int, n: int) -> tuple:
        self.copies += 1
        if self.fail_at is not None and self.copies >= self.fail_at:
            return (1,)
        ctypes.memmove(dst, src, n)
        return (0,)


def _fill(tmp_path: Path, driver: _HostDriver, ready: threading.Event, **knobs):
    """A loader over two weight files and a read list of a third, filled into host memory."""
    sizes = {"a.safetensors": 9 * MIB + 4096, "b.safetensors": 6 * MIB}
    files, sources, at = [], [], 0
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
        st = (tmp_path / name).stat()
        files.append(SourceFile(f"/{name}", size, st.st_mtime_ns))
        sources.append(RegionSource(f"/{name}", 4096, at, size - 4096))
        at += size - 4096
    spec = GpuRegions((GpuRegion("weights", at, tuple(files), tuple(sources)),), 0, "")
    _cold_file(tmp_path / "pages.img", 8 * MIB)
    # many small cold reads on two readers: the list takes a while
    first = [FileRange(str(tmp_path / "pages.img"), k << 17, 1 << 17) for k in range(64)]
    loader = Loader(spec, tmp_path, readers=2, chunk=MIB, direct=False, first=first, **knobs)
    loader.trace = []
    loader.drv, loader.d, loader.ctx = driver, driver, None
    target = ctypes.create_string_buffer(at)
    loader.ptrs = [ctypes.addressof(target)]
    jobs = plan_reads(spec.regions, MIB)
    n_cached = cached_count(jobs, loader.cached_bytes)
    fds = {f"/{n}": os.open(tmp_path / n, os.O_RDONLY) for n in sizes}
    try:
        loader._fill(jobs, fds, ready, [], dict(fds), n_cached)
    finally:
        for fd in fds.values():
            os.close(fd)
    want = b"".join((tmp_path / n).read_bytes()[4096:] for n in sizes)
    return loader, target.raw, want


def test_sequential_direct_part_lands_every_byte_behind_the_read_list(tmp_path: Path) -> None:
    ready = threading.Event()
    threading.Timer(0.3, ready.set).start()  # CUDA comes up late
    staged = 3
    loader, got, want = _fill(
        tmp_path, _HostDriver(), ready,
        cached_bytes=4 * MIB, direct_inflight=2, staging_bytes=staged * MIB,
    )  # fmt: skip
    assert got == want
    reads = loader.trace
    first = [r for r in reads if r[0] == "first"]
    cached = [r for r in reads if r[0] == "region"]
    sequential = [r for r in reads if r[0] == "direct"]  # past the 4 MiB from the page cache
    assert len(first) == 64 and len(cached) == 4
    assert len(cached) + len(sequential) == len(plan_reads(loader.spec.regions, MIB))
    assert min(r[1] for r in sequential) >= max(r[1] for r in first)
    # before CUDA was up, the O_DIRECT stream read no more than its staging buffers hold
    up = min(r[3] for r in cached + sequential)  # the first copy: CUDA was ready by then
    assert 0 < sum(1 for r in sequential if r[2] < up) <= staged


@pytest.mark.parametrize("inflight", [0, 2])
def test_a_failed_copy_ends_the_fill(tmp_path: Path, inflight: int) -> None:
    ready = threading.Event()
    ready.set()
    out: list[BaseException] = []

    def fill() -> None:
        try:
            _fill(tmp_path, _HostDriver(fail_at=3), ready, direct_inflight=inflight,
                  staging_bytes=2 * MIB)  # fmt: skip
        except BaseException as e:
            out.append(e)

    th = threading.Thread(target=fill, daemon=True)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive(), "the fill hung after a failed copy"
    assert out and "cuMemcpyHtoD failed" in str(out[0])


def test_direct_now_reads_beside_the_read_list(tmp_path: Path) -> None:
    ready = threading.Event()
    ready.set()
    loader, got, want = _fill(
        tmp_path, _HostDriver(), ready, direct_inflight=2, direct_now=True
    )  # fmt: skip
    assert got == want
    first = [r[1] for r in loader.trace if r[0] == "first"]
    sequential = [r[1] for r in loader.trace if r[0] == "direct"]
    assert len(sequential) == len(plan_reads(loader.spec.regions, MIB))  # nothing cached
    assert min(sequential) < max(first)  # not held back behind the list


def test_a_read_list_alone_loads_without_a_gpu(tmp_path: Path) -> None:
    """No regions: the loader reads its list into the page cache and never starts CUDA."""
    for name in ("core.img", "libx.so", "pages.img"):
        _cold_file(tmp_path / name, 3 * MIB)
    first = [
        FileRange(str(tmp_path / name), k * 40960, 8192)
        for k in range(24)
        for name in ("core.img", "libx.so")
    ] + [FileRange(str(tmp_path / "pages.img"), 0, 3 * MIB)]
    loader = Loader(GpuRegions((), 0, ""), tmp_path, readers=4, chunk=MIB, first=first)
    loader.trace = []
    loader.load()
    assert loader.first_bytes == sum(r.length for r in first)
    assert len([r for r in loader.trace if r[0] == "first"]) == len(first)
    assert "cuda_init_s" not in loader.timings and loader.export() == []
    fd = os.open(tmp_path / "pages.img", os.O_RDONLY)
    try:
        assert all(resident(fd, 3 * MIB))
    finally:
        os.close(fd)


def test_the_read_list_goes_to_the_readers_in_order_in_small_batches() -> None:
    sizes = [4096] * 20 + [BATCH_SMALL] + [8192] * 3 + [64 << 20] + [4096] * 2
    ranges = [FileRange(f"/f{k % 5}", k * 4096, n) for k, n in enumerate(sizes)]
    got = batches(ranges)
    assert [i for b in got for i, _ in b] == list(range(len(ranges)))  # each once, in order
    assert all(r is ranges[i] for b in got for i, r in b)
    assert max(len(b) for b in got) == BATCH_RANGES
    # a large range ends its batch: a reader does not hold small ones behind it
    assert all(r.length < BATCH_SMALL for b in got for _, r in b[:-1])
    assert [len(b) for b in got] == [8, 8, 5, 4, 2]
