"""What CRIU's page images hold, and dropping the zero pages of private anonymous memory.

A warm CUDA engine writes a lot of zeros into its own memory: the driver parks
device memory in host buffers at ``cuCheckpointProcessCheckpoint`` (freshly
cleared device memory included), allocators zero what they hand out. CRIU dumps
every such page, and a restore reads and copies each one back, on one thread.

For a private anonymous mapping a page that CRIU does not restore reads as zero
(the kernel's fresh anonymous page), which is exactly what a zero page held. So
removing those pages from ``pagemap-<pid>.img`` and ``pages-<id>.img`` changes
nothing the process can observe, and the restore neither reads nor copies them.
CRIU itself drops pages that a child does not share with its parent on the
same rule (``MADV_DONTNEED`` on inherited mappings). File-backed, shared, SysV,
memfd and AIO mappings keep every page: there a missing page means the file's
or the segment's content, not zero.

The image files are protobuf entries framed by CRIU's magic and a 32-bit size
(the ``crit`` format); ``pycriu.images`` provides the messages.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

PAGE = 4096
# CRIU's image framing (criu/include/magic.h), and what pycriu.images.magic says too
IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
PAGEMAP_MAGIC = 0x56084025
MM_MAGIC = 0x57492820
# pagemap_entry.flags (criu/include/pagemap.h)
PE_PARENT, PE_LAZY, PE_PRESENT = 1 << 0, 1 << 1, 1 << 2
# vma_entry.status (criu/include/image.h)
VMA_AREA_REGULAR = 1 << 0
VMA_FILE_PRIVATE, VMA_FILE_SHARED = 1 << 6, 1 << 7
VMA_ANON_SHARED, VMA_ANON_PRIVATE = 1 << 8, 1 << 9
VMA_AREA_SYSVIPC, VMA_AREA_SOCKET, VMA_AREA_AIORING, VMA_AREA_MEMFD = (
    1 << 10,
    1 << 11,
    1 << 13,
    1 << 14,
)
NOT_PLAIN_ANON = (
    VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_AREA_SYSVIPC
    | VMA_AREA_SOCKET | VMA_AREA_AIORING | VMA_AREA_MEMFD
)  # fmt: skip
ZERO_PAGE = bytes(PAGE)
CHUNK_PAGES = 2048  # 8 MiB reads while scanning
_PAGEMAP_NAME = re.compile(r"pagemap-(\d+)\.img")


class ImageFormatError(ValueError):
    """A page image that does not parse or does not add up (truncated, foreign, corrupt)."""


@dataclasses.dataclass
class PageCensus:
    """Bytes of dumped pages by the kind of mapping they belong to."""

    total: int = 0
    anon_private: int = 0
    file_private: int = 0
    other: int = 0
    zero_anon_private: int = 0  # the part of anon_private that is all zero

    def add(self, other: PageCensus) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Sparsified:
    bytes_before: int
    bytes_after: int
    pages_dropped: int
    processes: int

    @property
    def bytes_dropped(self) -> int:
        return self.bytes_before - self.bytes_after


def _messages():
    from pycriu.images import pb  # the unpacked Debian pycriu (scripts/install-criu.sh)

    return pb


def _read_entries(path: Path, magic: int) -> tuple[bytes, list[bytes]]:
    """The framing header and the raw protobuf entries of one image file."""
    data = path.read_bytes()
    if len(data) < 4:
        raise ImageFormatError(f"{path.name}: truncated header")
    first = struct.unpack_from("<I", data, 0)[0]
    pos = 8 if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) else 4
    if len(data) < pos or struct.unpack_from("<I", data, pos - 4)[0] != magic:
        raise ImageFormatError(f"{path.name}: not a CRIU image of the expected kind")
    header, entries = data[:pos], []
    while pos < len(data):
        if pos + 4 > len(data):
            raise ImageFormatError(f"{path.name}: truncated entry size at byte {pos}")
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if pos + size > len(data):
            raise ImageFormatError(f"{path.name}: entry of {size} bytes runs past the end")
        entries.append(data[pos : pos + size])
        pos += size
    return header, entries


def _write_entries(path: Path, header: bytes, entries: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        for e in entries:
            f.write(struct.pack("<I", len(e)))
            f.write(e)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass
class _Process:
    pid: int
    header: bytes
    head: object  # pagemap_head
    entries: list  # pagemap_entry
    vmas: list[tuple[int, int, int]]  # (start, end, status), sorted

    def status_at(self, addr: int) -> int:
        lo, hi = 0, len(self.vmas)
        while lo < hi:
            mid = (lo + hi) // 2
            start, end, status = self.vmas[mid]
            if addr < start:
                hi = mid
            elif addr >= end:
                lo = mid + 1
            else:
                return status
        return 0  # a page outside every VMA: keep it, CRIU will say what is wrong


def _processes(images: Path) -> Iterator[_Process]:
    pb = _messages()
    for path in sorted(images.glob("pagemap-*.img")):
        m = _PAGEMAP_NAME.fullmatch(path.name)
        if not m:  # pagemap-shmem-*: shared memory keeps all its pages
            continue
        pid = int(m.group(1))
        header, raw = _read_entries(path, PAGEMAP_MAGIC)
        if not raw:
            raise ImageFormatError(f"{path.name}: no pagemap head")
        try:
            head = pb.pagemap_head.FromString(raw[0])
            entries = [pb.pagemap_entry.FromString(r) for r in raw[1:]]
            _, mm_raw = _read_entries(images / f"mm-{pid}.img", MM_MAGIC)
            mm = pb.mm_entry.FromString(mm_raw[0]) if mm_raw else None
        except FileNotFoundError as e:
            raise ImageFormatError(f"{path.name}: no mm-{pid}.img beside it") from e
        except Exception as e:  # protobuf's DecodeError and friends
            if isinstance(e, ImageFormatError):
                raise
            raise ImageFormatError(f"{path.name}: {e}") from e
        if mm is None:
            raise ImageFormatError(f"mm-{pid}.img: empty")
        vmas = sorted((v.start, v.end, v.status) for v in mm.vmas)
        yield _Process(pid, header, head, entries, vmas)


def _has_data(entry) -> bool:
    flags = entry.flags if entry.HasField("flags") else (0 if entry.in_parent else PE_PRESENT)
    return bool(flags & PE_PRESENT)


def _droppable(status: int) -> bool:
    return (
        bool(status & VMA_ANON_PRIVATE)
        and bool(status & VMA_AREA_REGULAR)
        and not (status & NOT_PLAIN_ANON)
    )


def _pages(f, count: int) -> Iterator[bytes]:
    """``count`` pages from ``f``, read in chunks."""
    while count:
        n = min(count, CHUNK_PAGES)
        chunk = f.read(n * PAGE)
        if len(chunk) != n * PAGE:
            raise ImageFormatError(f"{f.name}: ends before its pagemap says")
        for i in range(n):
            yield chunk[i * PAGE : (i + 1) * PAGE]
        count -= n


def census(images: Path) -> PageCensus:
    """Bytes of dumped pages by mapping kind, and how many anon-private ones are zero."""
    total = PageCensus()
    for proc in _processes(images):
        with open(images / f"pages-{proc.head.pages_id}.img", "rb") as f:
            for e in proc.entries:
                if not _has_data(e):
                    continue
                pages = _pages(f, e.nr_pages)
                for i, page in enumerate(pages):
                    status = proc.status_at(e.vaddr + i * PAGE)
                    total.total += PAGE
                    if _droppable(status):
                        total.anon_private += PAGE
                        total.zero_anon_private += PAGE if page == ZERO_PAGE else 0
                    elif status & VMA_FILE_PRIVATE:
                        total.file_private += PAGE
                    else:
                        total.other += PAGE
    return total


def drop_zero_pages(images: Path) -> Sparsified:
    """Rewrite each process's pagemap and pages without the zero pages of anon-private memory.

    Each file is replaced atomically; a failure leaves the original images.
    """
    before = after = dropped = count = 0
    pb = _messages()
    for proc in list(_processes(images)):
        count += 1
        pages_path = images / f"pages-{proc.head.pages_id}.img"
        tmp = pages_path.with_name(f".{pages_path.name}.tmp")
        kept_entries: list = []
        dropped_here = 0
        try:
            with open(pages_path, "rb") as src, open(tmp, "wb") as dst:
                for e in proc.entries:
                    if not _has_data(e):
                        kept_entries.append(e)
                        continue
                    run_start, run_len = -1, 0
                    for i, page in enumerate(_pages(src, e.nr_pages)):
                        addr = e.vaddr + i * PAGE
                        before += PAGE
                        if page == ZERO_PAGE and _droppable(proc.status_at(addr)):
                            dropped_here += 1
                            if run_len:
                                kept_entries.append(_entry(pb, e, run_start, run_len))
                                run_len = 0
                            continue
                        if not run_len:
                            run_start = addr
                        run_len += 1
                        dst.write(page)
                        after += PAGE
                    if run_len:
                        kept_entries.append(_entry(pb, e, run_start, run_len))
                if src.read(1):
                    raise ImageFormatError(f"{pages_path.name}: more pages than its pagemap says")
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dropped += dropped_here
        if not dropped_here:
            tmp.unlink()
            continue
        _write_entries(
            images / f"pagemap-{proc.pid}.img",
            proc.header,
            [proc.head.SerializeToString(), *(e.SerializeToString() for e in kept_entries)],
        )
        os.replace(tmp, pages_path)
    return Sparsified(before, after, dropped, count)


def _entry(pb, like, vaddr: int, nr_pages: int):
    e = pb.pagemap_entry()
    e.CopyFrom(like)
    e.vaddr, e.nr_pages = vaddr, nr_pages
    return e
