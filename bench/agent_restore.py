"""Benchmark: checkpoint and restore a worker holding 1 GB of state, on real CRIU.

Prints dump time, restore time (cold and warm page cache), artifact size and
the disk's sequential read bandwidth measured in the same run, so restore
time can be judged against what the disk allows. Needs root.

    .venv/bin/python bench/agent_restore.py [--state-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent import criu, procfs
from agent.checkpoint import checkpoint
from agent.digest import sha256_file
from agent.local import start_checkpoint_pod, start_restore_pod
from agent.restore import restore
from agent.store import Store, verify
from thaw import sample_worker
from thaw.contract import CRIU_IMAGES_DIR, Signal
from thaw.scratch import scratch

MB = 1 << 20


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_bandwidth(path: Path, streams: int = 1) -> float:
    """Cold read of ``path`` in MB/s (page cache dropped first), by ``streams`` readers.

    A single stream underrates a virtual disk that serves parallel requests faster;
    the floor uses the best of one and several streams, as restore reads in parallel.
    """
    drop_caches()
    size = path.stat().st_size
    piece = -(-size // streams)

    def read(start: int) -> int:
        buf = scratch(8 * MB)
        view, total = memoryview(buf), 0
        fd = os.open(path, os.O_RDONLY)
        try:
            while total < piece and (n := os.preadv(fd, [view], start + total)):
                total += n
        finally:
            os.close(fd)
        return total

    t = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(read, range(0, size, piece)))
    return total / MB / (time.monotonic() - t)


def hash_rate(path: Path) -> float:
    """SHA-256 throughput on a page-cache-hot file, MB/s."""
    sha256_file(path)  # warm
    t = time.monotonic()
    size, _ = sha256_file(path)
    return size / MB / (time.monotonic() - t)


def restore_once(root: Path, name: str, argv: list[str], folder: Path, spec, version, cold: bool):
    pod = start_restore_pod(root, name, argv, key="bench", request=False)
    try:
        time.sleep(0.2)
        if cold:
            drop_caches()
        t = time.monotonic()
        result = restore(folder, into=pod.box.pid, spec=spec, criu_version=version)
        wall = time.monotonic() - t
        pod.signal_path(Signal.RESTORE_COMPLETE).write_text(json.dumps({"pid": result.ns_pid}))
        os.kill(pod.box.pid, signal.SIGUSR1)
        state = sample_worker.query(str(pod.control), "state", timeout=120)
        return wall, result.timings, state
    finally:
        pod.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-mb", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/agent_restore.py needs root (CRIU, namespaces, drop_caches)", file=sys.stderr)
        return 1
    spec, version = criu.require()
    root = Path(args.dir or tempfile.mkdtemp(prefix="thaw-bench-"))
    argv = [sys.executable, "-m", "thaw.sample_worker"]
    argv += ["--state-mb", str(args.state_mb), "--seed", "bench"]
    expected = sample_worker.expected_sha256("bench", args.state_mb)
    store = Store(root / "store")

    src = start_checkpoint_pod(root, "src", argv, key="bench")
    try:
        t = time.monotonic()
        src.wait_signal(Signal.READY_FOR_CHECKPOINT, 600)
        warm_s = time.monotonic() - t
        worker = procfs.children_of(src.box.pid)[-1]
        t = time.monotonic()
        result = checkpoint(worker, store, key="bench", spec=spec, criu_version=version)
        dump_wall = time.monotonic() - t
        src.signal_path(Signal.CHECKPOINT_COMPLETE).write_text("{}")
        src_state = sample_worker.query(str(src.control), "state", timeout=120)
    finally:
        src.stop()
    folder = result.path
    pages = max((folder / CRIU_IMAGES_DIR).glob("pages-*.img"), key=lambda p: p.stat().st_size)
    one_stream = read_bandwidth(pages)
    disk_mbs = max(one_stream, read_bandwidth(pages, streams=4))
    sha_mbs = hash_rate(pages)
    drop_caches()
    t = time.monotonic()
    verify(folder, version)
    verify_cold = time.monotonic() - t

    cold_wall, cold_t, cold_state = restore_once(
        root, "dst-cold", argv, folder, spec, version, True
    )
    warm_wall, warm_t, warm_state = restore_once(
        root, "dst-warm", argv, folder, spec, version, False
    )
    ok = src_state["sha256"] == cold_state["sha256"] == warm_state["sha256"] == expected

    size_mb = result.bytes / MB
    rows = [
        ("worker state", f"{args.state_mb} MB"),
        ("artifact size", f"{size_mb:.0f} MB ({len(result.manifest.files)} files)"),
        ("cold warm-up of the worker (reference)", f"{warm_s:.2f} s"),
        ("checkpoint total (leave-running)", f"{dump_wall:.2f} s"),
        ("  criu dump", f"{result.timings['criu_dump_s']:.2f} s"),
        ("  sha256 + manifest", f"{result.timings['hash_s']:.2f} s"),
        ("  publish (fsync + rename)", f"{result.timings['publish_s']:.2f} s"),
        ("disk read, cold, 1 stream", f"{one_stream:.0f} MB/s"),
        ("disk read, cold, best of 1 and 4 streams", f"{disk_mbs:.0f} MB/s"),
        ("sha256 throughput (hot cache, 1 thread)", f"{sha_mbs:.0f} MB/s"),
        ("verify, cold cache", f"{verify_cold:.2f} s"),
        ("restore total, cold cache", f"{cold_wall:.2f} s"),
        ("  verify (checksums)", f"{cold_t['verify_s']:.2f} s"),
        ("  criu restore", f"{cold_t['criu_restore_s']:.2f} s"),
        ("restore total, warm cache", f"{warm_wall:.2f} s"),
        ("  verify (checksums)", f"{warm_t['verify_s']:.2f} s"),
        ("  criu restore", f"{warm_t['criu_restore_s']:.2f} s"),
        ("disk-bound floor: size / bandwidth", f"{size_mb / disk_mbs:.2f} s"),
        ("restored state checksum matches", "yes" if ok else "NO"),
    ]
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\nthaw agent benchmark ({os.uname().release}, CRIU {version}, {os.cpu_count()} CPUs)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
