"""Benchmark: the GPU region loader's read list, the small reads a restore starts with.

A restore first reads CRIU's small images, the heads of the worker's files and
the pages it will touch: thousands of ranges of a few KiB over a few hundred
files. The loader's readers read them into the page cache in that order. Their
bytes are few; the reader pool's own overhead can be the limit (scratch buffers
zero-filled under the GIL once kept most readers idle for the list's first
0.1 s: bench/results/gpu-restore.md, session 11). No GPU needed: a loader with
no regions only reads its list.

Prints, per run, how long the whole list took, when the first read began and
how many readers were busy on average and at the most, and for the first run
the readers busy every 10 ms. ``--cold`` drops the page cache first (root).

    .venv/bin/python bench/read_list.py [--files 300] [--ranges-per-file 6] [--cold]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from agent.file_pages import FileRange
from agent.gpu_regions import DEFAULT_CHUNK, DEFAULT_READERS, Loader
from thaw.contract import GpuRegions

KIB = 1 << 10
STEP_S = 0.01  # the busy-readers timeline's step


def make_list(work: Path, files: int, per_file: int, file_kib: int, seed: int) -> list[FileRange]:
    """``files`` files of random bytes and ``per_file`` ranges of 4-64 KiB in each, shuffled."""
    rng = random.Random(seed)
    ranges = []
    for i in range(files):
        path = work / f"lib{i:04d}.so"
        path.write_bytes(os.urandom(file_kib * KIB))
        for _ in range(per_file):
            length = rng.choice((4, 8, 16, 64)) * KIB
            offset = rng.randrange(0, file_kib * KIB - length) // 4096 * 4096
            ranges.append(FileRange(str(path), offset, length))
    rng.shuffle(ranges)
    return ranges


def busy(reads: list[tuple[float, float]], t: float) -> int:
    return sum(1 for a, b in reads if a <= t < b)


def run_once(first: list[FileRange], readers: int, cold: bool) -> dict:
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    loader = Loader(GpuRegions((), 0, ""), Path("/"), readers=readers, first=first)
    loader.trace = []
    loader.load()
    z = loader.t_fill
    reads = [(a - z, b - z) for kind, a, b, _, _ in loader.trace if kind == "first"]
    done = max(b for _, b in reads)
    steps = [k * STEP_S for k in range(int(done / STEP_S) + 1)]
    timeline = [busy(reads, s) for s in steps]
    return {
        "list_s": loader.timings["first_done_at_s"],
        "first_read_at_s": min(a for a, _ in reads),
        "mean_busy": sum(b - a for a, b in reads) / done,
        "max_busy": max(timeline),
        "timeline": timeline,
        "mb": loader.first_bytes / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--ranges-per-file", type=int, default=6)
    p.add_argument("--file-kib", type=int, default=512)
    p.add_argument("--readers", type=int, default=DEFAULT_READERS)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.cold and os.geteuid() != 0:
        p.error("--cold drops the page cache: run as root")
    work = Path(tempfile.mkdtemp(prefix="thaw-read-list-"))
    try:
        first = make_list(work, args.files, args.ranges_per_file, args.file_kib, args.seed)
        runs = [run_once(first, args.readers, args.cold) for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cache = "cold" if args.cold else "hot"
    print(f"read list: {len(first)} ranges, {runs[0]['mb']:.1f} MB over {args.files} files, "
          f"{args.readers} readers of {DEFAULT_CHUNK >> 20} MiB, page cache {cache}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for i, r in enumerate(runs):
        print(f"  run {i}: list {r['list_s'] * 1e3:6.1f} ms, first read at "
              f"{r['first_read_at_s'] * 1e3:5.1f} ms, readers busy {r['mean_busy']:4.1f} "
              f"on average, {r['max_busy']} at most")  # fmt: skip
    print(f"  median list time: {statistics.median(r['list_s'] for r in runs) * 1e3:.1f} ms")
    print(f"  readers busy every {STEP_S * 1e3:.0f} ms (run 0): {runs[0]['timeline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
