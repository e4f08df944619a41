"""Restore a snapshot, optionally into a running placeholder container's namespaces.

    verify (every checksum, compatibility) -> steps.before_restore
    -> rootfs apply (inside the target's mount ns) -> criu restore (inside all its
    namespaces, see agent.nsrun) -> steps.after_restore (GPU restore + unlock)

The restored root keeps the pid it had in the source container's pid
namespace (the PID-offset wrapper keeps those free in a fresh container).
CRIU restores it detached: when ``criu swrk`` exits the tree is reparented to
the namespace's init, the placeholder, which then mirrors its lifetime.
The worker's stdout/stderr pipes are re-wired to the placeholder's own, so
the restored worker logs into the new pod's log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pycriu.rpc_pb2 as rpc

from agent import criu, procfs
from agent.steps import RestoreContext, Step, default_steps
from agent.store import SnapshotInvalid, verify
from thaw.contract import CRIU_IMAGES_DIR, PROCESS_INFO_FILE, ROOTFS_DIFF_FILE, Manifest

RESTORE_OPTS = {
    "shell_job": True,
    "file_locks": True,
    "ext_unix_sk": True,
    "tcp_close": True,
    "network_lock": rpc.SKIP,
}


class RestoreError(RuntimeError):
    """The restore did not produce a running worker; the message says why."""


@dataclasses.dataclass
class RestoreResult:
    pid: int  # restored root, host pid namespace
    ns_pid: int  # restored root inside the target's pid namespace
    manifest: Manifest
    timings: dict[str, float]

    def summary(self) -> dict:
        return {
            "pid": self.pid,
            "ns_pid": self.ns_pid,
            "name": self.manifest.name,
            "key": self.manifest.key,
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
        }


def stdio_inherits(folder: Path, target: int) -> list[dict]:
    """Map the dumped root's stdio pipes onto the target's fds 0-2 (CRIU ``inherit_fd``)."""
    try:
        info = json.loads((folder / PROCESS_INFO_FILE).read_text())
    except (OSError, ValueError):
        return []
    out, seen = [], set()
    for fd, link in sorted(info.get("stdio", {}).items()):
        if not link.startswith("pipe:") or link in seen:
            continue
        seen.add(link)
        mode = "r" if fd == "0" else "w"
        try:
            target_link = os.readlink(f"/proc/{target}/fd/{fd}")
        except OSError:
            continue
        if target_link.startswith("pipe:"):
            out.append({"key": link, "path": f"/proc/{target}/fd/{fd}", "mode": mode})
    return out


def restore(
    folder: Path,
    *,
    into: int | None = None,
    steps: Sequence[Step] | None = None,
    spec: criu.CriuSpec | None = None,
    criu_version: str | None = None,
    verified: Manifest | None = None,
) -> RestoreResult:
    """Restore the snapshot at ``folder``; ``into`` is the placeholder's host pid."""
    t_start = time.monotonic()
    folder = Path(folder)
    if spec is None or criu_version is None:
        spec, criu_version = criu.require(check_kernel=False)
    timings: dict[str, float] = {}
    if verified is None:
        try:
            verified = verify(folder, criu_version)
        except SnapshotInvalid as e:
            raise RestoreError(f"refused: {e}") from e
        timings["verify_s"] = time.monotonic() - t_start
    if into is not None and not procfs.alive(into):
        raise RestoreError(f"placeholder process {into} does not exist")
    ctx = RestoreContext(manifest=verified, folder=folder, into=into, timings=timings)
    steps = default_steps() if steps is None else list(steps)
    work = Path(tempfile.mkdtemp(prefix="thaw-restore-"))
    try:
        t = time.monotonic()
        for step in steps:
            step.before_restore(ctx)
        timings["steps_before_restore_s"] = time.monotonic() - t

        diff = folder / ROOTFS_DIFF_FILE
        if into is not None and diff.is_file():
            t = time.monotonic()
            try:
                criu.call(
                    "untar",
                    spec,
                    images_dir=folder,
                    work_dir=work,
                    log_file="-",
                    opts={},
                    ns_pid=into,
                    extra={"tar": str(diff)},
                )
            except criu.CriuFailed as e:
                raise RestoreError(f"applying the rootfs changes failed: {e}") from e
            timings["rootfs_apply_s"] = time.monotonic() - t

        t = time.monotonic()
        inherit = stdio_inherits(folder, into if into is not None else os.getpid())
        try:
            reply = criu.call(
                "restore",
                spec,
                images_dir=folder / CRIU_IMAGES_DIR,
                work_dir=work,
                log_file="restore.log",
                opts=dict(RESTORE_OPTS),
                ns_pid=into,
                inherit_fds=inherit,
            )
        except criu.CriuFailed as e:
            raise RestoreError(str(e)) from e
        timings["criu_restore_s"] = time.monotonic() - t
        ns_pid = int(reply["pid"])
        host_pid = procfs.host_pid_in_ns(into, ns_pid) if into is not None else ns_pid
        if host_pid is None:
            raise RestoreError(f"restored pid {ns_pid} is not visible in {into}'s pid namespace")
        ctx.host_pid, ctx.ns_pid = host_pid, ns_pid

        t = time.monotonic()
        try:
            for step in steps:
                step.after_restore(ctx)
        except Exception as e:
            with contextlib.suppress(ProcessLookupError):
                os.kill(host_pid, signal.SIGKILL)  # never leave a half-restored worker behind
            raise RestoreError(f"post-restore step failed, restored tree killed: {e}") from e
        timings["steps_after_restore_s"] = time.monotonic() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - t_start
    return RestoreResult(host_pid, ns_pid, verified, timings)
