"""Zero pages out of CRIU's images, and the file pages a restore reads: on real CRIU dumps.

A real process holds written zero pages (anonymous), random bytes, and a private
file mapping whose copy-on-write page it overwrote with zeros (that page must
stay: dropped, the restore would show the file's bytes instead of the zeros).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import file_pages
from agent.image_pages import ImageFormatError, census, drop_zero_pages
from thaw.contract import FILE_PAGES_FILE

MB = 1 << 20
ZERO_MB, RANDOM_MB = 24, 4

WORKER = """
import hashlib, mmap, os, signal, sys, time
out, data = sys.argv[1], sys.argv[2]
zeros = bytearray({zero} << 20)
for i in range(0, len(zeros), 4096):
    zeros[i] = 0  # written: real pages, all zero
noise = bytearray(os.urandom({rand} << 20))
with open(data, "r+b") as f:
    private = mmap.mmap(f.fileno(), 1 << 20, flags=mmap.MAP_PRIVATE)
private[4096:8192] = bytes(4096)  # a private copy, now zero; the file says b"A"
_ = private[64 << 10]  # read: a mapped file page, not a copy

def report(*_):
    zeros[123] = 7  # the restored process can still write its dropped pages
    digest = [hashlib.sha256(b).hexdigest() for b in (zeros, noise, private[:])]
    with open(out + ".tmp", "w") as f:
        f.write(" ".join(digest))
    os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, report)
open(out + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""


def _expected(noise_sha: str) -> list[str]:
    zeros = bytearray(ZERO_MB * MB)
    zeros[123] = 7
    private = bytearray(b"A" * MB)
    private[4096:8192] = bytes(4096)
    return [hashlib.sha256(zeros).hexdigest(), noise_sha, hashlib.sha256(private).hexdigest()]


def _wait(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def _report(pid: int, out: Path) -> list[str]:
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    _wait(out)
    return out.read_text().split()


@pytest.fixture
def dumped(criu_ready, tmp_path: Path):
    """(images dir, pid, report file, digests before the dump); the process is dumped, killed."""
    spec, _ = criu_ready
    data = tmp_path / "data.bin"
    data.write_bytes(b"A" * MB)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(zero=ZERO_MB, rand=RANDOM_MB))
    out = tmp_path / "report"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(data)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    try:
        _wait(Path(f"{out}.ready"))
        before = _report(proc.pid, out)
        pages = file_pages.record([proc.pid])
        (tmp_path / FILE_PAGES_FILE).write_text(pages.to_json())
        dump = subprocess.run(
            spec.argv("dump", "-t", str(proc.pid), "-D", str(images), "--shell-job", "-o", "d.log"),
            capture_output=True, text=True,
        )  # fmt: skip
        assert dump.returncode == 0, (images / "d.log").read_text()[-2000:]
        proc.wait(timeout=30)  # CRIU killed it after the dump
        yield images, proc.pid, out, before, pages
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-9", "-f", str(script)], check=False)


def test_zero_pages_dropped_and_the_process_sees_the_same_memory(criu_ready, dumped) -> None:
    spec, _ = criu_ready
    images, pid, out, before, _ = dumped
    assert before == _expected(before[1])  # what the worker holds, as the test computes it
    seen = census(images)
    assert seen.zero_anon_private >= ZERO_MB * MB
    assert seen.file_private >= 4096  # the zeroed private copy is counted, not dropped
    size = sum(p.stat().st_size for p in images.glob("pages-*.img"))

    dropped = drop_zero_pages(images)
    after = census(images)
    assert dropped.bytes_dropped == seen.zero_anon_private
    assert after.zero_anon_private == 0
    assert after.file_private == seen.file_private
    assert sum(p.stat().st_size for p in images.glob("pages-*.img")) == size - dropped.bytes_dropped
    assert drop_zero_pages(images).bytes_dropped == 0  # idempotent

    restore = subprocess.run(
        spec.argv("restore", "-D", str(images), "--shell-job", "-d", "-o", "r.log"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert restore.returncode == 0, (images / "r.log").read_text()[-2000:]
    try:
        assert _report(pid, out) == _expected(before[1])
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_truncated_page_image_is_refused_and_left_as_it_was(dumped) -> None:
    images = dumped[0]
    pages = next(images.glob("pages-*.img"))
    with open(pages, "r+b") as f:
        f.truncate(pages.stat().st_size - 4096)
    snapshot = {p.name: p.read_bytes() for p in images.iterdir() if p.suffix == ".img"}
    with pytest.raises(ImageFormatError, match="ends before its pagemap"):
        drop_zero_pages(images)
    assert {p.name: p.read_bytes() for p in images.iterdir() if p.suffix == ".img"} == snapshot
    assert not list(images.glob(".*.tmp"))


def test_file_pages_record_and_restore_read_order(dumped, tmp_path: Path) -> None:
    images, _, _, _, pages = dumped
    data = str(tmp_path / "data.bin")
    assert any(r.path == data and r.offset <= 4096 < r.offset + r.length for r in pages.cow)
    assert any(r.path == data and r.offset <= 64 << 10 < r.offset + r.length for r in pages.mapped)
    assert any("python" in Path(r.path).name for r in pages.mapped)  # its own code
    assert file_pages.FilePages.from_json(pages.to_json()) == pages

    snapshot = tmp_path / "snap"
    (snapshot / "criu").mkdir(parents=True)
    for p in images.glob("*.img"):
        os.link(p, snapshot / "criu" / p.name)
    (snapshot / FILE_PAGES_FILE).write_text(pages.to_json())
    reads = file_pages.restore_reads(snapshot, piece=1 << 20)
    kinds = [
        "pages" if Path(r.path).name.startswith("pages-")
        else "cow" if r in pages.cow else "mapped" if r in pages.mapped else "small"
        for r in reads
    ]  # fmt: skip
    order = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert order == ["small", "cow", "pages", "mapped"]
    assert all(r.in_root for r in reads if not r.path.startswith(str(snapshot)))
    assert max(r.length for r in reads if Path(r.path).name.startswith("pages-")) <= 1 << 20
    img_bytes = sum(p.stat().st_size for p in images.glob("*.img"))
    assert sum(r.length for r in reads if not r.in_root) == img_bytes

    (snapshot / FILE_PAGES_FILE).write_text("{not json")  # advisory: CRIU's images still come
    assert sum(r.length for r in file_pages.restore_reads(snapshot) if not r.in_root) == img_bytes


@pytest.mark.parametrize(
    "doc",
    [
        '{"schema_version": 2, "cow": [], "mapped": []}',
        '{"schema_version": 1, "cow": [["lib.so", 0, 4096]], "mapped": []}',
        '{"schema_version": 1, "cow": [], "mapped": [["/lib.so", -1, 4096]]}',
        '{"schema_version": 1, "cow": [], "mapped": [["/lib.so", 0, true]]}',
        '{"schema_version": 1, "cow": {}, "mapped": []}',
        "[]",
    ],
)
def test_file_pages_record_is_strict(doc: str) -> None:
    with pytest.raises(file_pages.FilePagesError):
        file_pages.FilePages.from_json(doc)
