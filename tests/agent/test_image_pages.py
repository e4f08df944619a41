"""Zero pages out of CRIU's images, and the file pages a restore reads: on real CRIU dumps.

A real process holds written zero pages (anonymous), random bytes, and a private
file mapping whose copy-on-write page it overwrote with zeros (that page must
stay: dropped, the restore would show the file's bytes instead of the zeros).
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
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
    # the start of every file it maps, which CRIU reads to check build-ids: a page of the
    # data file, and of each ELF as far as its build-id note
    heads = {r.path: r for r in pages.heads}
    assert heads[data].offset == 0 and heads[data].length == 4096
    elves = [p for p in heads if open(p, "rb").read(4) == b"\x7fELF"]  # noqa: SIM115
    assert elves
    for path in elves:
        with open(path, "rb") as f:
            start = f.read(heads[path].length)
        assert start.find(b"\x03\x00\x00\x00GNU\x00") > 0, path  # NT_GNU_BUILD_ID in it
    assert file_pages.FilePages.from_json(pages.to_json()) == pages

    snapshot = tmp_path / "snap"
    (snapshot / "criu").mkdir(parents=True)
    for p in images.glob("*.img"):
        os.link(p, snapshot / "criu" / p.name)
    (snapshot / FILE_PAGES_FILE).write_text(pages.to_json())
    reads = file_pages.restore_reads(snapshot, piece=1 << 20)
    small = next(i for i, r in enumerate(reads) if r.in_root)
    assert reads[small : small + len(pages.heads)] == list(pages.heads)  # CRIU opens them first
    del reads[small : small + len(pages.heads)]
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


def _elf(phdrs: list[tuple[int, int, int]]) -> bytes:
    """A 64-bit little-endian ELF header and its program headers (type, offset, size)."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 32, 64)  # e_phoff
    struct.pack_into("<HH", head, 54, 56, len(phdrs))  # e_phentsize, e_phnum
    for kind, offset, size in phdrs:
        head += struct.pack("<IIQQQQQQ", kind, 4, offset, 0, 0, size, size, 8)
    return bytes(head)


@pytest.mark.parametrize(
    ("start", "head"),
    [
        (b"{not an ELF", 4096),
        (_elf([(1, 0, 1 << 20), (4, 0x270, 0x24)]), 4096),  # the usual: the note in page 0
        (_elf([(4, 0x2000, 0x24)]), 0x3000),  # a note further in: read up to its end
        (_elf([(4, 2 << 20, 0x24)]), 4096),  # beyond what CRIU maps: not read
        (_elf([(4, 0x270, 0x24)])[:100], 4096),  # headers cut short: just the first page
    ],
)
def test_file_heads_cover_what_the_build_id_check_reads(start: bytes, head: int) -> None:
    assert file_pages.head_bytes(start) == head


@pytest.mark.parametrize(
    "doc",
    [
        '{"schema_version": 2, "cow": [], "mapped": []}',
        '{"schema_version": 1, "cow": [], "mapped": [], "heads": [["/lib.so", 0, 0]]}',
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
