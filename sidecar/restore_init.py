"""``thaw sidecar restore-init``: the thaw-restore init container's one job.

Before the restore placeholder starts, check that this node can host the
snapshot (architecture, GPU model, driver and CUDA versions), read the
artifact into the page cache with parallel readers (the restore's critical
path is the disk), then ask the agent to restore (``restore-requested``).
Whatever goes wrong becomes ``restore-failed`` with the reason, so the
placeholder cold-starts the original command: this step never blocks the pod
and always exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.cuda_checkpoint import CudaDriver, CudaUnavailable, gpu_compat_problem
from sidecar.hooks import write_signal
from sidecar.prefetch import DEFAULT_READERS, prefetch
from thaw.contract import MANIFEST_FILE, GpuInfo, Manifest, ManifestError, Signal

log = logging.getLogger(__name__)

NodeGpus = Callable[[], Sequence[GpuInfo]]


def node_gpus() -> tuple[GpuInfo, ...]:
    """This node's GPUs as the CUDA driver sees them; none when there is no driver."""
    try:
        return CudaDriver.get().gpus()
    except CudaUnavailable as e:
        log.info("no CUDA driver here (%s)", e)
        return ()


@dataclasses.dataclass(frozen=True)
class InitResult:
    signal: Signal
    payload: dict


def check_node(manifest: Manifest, gpus: NodeGpus = node_gpus) -> str | None:
    """None when this node can host ``manifest``'s snapshot, else why not."""
    arch = platform.machine()
    if manifest.arch and manifest.arch != arch:
        return f"snapshot is {manifest.arch}, this node is {arch}"
    if manifest.gpus:  # CPU-only snapshots need no GPU and never touch the driver
        return gpu_compat_problem(manifest.gpus, gpus())
    return None


def run_restore_init(
    store_dir: Path,
    snapshot: str,
    control_dir: Path,
    readers: int = DEFAULT_READERS,
    gpus: NodeGpus = node_gpus,
) -> InitResult:
    """Check, prefetch, signal. Returns what was written (never raises on bad input)."""
    t0 = time.monotonic()

    def fail(reason: str) -> InitResult:
        log.warning("restore not possible, cold start: %s", reason)
        payload = {"reason": reason, "stage": "restore-init", "snapshot": snapshot}
        write_signal(control_dir, Signal.RESTORE_FAILED, payload)
        return InitResult(Signal.RESTORE_FAILED, payload)

    if not snapshot:
        return fail("no snapshot named for this pod")
    folder = Path(store_dir) / snapshot
    if "/" in snapshot or snapshot.startswith("."):
        return fail(f"invalid snapshot name {snapshot!r}")
    try:
        manifest = Manifest.from_json((folder / MANIFEST_FILE).read_bytes())
    except OSError as e:
        return fail(f"cannot read {MANIFEST_FILE} of {snapshot}: {e.strerror or e}")
    except ManifestError as e:
        return fail(f"bad manifest in {snapshot}: {e}")
    problem = check_node(manifest, gpus)
    if problem:
        return fail(problem)
    paths = [folder / f.path for f in manifest.files]
    outside = [f.path for f in manifest.files if ".." in Path(f.path).parts]
    if outside:
        return fail(f"manifest lists paths outside the snapshot: {outside[:3]}")
    missing = [str(p.relative_to(folder)) for p in paths if not p.is_file()]
    if missing:
        return fail(f"snapshot {snapshot} is missing files: {', '.join(missing[:5])}")
    try:
        stats = prefetch(paths, readers=readers)
    except OSError as e:
        return fail(f"reading snapshot {snapshot} failed: {e}")
    payload = {
        "snapshot": snapshot,
        "prefetched_bytes": stats.bytes,
        "prefetch_s": round(stats.seconds, 3),
        "prefetch_gbps": round(stats.gbps, 3),
        "check_s": round(time.monotonic() - t0 - stats.seconds, 3),
    }
    write_signal(control_dir, Signal.RESTORE_REQUESTED, payload)
    log.info("prefetched %d bytes in %.2fs (%.2f GB/s)", stats.bytes, stats.seconds, stats.gbps)
    return InitResult(Signal.RESTORE_REQUESTED, payload)
