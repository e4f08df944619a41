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

Sockets land in the placeholder's network namespace, which has another IP than
the source pod's: listeners (bound to a wildcard address) serve there at once;
``tcp_close`` hands back every connection that was established at the dump shut
down (its peer talks to the source, which keeps it), so the worker reads EOF on
it; the dump recorded no TCP state (``agent.checkpoint``), hence no network lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pycriu.rpc_pb2 as rpc

from agent import criu, leftovers, procfs, rootfs
from agent.pods import control_via_proc, open_control_file
from agent.steps import RestoreContext, Step, default_steps
from agent.store import SnapshotInvalid, verify
from thaw.contract import (
    AGENT_LOCK_FILE,
    CRIU_IMAGES_DIR,
    MANIFEST_FILE,
    PROCESS_INFO_FILE,
    RESTORE_LOCK_DIR,
    ROOTFS_DIFF_FILE,
    SHM_FILE,
    Manifest,
    Signal,
)

RESTORE_OPTS = {
    "shell_job": True,
    "file_locks": True,
    "ext_unix_sk": True,
    "tcp_close": True,
    "network_lock": rpc.SKIP,
}


log = logging.getLogger(__name__)


def shm_request(folder: Path, manifest: Manifest) -> dict | None:
    """The snapshot's /dev/shm for the helper to unpack before CRIU (agent.shm), if any."""
    if not any(f.path == SHM_FILE for f in manifest.files):
        return None
    if not (folder / SHM_FILE).is_file():
        raise RestoreError(_vanished(folder, SHM_FILE))
    return {"shm_tar": str(folder / SHM_FILE)}


class RestoreError(RuntimeError):
    """The restore did not produce a running worker; the message says why."""


@contextlib.contextmanager
def placeholder_lock(into: int, lock_dir: Path = Path(RESTORE_LOCK_DIR)) -> Iterator[tuple]:
    """Own placeholder ``into`` for one restore, or raise RestoreError saying who does.

    Two restores into one placeholder race: the loser's cleanup kills what CRIU made
    in the namespace, which is the winner's worker. So a restore holds a host lock per
    placeholder process and the pod's own agent lock (the daemon's, when the control
    dir is reachable through ``/proc``), and refuses a pod that says it was restored
    (``restore`` itself refuses a namespace whose snapshot pids are taken). Never waits:
    a busy placeholder is refused at once. Yields the lock fds, to be held by the CRIU
    helper too (``restore(hold_fds=...)``).
    """
    who = leftovers.identity(into)
    if who is None:
        raise RestoreError(f"placeholder process {into} does not exist")
    fds: list[int] = []
    try:
        try:
            lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = lock_dir / f"{who[0]}-{who[1]}.lock"
            fds.append(open_control_file(path, os.O_RDWR | os.O_CREAT))
        except OSError as e:  # e.g. a read-only root: the pod's own lock must do
            host_error = f"{lock_dir}: {e.strerror or e}"
        else:
            host_error = ""
            _try_flock(fds[-1], f"another restore into placeholder {into} is in progress")
        try:
            control = control_via_proc(into)
            fds.append(open_control_file(control / AGENT_LOCK_FILE, os.O_RDWR | os.O_CREAT))
        except OSError:  # not a thaw pod (a plain process): the host lock is all there is
            control = None
            if host_error:
                raise RestoreError(f"cannot lock placeholder {into}: {host_error}") from None
        else:
            _try_flock(fds[-1], f"the agent or another restore is working on placeholder {into}")
        problem = _already_restored(into, control)
        if problem:
            raise RestoreError(f"refused: placeholder {into} {problem}")
        yield tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _try_flock(fd: int, busy: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RestoreError(busy) from None


def _already_restored(into: int, control: Path | None) -> str:
    """Why ``into``'s pod holds a restored worker already, or "" (see also ``restore``)."""
    if control is not None and (control / Signal.RESTORE_COMPLETE).exists():
        return f"was restored already ({Signal.RESTORE_COMPLETE.value} is there)"
    return ""


def _occupied(into: int, pids: set[int]) -> list[int]:
    """The snapshot's pids that live processes hold in ``into``'s pid namespace."""
    members = leftovers.ns_members(into)
    return sorted(ns for host, ns in members.items() if ns in pids and procfs.alive(host))


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


def _vanished(folder: Path, detail: str) -> str:
    return f"snapshot {folder.name} disappeared during the restore (deleted after verify): {detail}"


def restore(
    folder: Path,
    *,
    into: int | None = None,
    steps: Sequence[Step] | None = None,
    spec: criu.CriuSpec | None = None,
    criu_version: str | None = None,
    verified: Manifest | None = None,
    hold_fds: tuple[int, ...] = (),
    clear_leftovers: bool = False,
) -> RestoreResult:
    """Restore the snapshot at ``folder``; ``into`` is the placeholder's host pid.

    If it fails after CRIU started, whatever CRIU created in ``into`` is killed: the
    placeholder then cold-starts alone. ``clear_leftovers`` (the agent, retrying a pod
    whose earlier attempt was cut off) first kills what holds the snapshot's pids in
    ``into``: in a placeholder only such an attempt can. ``hold_fds`` stay open in the
    CRIU helper (the agent's per-pod lock).
    """
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
    pids = leftovers.tree_pids(folder / CRIU_IMAGES_DIR, verified.root_pid)
    if into is not None and clear_leftovers:
        try:
            killed = leftovers.kill_leftovers(into, pids)
        except TimeoutError as e:
            raise RestoreError(f"cannot clear an earlier attempt: {e}") from e
        if killed:
            log.warning("killed %d leftover task(s) of an earlier restore in %d", len(killed), into)
    elif into is not None:
        taken = _occupied(into, pids)
        if taken:  # a restored worker already runs there: CRIU would fail, and must not try
            raise RestoreError(
                f"refused: placeholder {into} already runs a worker (pid {taken[0]} of the "
                "snapshot's tree is taken in its namespace)"
            )
    before = {leftovers.identity(p) for p in leftovers.ns_members(into)} if into else set()
    work = Path(tempfile.mkdtemp(prefix="thaw-restore-"))
    try:
        t = time.monotonic()
        for step in steps:
            step.before_restore(ctx)
        timings["steps_before_restore_s"] = time.monotonic() - t

        diff = folder / ROOTFS_DIFF_FILE
        has_diff = any(f.path == ROOTFS_DIFF_FILE for f in verified.files)
        if into is not None and has_diff:
            if not diff.is_file():
                raise RestoreError(_vanished(folder, ROOTFS_DIFF_FILE))
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
                    extra={
                        "tar": str(diff),
                        "mounts": rootfs.mount_points(f"/proc/{into}/mountinfo"),
                    },
                    pass_fds=hold_fds,
                )
            except criu.CriuFailed as e:
                if not (folder / MANIFEST_FILE).is_file():
                    raise RestoreError(_vanished(folder, str(e))) from e
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
                pass_fds=hold_fds,
                extra=shm_request(folder, verified) if into is not None else None,
            )
        except criu.CriuFailed as e:
            if not (folder / MANIFEST_FILE).is_file():
                raise RestoreError(_vanished(folder, str(e))) from e
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
    except BaseException:
        for step in steps:
            abort = getattr(step, "abort_restore", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort(ctx)
        if into is not None:  # never leave half-restored tasks beside the cold start
            with contextlib.suppress(OSError, TimeoutError):
                leftovers.kill_leftovers(into, pids, spare=before)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - t_start
    return RestoreResult(host_pid, ns_pid, verified, timings)
