"""``thaw.scratch``: read buffers whose memory the reads themselves bring in.

What matters is what a buffer costs before its first read: a bytearray
zero-fills all of it under the GIL; a scratch buffer has no page resident
until a read lands in it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from thaw.scratch import scratch

MIB = 1 << 20


def _resident_kib(addr: int) -> int:
    """Rss of the mapping that starts at ``addr`` (from /proc/self/smaps)."""
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            found = int(head[0].split("-")[0], 16) == addr
        elif found and line.startswith("Rss:"):
            return int(head[1])
    raise AssertionError("mapping not found")


def test_scratch_holds_no_memory_until_a_read_fills_it(tmp_path: Path) -> None:
    data = os.urandom(MIB)
    (tmp_path / "f").write_bytes(data)
    buf = scratch(64 * MIB)
    ref = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(ref)
    assert len(buf) == 64 * MIB
    assert _resident_kib(addr) == 0
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert os.preadv(fd, [memoryview(buf)[:MIB]], 0) == MIB
    finally:
        os.close(fd)
    assert buf[:MIB] == data
    # the read's pages; with transparent huge pages, the rest of one 2 MiB page
    assert MIB // 1024 <= _resident_kib(addr) < 4 * MIB // 1024
    del ref
    buf.close()
