"""File pages a restore reads besides CRIU's images, and the order a restore reads it all in.

A restored engine reads more than CRIU's images. Every private file mapping
with dumped pages (relocated library data) makes CRIU's page restore fault
the original page in from the file first; after CRIU the resumed process
faults in the library code it runs. Those are small synchronous reads spread
over big files (``libtorch_cuda.so``, ``libcublasLt.so``), each widened to the
disk's readahead window (8 MiB on the GPU nodes measured): cheap on an idle
disk, slow behind other readers, and several times the bytes needed.

At checkpoint :func:`record` takes them from ``/proc/PID/pagemap`` (pages in
the tree's page tables): ``cow``, the private copies CRIU dumps, whose
originals its restore faults in, and ``mapped``, the rest. It also records
``heads``: the start of every regular file the tree maps or holds open. CRIU
checks each such file's ELF build-id when it reopens it, through a mapping of
the file's first MiB; on a cold file each check is a fault widened to the
readahead window, one file after another (measured on an H100 node: CRIU
waiting on them for a second of its restore, 0.6 GB read for 1.2 MB used).
A restore then reads everything in one order through one pool of readers
(:func:`restore_reads`, run by ``agent.gpu_regions`` before the GPU regions):
CRIU's small images, the heads, the ``cow`` originals, CRIU's pages, then the
mapped pages the resumed process will touch.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import stat
import struct
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.procfs import resolve_under
from thaw.contract import CRIU_IMAGES_DIR, FILE_PAGES_FILE, versioned_object

PAGE = 4096
PRESENT = 1 << 63
FILE_OR_SHARED = 1 << 61  # clear on a present page of a file mapping: a private (COW) copy
MERGE_GAP = 128 << 10  # read across holes smaller than this: one larger request is cheaper
MAX_RANGE = 16 << 20
IMAGE_PIECE = 4 << 20  # CRIU's pages are read in pieces this big, several at once
ADVISE_PIECE = 4 << 20  # one read-ahead request of the restore's stream (advise)
OPENERS = 32  # files the stream opens at once, ahead of its requests
SKIP_PREFIXES = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV", "/anon_hugepage")
BUILD_ID_MAP = 1 << 20  # how much of each file CRIU maps to find its build-id note
HEAD_READ = 64 << 10  # read at dump to find the ELF program headers
VERSION = 1


class FilePagesError(ValueError):
    """A file-pages record that does not parse."""


@dataclasses.dataclass(frozen=True)
class FileRange:
    """``length`` bytes at ``offset`` of ``path``; ``in_root``: a path of the worker's root."""

    path: str
    offset: int
    length: int
    in_root: bool = False


@dataclasses.dataclass(frozen=True)
class FilePages:
    cow: tuple[FileRange, ...] = ()
    mapped: tuple[FileRange, ...] = ()
    heads: tuple[FileRange, ...] = ()  # optional in the record: older ones have none

    @property
    def bytes(self) -> int:
        return total_bytes(self.cow) + total_bytes(self.mapped)

    def to_json(self) -> str:
        doc = {"schema_version": VERSION, "cow": _rows(self.cow), "mapped": _rows(self.mapped)}
        if self.heads:
            doc["heads"] = _rows(self.heads)
        return json.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes | str, what: str = FILE_PAGES_FILE) -> FilePages:
        doc = versioned_object(data, what, VERSION, FilePagesError)
        return cls(
            _ranges(doc.get("cow"), True, what),
            _ranges(doc.get("mapped"), True, what),
            _ranges(doc.get("heads", []), True, what),
        )


def _rows(ranges: Iterable[FileRange]) -> list[list]:
    return [[r.path, r.offset, r.length] for r in ranges]


def _ranges(rows: object, in_root: bool | None, what: str) -> tuple[FileRange, ...]:
    """Rows ``[path, offset, length]``; with ``in_root`` None each row ends with its own flag."""
    if not isinstance(rows, list):
        raise FilePagesError(f"{what}: ranges must be a list")
    width = 4 if in_root is None else 3
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == width):
            raise FilePagesError(f"{what}: bad range {row!r}")
        path, offset, length = row[:3]
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise FilePagesError(f"{what}: not an absolute path: {path!r}")
        if type(offset) is not int or type(length) is not int or offset < 0 or length <= 0:
            raise FilePagesError(f"{what}: bad range {offset!r}+{length!r} of {path}")
        out.append(FileRange(path, offset, length, bool(row[3]) if in_root is None else in_root))
    return tuple(out)


