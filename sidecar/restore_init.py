"""``thaw sidecar restore-init``: the thaw-restore init container's one job.

Before the restore placeholder starts, check that this node can host the
snapshot (architecture, GPU model, driver and CUDA versions), read the
artifact into the page cache with parallel readers (the restore's critical
path is the disk), then ask the agent to restore (``restore-requested``).
A node whose agent shows no heartbeat (``contract.AGENT_HEARTBEAT_DIR``) within
``THAW_AGENT_WAIT`` seconds gets ``restore-failed`` instead: nobody would answer.
Whatever goes wrong becomes ``restore-failed`` with the reason, so the
placeholder cold-starts the original command: this step never blocks the pod
and always exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.cuda_checkpoint import CudaDriver, CudaUnavailable, gpu_compat_problem
from sidecar.hooks import write_signal
from sidecar.prefetch import DEFAULT_READERS, prefetch
from thaw.contract import (
    AGENT_HEARTBEAT_DIR,
    AGENT_HEARTBEAT_STALE_S,
    DEFAULT_AGENT_WAIT_S,
    ENV_AGENT_WAIT,
    ENV_NODE_NAME,
    MANIFEST_FILE,
    GpuInfo,
    Manifest,
    ManifestError,
    Signal,
)
from thaw.safe_files import read_manifest_bytes, read_small_file

log = logging.getLogger(__name__)

NodeGpus = Callable[[], Sequence[GpuInfo]]
MAX_HEARTBEAT_BYTES = 4096


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


def agent_serves(store_dir: Path, node: str) -> bool:
    """A fresh agent heartbeat for ``node`` (any node's, when ``node`` is unknown)."""
    folder = Path(store_dir) / AGENT_HEARTBEAT_DIR
    try:
        names = [f"{node}.json"] if node else sorted(os.listdir(folder))
    except OSError:
        return False
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            beat = json.loads(read_small_file(folder / name, MAX_HEARTBEAT_BYTES))
        except (OSError, ValueError, RecursionError):
            continue
        at = beat.get("time") if isinstance(beat, dict) else None
        if isinstance(at, (int, float)) and abs(time.time() - at) <= AGENT_HEARTBEAT_STALE_S:
            return True
    return False


def wait_for_agent(store_dir: Path, node: str, wait_s: float) -> bool:
    """Whether an agent serves this node, waiting at most ``wait_s`` for its heartbeat."""
    deadline = time.monotonic() + wait_s
    while not agent_serves(store_dir, node):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return True


def agent_wait_from_env() -> float:
    """``THAW_AGENT_WAIT`` seconds (0: do not look); the default when unset or malformed."""
    raw = os.environ.get(ENV_AGENT_WAIT, "")
    try:
        value = float(raw) if raw else DEFAULT_AGENT_WAIT_S
    except ValueError:
        log.warning("%s=%r is not a number; using %gs", ENV_AGENT_WAIT, raw, DEFAULT_AGENT_WAIT_S)
        return DEFAULT_AGENT_WAIT_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_AGENT_WAIT_S


def run_restore_init(
    store_dir: Path,
    snapshot: str,
    control_dir: Path,
    readers: int = DEFAULT_READERS,
    gpus: NodeGpus = node_gpus,
    agent_wait_s: float | None = None,
    node: str | None = None,
) -> InitResult:
    """Check, prefetch, signal. Returns what was written (never raises on bad input).

    ``agent_wait_s`` (default: THAW_AGENT_WAIT) bounds the wait for the heartbeat of
    ``node``'s agent (default: THAW_NODE_NAME); 0 skips that check.
    """
    t0 = time.monotonic()
    wait_s = agent_wait_from_env() if agent_wait_s is None else agent_wait_s
    node = os.environ.get(ENV_NODE_NAME, "") if node is None else node

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
        manifest = Manifest.from_json(read_manifest_bytes(folder))
    except OSError as e:
        return fail(f"cannot read {MANIFEST_FILE} of {snapshot}: {e.strerror or e}")
    except ManifestError as e:
        return fail(f"bad manifest in {snapshot}: {e}")
    problem = check_node(manifest, gpus)
    if problem:
        return fail(problem)
    if wait_s > 0 and not wait_for_agent(Path(store_dir), node, wait_s):
        where = f" {node}" if node else ""
        return fail(f"no thaw agent on this node{where} (no heartbeat within {wait_s:g}s)")
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
