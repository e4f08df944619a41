"""GPU regions around the GPU: the description, the read plan, fd passing, the loader's refusals.

The GPU half (allocate, fill, hand over, map) is tests/gpu/test_gpu_regions_handover.py.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.gpu_regions import ALIGN, check_files, listen, plan_reads
from tests.support.page_cache import resident
from tests.support.placeholder import chrooted
from thaw import fdpass
from thaw.contract import (
    GpuRegion,
    GpuRegions,
    RegionsError,
    RegionSource,
    SourceFile,
)

REPO = Path(__file__).resolve().parents[2]


def _spec(files: dict[Path, int], sources: list[RegionSource], nbytes: int) -> GpuRegions:
    entries = tuple(SourceFile(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return GpuRegions((GpuRegion("weights", nbytes, entries, tuple(sources)),))


@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_every_range_once(tmp_path: Path, seed: int) -> None:
    """Scattering the planned reads rebuilds the region byte for byte, each window read once."""
    rng = random.Random(seed)
    files = {}
    for i in range(3):
        p = tmp_path / f"f{i}.safetensors"
        p.write_bytes(rng.randbytes(rng.randrange(1, 3 << 20)))
        files[p] = p.stat().st_size
    sources, at = [], 0
    for p, size in files.items():
        pos = rng.randrange(0, 4096)
        while pos < size:  # tensors of odd sizes at odd offsets, as safetensors lays them out
            n = min(size - pos, rng.randrange(1, 700_000))
            sources.append(RegionSource(str(p), pos, at, n))
            at += -(-n // 256) * 256
            pos += n + rng.randrange(0, 3)
    nbytes = -(-at // (2 << 20)) * (2 << 20)
    spec = _spec(files, sources, nbytes)
    spec.check()
    chunk = rng.choice([ALIGN, 64 << 10, 1 << 20])
    jobs = plan_reads(spec.regions, chunk)
    want, got = bytearray(nbytes), bytearray(nbytes)
    for s in sources:
        with open(s.path, "rb") as f:
            f.seek(s.file_offset)
            want[s.region_offset : s.region_offset + s.length] = f.read(s.length)
    windows = set()
    for j in jobs:
        assert j.offset % chunk == 0 and j.length % ALIGN == 0 and j.length <= chunk
        assert (j.path, j.offset) not in windows
        windows.add((j.path, j.offset))
        with open(j.path, "rb") as f:
            f.seek(j.offset)
            buf = f.read(j.length)
        for b, ri, off, n in j.segments:
            assert ri == 0
            got[off : off + n] = buf[b : b + n]
    assert got == want


def test_regions_json_round_trip_and_refusals(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"x" * 10_000)
    spec = _spec({model: 10_000}, [RegionSource(str(model), 100, 0, 9_000)], 2 << 20)
    assert GpuRegions.from_json(spec.to_json()) == spec
    raw = json.loads(spec.to_json())
    bad = [
        ("{", "not valid JSON"),
        (json.dumps({**raw, "schema_version": 9}), "schema_version"),
        (json.dumps({**raw, "regions": [{"name": "w"}]}), "malformed"),
    ]
    r = raw["regions"][0]
    for change, why in [
        ({"sources": [{**r["sources"][0], "length": 10_000}]}, "runs past"),
        ({"sources": [{**r["sources"][0], "file_offset": -1}]}, "bad range"),
        ({"sources": [{**r["sources"][0], "path": "/elsewhere"}]}, "not among its files"),
        ({"bytes": 0}, "bad size"),
        ({"files": [{**r["files"][0], "path": "relative"}]}, "bad file entry"),
        ({"sources": [{**r["sources"][0], "length": True}]}, "bad range"),
    ]:
        bad.append((json.dumps({**raw, "regions": [{**r, **change}]}), why))
    for text, why in bad:
        with pytest.raises(RegionsError, match=why):
            GpuRegions.from_json(text)


def test_changed_or_missing_file_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"y" * 5000)
    spec = _spec({model: 5000}, [RegionSource(str(model), 0, 0, 5000)], 2 << 20)
    assert check_files(spec, Path("/")) == {str(model): model}
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1))
    with pytest.raises(RuntimeError, match="changed since the checkpoint"):
        check_files(spec, Path("/"))
    model.unlink()
    with pytest.raises(RuntimeError, match="No such file"):
        check_files(spec, Path("/"))


def test_fds_travel_with_the_message(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    f = tmp_path / "payload"
    f.write_bytes(b"handed over")
    fd = os.open(f, os.O_RDONLY)
    with a, b:
        fdpass.send(a, {"ok": True, "regions": [{"name": "w", "bytes": 1}]}, [fd])
        os.close(fd)
        message, fds = fdpass.recv(b)
        assert message["regions"][0]["name"] == "w" and len(fds) == 1
        assert os.pread(fds[0], 100, 0) == b"handed over"  # the same open file, not a copy
        os.close(fds[0])
        a.sendall(b"\x00\x00\x00\x10{")  # promises 16 bytes, then hangs up
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(fdpass.FdPassError, match="closed"):
            fdpass.recv(b)


def test_socket_is_never_placed_through_a_planted_link(tmp_path: Path) -> None:
    real = tmp_path / "control"
    real.mkdir()
    sock = listen(real, "s.sock")
    sock.close()
    assert (real / "s.sock").is_socket()
    elsewhere = tmp_path / "host-dir"
    elsewhere.mkdir()
    planted = tmp_path / "planted"
    planted.symlink_to(elsewhere)
    with pytest.raises(OSError):
        listen(planted, "s.sock")
    assert list(elsewhere.iterdir()) == []


def test_loader_gives_up_at_once_on_changed_files(tmp_path: Path) -> None:
    """No socket left behind and the reason in the stats: the worker then reads (and refuses)."""
    control = tmp_path / "control"
    control.mkdir()
    model = tmp_path / "m.bin"
    model.write_bytes(os.urandom(1 << 20))
    spec = _spec({model: 1 << 20}, [RegionSource(str(model), 0, 0, 1 << 20)], 2 << 20)
    model.write_bytes(os.urandom(1 << 20))  # rewritten after the checkpoint
    os.utime(model, ns=(1, 1))
    (tmp_path / "spec.json").write_text(spec.to_json())
    out = subprocess.run(
        [sys.executable, "-m", "agent.gpu_regions", "--spec", str(tmp_path / "spec.json"),
         "--control", str(control), "--stats", str(tmp_path / "stats.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "changed since the checkpoint" in out.stderr
    assert (
        "changed since the checkpoint" in json.loads((tmp_path / "stats.json").read_text())["error"]
    )
    assert list(control.iterdir()) == []
    (tmp_path / "broken.json").write_text("{")
    bad = subprocess.run(
        [sys.executable, "-m", "agent.gpu_regions", "--spec", str(tmp_path / "broken.json"),
         "--control", str(control)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_throttle_holds_reads_back_until_set_free() -> None:
    """Gentle: at most N reads at once and paced; full(): everything waiting goes at once."""
    import threading

    from agent.gpu_regions import Throttle

    t = Throttle.parse("2:0.001")  # 2 in flight, 1 MB/s: a 1 MB read books a second
    assert not t.unleashed.is_set()
    peak, active, lock = [0], [0], threading.Lock()
    done = []

    def read() -> None:
        t.acquire(1_000_000)
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        t.release()
        done.append(time.monotonic())

    threads = [threading.Thread(target=read) for _ in range(6)]
    start = time.monotonic()
    for th in threads:
        th.start()
    time.sleep(0.5)
    assert len(done) <= 1  # paced: the second read is booked a second after the first
    t.full()
    for th in threads:
        th.join(5)
    assert len(done) == 6 and max(done) - start < 1.0
    later = Throttle.parse("")
    assert later.unleashed.is_set()  # no --gentle: never held back
    signalled = Throttle()
    signalled.full()
    signalled.configure(1, 0, True)  # the signal came before the arguments: stays free
    assert signalled.unleashed.is_set()


def test_throttle_is_lifted_when_the_agent_closes_its_pipe() -> None:
    """The agent holds a pipe open while CRIU runs: data on it is not the end, closing is."""
    from agent.gpu_regions import Throttle

    r, w = os.pipe()
    t = Throttle.parse("4")
    waiter = t.full_at_eof(r)
    os.write(w, b"x")
    time.sleep(0.2)
    assert not t.unleashed.is_set()
    os.close(w)
    waiter.join(5)
    assert t.unleashed.is_set() and t.signalled


def test_dump_step_takes_the_regions_description_into_the_snapshot(tmp_path: Path) -> None:
    """The worker's gpu-regions.json (as its container sees it) lands checked in the staging dir."""
    from agent.steps import DumpContext, GpuRegionsStep
    from thaw.contract import CONTROL_DIR, GPU_REGIONS_FILE

    # A process whose root is tmp_path/root: the agent reads its control dir via /proc/PID/root.
    root = tmp_path / "root"
    control = root / CONTROL_DIR.lstrip("/")
    control.mkdir(parents=True)
    model = tmp_path / "m.bin"
    model.write_bytes(b"z" * 8192)
    spec = _spec({model: 8192}, [RegionSource(str(model), 0, 0, 8192)], 2 << 20)
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    with chrooted(root) as pid:
        staging = tmp_path / "staging"
        staging.mkdir()
        ctx = DumpContext(host_pid=pid, ns_pid=pid, staging=staging)
        GpuRegionsStep().before_dump(ctx)
        assert not (staging / GPU_REGIONS_FILE).exists()  # nothing released: nothing to carry
        (control / GPU_REGIONS_FILE).write_text(spec.to_json())
        GpuRegionsStep().before_dump(ctx)
        assert GpuRegions.from_json((staging / GPU_REGIONS_FILE).read_text()) == spec
        assert ctx.timings["gpu_region_bytes"] == 8192
        (control / GPU_REGIONS_FILE).write_text("{broken")
        with pytest.raises(RegionsError):
            GpuRegionsStep().before_dump(ctx)  # the checkpoint fails, with the reason