def _worth_reading(path: str) -> bool:
    """A file path a restore reads from (not a device, a memfd, a deleted file)."""
    return (
        path.startswith("/")
        and not path.endswith(" (deleted)")
        and not path.startswith(SKIP_PREFIXES)
    )


FileMapping = tuple[int, int, int, str]  # start, end, file offset, path


def _maps(pid: int) -> Iterable[FileMapping]:
    """(start, end, file offset, path) of the file-backed mappings of ``pid``."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5]
        if not _worth_reading(path):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        yield start, end, int(parts[2], 16), path


def touched(pid: int, cow_only: bool = False) -> list[FileRange]:
    """Page ranges of each mapped file that ``pid`` has in its page tables, merged per file.

    ``cow_only``: just the pages it holds a private copy of.
    """
    cow, mapped = _touched_pages(pid)
    if not cow_only:
        for path, idx in cow.items():
            mapped.setdefault(path, set()).update(idx)
    return _merged(cow if cow_only else mapped)


def _touched_pages(
    pid: int, maps: Sequence[FileMapping] | None = None
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Page indexes per file of ``pid``'s present pages: (private copies, the rest)."""
    cow: dict[str, set[int]] = {}
    mapped: dict[str, set[int]] = {}
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for start, end, offset, path in _maps(pid) if maps is None else maps:
            n = (end - start) // PAGE
            pm.seek(start // PAGE * 8)
            raw = pm.read(n * 8)
            first = offset // PAGE
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
                if entry & PRESENT:
                    kind = mapped if entry & FILE_OR_SHARED else cow
                    kind.setdefault(path, set()).add(first + i)
    return cow, mapped


def head_bytes(start: bytes) -> int:
    """How much of a file's start CRIU's build-id check reads: a page, or to the last note.

    ``start`` is the file's first bytes. For a 64-bit little-endian ELF the
    check reads the header, the program headers and the PT_NOTE segments that
    lie in the mapping CRIU makes; anything else only has its magic read.
    """
    end = PAGE
    if len(start) >= 64 and start[:4] == b"\x7fELF" and start[4:6] == b"\x02\x01":
        (phoff,) = struct.unpack_from("<Q", start, 32)
        phentsize, phnum = struct.unpack_from("<HH", start, 54)
        if phentsize >= 56 and phoff + phnum * phentsize <= min(len(start), BUILD_ID_MAP):
            end = max(end, phoff + phnum * phentsize)
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                    "<IIQQQQ", start, phoff + i * phentsize
                )
                if p_type == 4 and p_offset + p_filesz <= BUILD_ID_MAP:  # PT_NOTE
                    end = max(end, p_offset + p_filesz)
    return -(-end // PAGE) * PAGE


def _heads(pid: int, maps: Sequence[FileMapping], into: dict[str, int]) -> None:
    """The head of each regular file ``pid`` maps or holds open, opened through /proc.

    Mapped files through ``map_files`` and open ones through ``fd``: the very
    file the process has, whatever its path now resolves to in its root.
    """
    seen: dict[str, str] = {}
    for start, end, _, path in maps:
        seen.setdefault(path, f"/proc/{pid}/map_files/{start:x}-{end:x}")
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
                if _worth_reading(path):
                    seen.setdefault(path, f"/proc/{pid}/fd/{fd}")
    for path, handle in seen.items():
        if path in into:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(handle)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                continue  # a fifo, a device: nothing CRIU validates, and opening may block
            fd = os.open(handle, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                into[path] = min(head_bytes(os.pread(fd, HEAD_READ, 0)), st.st_size)
            finally:
                os.close(fd)


def _merged(pages: dict[str, set[int]], in_root: bool = False) -> list[FileRange]:
    return merge(
        FileRange(path, p * PAGE, PAGE, in_root)
        for path, idx in sorted(pages.items())
        for p in sorted(idx)
    )


def record(pids: Iterable[int], heads: bool = True) -> FilePages:
    """What a restore of the tree ``pids`` will read from its files (see the module doc).

    ``heads=False``: the pages only, without opening the files (a working-set sample).
    """
    cow: dict[str, set[int]] = {}
    mapped: dict[str, set[int]] = {}
    starts: dict[str, int] = {}
    for pid in pids:
        try:
            maps = list(_maps(pid))
            pc, pm = _touched_pages(pid, maps)
            if heads:
                _heads(pid, maps, starts)
        except OSError:  # gone meanwhile: CRIU will say so
            continue
        for into, found in ((cow, pc), (mapped, pm)):
            for path, idx in found.items():
                into.setdefault(path, set()).update(idx)
    for path, idx in cow.items():  # one process's copy, another's shared page: read once
        if path in mapped:
            mapped[path] -= idx
    return FilePages(  # worker paths
        tuple(_merged(cow, True)),
        tuple(_merged(mapped, True)),
        tuple(FileRange(path, 0, n, True) for path, n in sorted(starts.items())),
    )


def merge(
    ranges: Iterable[FileRange], gap: int = MERGE_GAP, cap: int = MAX_RANGE
) -> list[FileRange]:
    """Sorted ranges joined across holes below ``gap``, each at most ``cap`` bytes."""
    out: list[FileRange] = []
    for r in sorted(ranges, key=lambda r: (r.path, r.offset)):
        last = out[-1] if out else None
        if last and last.path == r.path and r.offset <= last.offset + last.length + gap:
            end = max(last.offset + last.length, r.offset + r.length)
            if end - last.offset <= cap:
                out[-1] = dataclasses.replace(last, length=end - last.offset)
                continue
        out.append(r)
    return out


def split(ranges: Iterable[FileRange], size: int = MAX_RANGE) -> list[FileRange]:
    """Each range cut into pieces of at most ``size`` bytes (parallel readers on one file)."""
    return [
        dataclasses.replace(r, offset=off, length=min(size, r.offset + r.length - off))
        for r in ranges
        for off in range(r.offset, r.offset + r.length, size)
    ]


def total_bytes(ranges: Sequence[FileRange]) -> int:
    return sum(r.length for r in ranges)


def restore_reads(
    snapshot: Path,
    piece: int = IMAGE_PIECE,
    images: Path | None = None,
    learned: Sequence[FileRange] | None = None,
) -> list[FileRange]:
    """Everything a restore of ``snapshot`` reads from disk before the GPU regions, in order.

    CRIU's small images (host paths), the heads of the worker's files CRIU
    validates, the originals of the dumped private file pages (worker's root),
    CRIU's page images in pieces, the other mapped pages:
    the ``learned`` working set (``agent.working_set``) instead of all the dump
    had mapped, when there is one. A missing or unreadable file-pages record
    only drops those parts.
    """
    images = snapshot / CRIU_IMAGES_DIR if images is None else images
    found = sorted(p for p in images.glob("*.img") if p.is_file()) if images.is_dir() else []
    sized = [(p, p.stat().st_size) for p in found]
    small = [FileRange(str(p), 0, n) for p, n in sized if n and not p.name.startswith("pages-")]
    pages = [FileRange(str(p), 0, n) for p, n in sized if n and p.name.startswith("pages-")]
    try:
        files = FilePages.from_json((snapshot / FILE_PAGES_FILE).read_bytes())
    except (OSError, FilePagesError):
        files = FilePages()
    mapped = files.mapped if learned is None else learned
    return small + list(files.heads) + list(files.cow) + split(pages, piece) + list(mapped)


def open_for_reads(path: str, in_root: bool, root: Path | None) -> int:
    """A read-only fd of a range's file (-1 if it cannot be opened): a worker path
    (``in_root``) resolved inside ``root``, symlinks kept inside it, the last never followed."""
    try:
        where = resolve_under(root, path) if in_root and root else path
        return os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return -1


def advise(
    ranges: Iterable[FileRange],
    budget: int | None = None,
    root: Path | None = None,
    depth: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Ask the kernel to read ``ranges`` in order, at most ``budget`` bytes (None: all).

    Asynchronous (``POSIX_FADV_WILLNEED``): the disk starts on a restore's
    reads from its first moment, in the restore's order, while the reader
    process is still starting and bringing up CUDA. ``depth`` bounds the bytes
    asked for and not yet arrived (None: no bound). Without it the requests
    fill the disk's whole queue (256 requests of up to 4 MiB on the GPU nodes,
    ~1 GB), and every synchronous read behind them waits for it: a new
    process's first file lookups, CUDA's start, CRIU's own reads (measured on
    an H100 node: the reader process's work 0.2-0.45 s late, its CUDA context
    1.2 s late). With a bound the disk still reads at full speed and those
    reads wait a few ms. The files are opened by a pool ahead of the stream: a
    cold open waits for directory and inode reads, and one after another they
    held the disk to ~60 MB in the restore's first 0.1 s. Ranges go out in pieces
    of at most ``ADVISE_PIECE`` (the kernel reads no more than its readahead
    window per call). Worker paths (``in_root``) are resolved inside ``root``
    (the placeholder's ``/proc/PID/root``: symlinks kept inside it, the last
    one never followed); without a root they are skipped. ``stop`` ends it
    early. Returns the bytes asked for.
    """
    todo: list[tuple[tuple[str, bool], int, int]] = []  # (file, offset, bytes)
    total = 0
    for r in ranges:
        if budget is not None and total >= budget:
            break
        if r.in_root and root is None:
            continue
        n = r.length if budget is None else min(r.length, budget - total)
        total += n
        todo += [
            ((r.path, r.in_root), r.offset + k, min(ADVISE_PIECE, n - k))
            for k in range(0, n, ADVISE_PIECE)
        ]

    asked = pending = 0
    window: collections.deque[tuple[int, int, int]] = collections.deque()  # (fd, offset, n)
    openers = ThreadPoolExecutor(OPENERS, thread_name_prefix="advise-open")
    fds = {
        key: openers.submit(open_for_reads, *key, root)
        for key in dict.fromkeys(k for k, _, _ in todo)
    }
    try:
        for key, offset, n in todo:
            if stop is not None and stop.is_set():
                break
            fd = fds[key].result()
            if fd < 0:
                continue
            try:
                os.posix_fadvise(fd, offset, n, os.POSIX_FADV_WILLNEED)
            except OSError:
                continue
            asked += n
            if depth is None:
                continue
            window.append((fd, offset, n))
            pending += n
            while pending > depth:  # the oldest request's last page: here once it is read
                fd, offset, n = window.popleft()
                pending -= n
                with contextlib.suppress(OSError):
                    os.pread(fd, 1, offset + n - 1)
    finally:
        openers.shutdown(wait=True, cancel_futures=True)
        for f in fds.values():
            if not f.cancelled() and f.result() >= 0:
                os.close(f.result())
    return asked


def advise_parts(
    parts: Sequence[tuple[Sequence[FileRange], int | None]],
    root: Path | None = None,
    stop: threading.Event | None = None,
) -> int:
    """:func:`advise` over ``parts`` one after another, each ``(ranges, depth)`` with its own bound.

    A restore's stream has two parts: what CRIU and the resumed process read,
    where a shallow bound keeps their synchronous reads short, then the weights,
    which only the loader waits for and which a deeper bound reads faster.
    """
    asked = 0
    for ranges, depth in parts:
        if stop is not None and stop.is_set():
            break
        asked += advise(ranges, None, root, depth, stop)
    return asked


def to_json(ranges: Sequence[FileRange]) -> bytes:
    """A read list for ``agent.gpu_regions --first``."""
    rows = [[r.path, r.offset, r.length, r.in_root] for r in ranges]
    return json.dumps({"schema_version": VERSION, "ranges": rows}).encode()


def from_json(data: bytes) -> list[FileRange]:
    doc = versioned_object(data, "read list", VERSION, FilePagesError)
    return list(_ranges(doc.get("ranges"), None, "read list"))
