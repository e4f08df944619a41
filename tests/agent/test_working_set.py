"""The learned working set: sampled from real processes, kept beside a real published snapshot.

Worker processes map one file twice (shared for reading, private for writing)
and touch chosen pages; the sample must name the pages read, never the
private copy or pages nobody touched. The set lives outside the manifest, so
the snapshot must verify with it, and a bad one must be ignored, never trusted.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import file_pages, working_set
from agent.file_pages import FilePages, FileRange
from agent.store import SnapshotInvalid, Store, verify
from tests.support.snapshots import publish_fake
from thaw.contract import FILE_PAGES_FILE, WORKING_SET_FILE

MB = 1 << 20

TOUCHER = """
import mmap, sys, time
data, ready = sys.argv[1], sys.argv[2]
reads = [int(x) for x in sys.argv[3].split(",") if x]
with open(data, "r+b") as f:
    shared = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    private = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE)
for off in reads:
    _ = shared[off]
private[3 << 20:(3 << 20) + 4096] = bytes(4096)  # a private copy: CRIU dumps it, not learned
open(ready, "w").close()
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def touching(tmp_path: Path):
    """start(offsets) -> pid of a process that has read those offsets of ``data.bin``."""
    data = tmp_path / "data.bin"
    with open(data, "wb") as f:
        f.write(os.urandom(4 * MB))
        os.fsync(f.fileno())  # then out of the page cache: a page cache holding the whole
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # file may map it all at once
    script = tmp_path / "toucher.py"
    script.write_text(TOUCHER)
    procs: list[subprocess.Popen] = []

    def start(offsets: list[int]) -> int:
        ready = tmp_path / f"ready-{len(procs)}"
        argv = [sys.executable, str(script), str(data), str(ready), ",".join(map(str, offsets))]
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert procs[-1].poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        return procs[-1].pid

    yield start, str(data)
    for p in procs:
        p.kill()
        p.wait()


def _covers(ranges, path: str, offset: int) -> bool:
    return any(r.path == path and r.offset <= offset < r.offset + r.length for r in ranges)


def test_sample_is_what_the_tree_read_not_its_private_copies(touching) -> None:
    start, data = touching
    seen = working_set.sample([start([0, 2 * MB])])
    assert _covers(seen, data, 0) and _covers(seen, data, 2 * MB)
    assert not _covers(seen, data, 1 * MB)  # never touched
    assert not _covers(seen, data, 3 * MB)  # written: a private copy, restored by CRIU
    assert all(r.in_root for r in seen)  # worker paths: read under the placeholder's root
    assert any("python" in Path(r.path).name for r in seen)  # the interpreter's own code
    assert not working_set.sample([2**22 + 12345])  # a pid that is gone: nothing, no error


def test_learn_keeps_the_union_and_writes_only_what_is_new(touching, tmp_path: Path) -> None:
    start, data = touching
    store = Store(tmp_path / "store")
    folder, _ = publish_fake(store)
    scratch = store.new_staging("learn")
    first = start([0])
    assert working_set.learn(folder, [first], scratch) > 0
    learned = working_set.load(folder)
    assert learned is not None and _covers(learned, data, 0) and not _covers(learned, data, 2 * MB)
    stamp = (folder / WORKING_SET_FILE).stat().st_mtime_ns
    assert working_set.learn(folder, [first], scratch) == 0  # nothing new: not rewritten
    assert (folder / WORKING_SET_FILE).stat().st_mtime_ns == stamp

    assert working_set.learn(folder, [start([2 * MB])], scratch) > 0
    union = working_set.load(folder)
    assert union is not None and _covers(union, data, 0) and _covers(union, data, 2 * MB)
    assert not (scratch / WORKING_SET_FILE).exists()  # the new set was renamed into place
    assert verify(folder).name == folder.name  # not in the manifest, and not an extra file


def test_restore_reads_the_learned_set_instead_of_the_recorded_one(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    (snap / "criu").mkdir(parents=True)
    (snap / "criu" / "pages-1.img").write_bytes(b"p" * 8192)
    cow = FileRange("/lib/a.so", 0, 4096, True)
    recorded = FileRange("/lib/b.so", 0, 64 * MB, True)
    (snap / FILE_PAGES_FILE).write_text(FilePages((cow,), (recorded,)).to_json())
    assert file_pages.restore_reads(snap)[-1] == recorded

    hot = FileRange("/lib/b.so", 8 * MB, 4096, True)
    (snap / WORKING_SET_FILE).write_text(FilePages(mapped=(hot,)).to_json())
    reads = file_pages.restore_reads(snap, learned=working_set.load(snap))
    assert reads[0] == cow and reads[-1] == hot and recorded not in reads


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema_version": 9, "cow": [], "mapped": []}', "schema_version"),
        ('{"schema_version": 1, "cow": [["/a.so", 0, 4096]], "mapped": []}', "private copies"),
        ('{"schema_version": 1, "cow": [], "mapped": [["a.so", 0, 4096]]}', "absolute"),
        (f'{{"schema_version": 1, "cow": [], "mapped": [["/a.so", 0, {8 << 30}]]}}', "more than"),
    ],
)
def test_a_bad_working_set_is_ignored_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, doc: str, why: str
) -> None:
    (tmp_path / WORKING_SET_FILE).write_text(doc)
    with caplog.at_level(logging.WARNING, logger="agent.working_set"):
        assert working_set.load(tmp_path) is None
    assert why in caplog.text


def test_a_symlinked_working_set_is_not_followed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    folder, _ = publish_fake(store)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(FilePages(mapped=(FileRange("/etc/a", 0, 4096, True),)).to_json())
    (folder / WORKING_SET_FILE).symlink_to(elsewhere)
    assert working_set.load(folder) is None
    with pytest.raises(SnapshotInvalid, match="symlinks are not allowed"):
        verify(folder)  # nothing in a snapshot may point elsewhere, advisory or not