def test_hints_run_at_most_their_depth_ahead_of_the_readers(tmp_path: Path) -> None:
    from agent.file_pages import FileRange
    from agent.gpu_regions import _Hints

    data = tmp_path / "pages.bin"
    with open(data, "wb") as f:
        f.write(os.urandom(8 << 20))
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    ranges = [FileRange(str(data), i << 20, 64 << 10) for i in range(8)]  # 1 MiB apart
    fd = os.open(data, os.O_RDONLY)

    def cached() -> list[bool]:
        pages = resident(fd, 8 << 20)
        return [all(pages[r.offset // 4096 : (r.offset + r.length) // 4096]) for r in ranges]

    try:
        if any(cached()):
            pytest.skip("this filesystem keeps the file cached")
        hints = _Hints(ranges, depth=64 << 10)  # 64 KiB of the list ahead: one more range
        t = threading.Thread(target=hints.run, args=(lambda r: fd,), daemon=True)
        t.start()

        def settle(want: int) -> list[bool]:
            deadline = time.monotonic() + 5
            while True:
                if sum(cached()) >= want or time.monotonic() > deadline:
                    time.sleep(0.1)  # and nothing more arrives
                    return cached()
                time.sleep(0.01)

        assert settle(2) == [True, True] + [False] * 6  # asked ahead: not beyond the depth
        hints.started(4)  # a reader took range 4: ranges up to 4 plus one more may come
        assert settle(6)[:6] == [True] * 6 and not any(settle(6)[6:])
        hints.stop()
        t.join(5)
        assert not t.is_alive()
    finally:
        os.close(fd)
