"""Checkpoint a process tree into the artifact store, as explicit phases.

    resolve -> steps.before_dump (quiesce/lock, GPU checkpoint) -> criu dump
    -> steps.after_dump (GPU restore/unlock; the source keeps running)
    -> rootfs capture -> hash + manifest -> publish (atomic rename)

CRIU options, chosen for inference workers (see README "Agent"):
  leave_running   the source keeps serving after the dump (default for the agent)
  shell_job       the worker is a child of the container's init (thaw's PID-offset
                  wrapper), so its session and process group leader lie outside the
                  dumped tree; CRIU must accept that and restore into its own session
  file_locks      engines lock cache/weight files (flock/fcntl)
  ext_unix_sk     unix sockets whose peer is outside the tree (e.g. logging) are allowed
  link_remap      open files whose name is gone but which keep another hard link (a
                  POSIX semaphore's creation name) get a link_remap name CRIU reopens;
                  in /dev/shm these travel with the snapshot (agent.shm)
  tcp_close       established TCP connections (a client's keep-alive connection, a probe
                  being answered) are recorded as closed and never touched: the source's
                  clients go on talking to it, and the copy gets them shut down, since its
                  pod has another IP that no peer knows. Not tcp_established: that holds
                  every connection in TCP repair mode during the dump to record state no
                  restore can use. Loopback TCP between two processes of the tree is closed
                  the same way (vLLM's API server and engine core talk over unix sockets)
  tcp_skip_in_flight  connections the kernel accepted but the server has not yet (probes
                  arriving while it is busy or frozen for the dump) stay the source's to
                  serve; without it they fail the dump. The copy's listeners start empty
  network_lock    SKIP: no connection is dumped, so there is nothing to lock; the pod's
                  network namespace itself is not dumped. Listening TCP (v4, v6) and UDP
                  sockets are dumped normally and come back in the new pod's namespace,
                  provided they are bound to a wildcard address (0.0.0.0, ::), as servers
                  in pods are: one bound to the source pod's own IP fails the restore
                  (IPv4) or listens on an address the new pod lacks (IPv6)
  manage_cgroups  off: the restore joins the placeholder's cgroups instead
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pycriu.rpc_pb2 as rpc

from agent import criu, image_pages, procfs, rootfs
from agent.steps import DumpContext, Step, default_steps
from agent.store import Store, StoreError, file_entries, new_name, utc_now, validate_key
from thaw.contract import (
    CRIU_IMAGES_DIR,
    PROCESS_INFO_FILE,
    ROOTFS_DIFF_FILE,
    SHM_FILE,
    Manifest,
    Source,
)

DUMP_OPTS = {
    "shell_job": True,
    "file_locks": True,
    "ext_unix_sk": True,
    "link_remap": True,
    "tcp_close": True,
    "tcp_skip_in_flight": True,
    "network_lock": rpc.SKIP,
    "ghost_limit": 64 << 20,
}


class CheckpointError(RuntimeError):
    """The checkpoint did not produce a snapshot; the message says why."""


@dataclasses.dataclass
class CheckpointResult:
    name: str
    path: Path
    manifest: Manifest
    bytes: int
    timings: dict[str, float]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "key": self.manifest.key,
            "bytes": self.bytes,
            "files": len(self.manifest.files),
            "gpus": len(self.manifest.gpus),
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
        }


def in_own_namespaces(pid: int) -> bool:
    """True when ``pid`` lives in different pid or mount namespaces than we do (a container)."""
    return any(
        procfs.ns_inode(pid, ns) != procfs.ns_inode(os.getpid(), ns) for ns in ("pid", "mnt")
    )


def stdio_links(pid: int) -> dict[str, str]:
    """What fds 0-2 of the root are (``pipe:[N]``, a path, ...); the restore re-wires pipes."""
    out = {}
    for fd in (0, 1, 2):
        try:
            out[str(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


def no_space_reason(store: Store, error: BaseException) -> str:
    """A "no space" prefix when the store's filesystem is full (so a person knows what to fix)."""
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    full = full or "No space left" in str(error) or "ENOSPC" in str(error)
    try:
        st = os.statvfs(store.root)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        free = total = -1
    if not full and not 0 <= free < (1 << 20):
        return ""
    return f"no space left on the snapshot store {store.root} ({free} of {total} bytes free): "


def checkpoint(
    pid: int,
    store: Store,
    *,
    key: str = "",
    name: str | None = None,
    leave_running: bool = True,
    image: str = "",
    source: Source | None = None,
    steps: Sequence[Step] | None = None,
    spec: criu.CriuSpec | None = None,
    criu_version: str | None = None,
    hold_fds: tuple[int, ...] = (),
) -> CheckpointResult:
    """Dump the tree rooted at host pid ``pid`` and publish it into ``store``.

    ``hold_fds`` (the agent's per-pod lock) stay open in the CRIU helper.
    """
    t_start = time.monotonic()
    if spec is None or criu_version is None:
        spec, criu_version = criu.require(check_kernel=False)
    key = validate_key(key) if key else f"pid-{pid}"
    name = name or new_name(key)
    if store.exists(name):
        raise CheckpointError(f"snapshot {name!r} already exists in {store.root}")
    if not procfs.alive(pid):
        raise CheckpointError(f"process {pid} does not exist")
    ns_pid = procfs.ns_pids(pid)[-1]
    contained = in_own_namespaces(pid)
    steps = default_steps() if steps is None else list(steps)
    try:
        staging = store.new_staging(name)
    except OSError as e:
        raise CheckpointError(f"{no_space_reason(store, e)}cannot create staging: {e}") from e
    work = Path(tempfile.mkdtemp(prefix="thaw-dump-"))
    ctx = DumpContext(host_pid=pid, ns_pid=ns_pid, staging=staging)
    timings = ctx.timings
    done: list[Step] = []
    ok = False
    try:
        images = staging / CRIU_IMAGES_DIR
        images.mkdir()
        info = {"root_ns_pid": ns_pid, "host_pid": pid, "cmdline": procfs.cmdline(pid)}
        info["stdio"] = stdio_links(pid)
        (staging / PROCESS_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        upper = procfs.root_overlay_upper(pid) if contained else None
        upper = procfs.host_path(upper) if upper is not None else None
        timings["resolve_s"] = time.monotonic() - t_start

        t = time.monotonic()
        for step in steps:
            step.before_dump(ctx)
            done.append(step)
        timings["steps_before_dump_s"] = time.monotonic() - t

        t = time.monotonic()
        try:
            reply = criu.call(
                "dump",
                spec,
                images_dir=images,
                work_dir=work,
                log_file="dump.log",
                opts={**DUMP_OPTS, "pid": ns_pid, "leave_running": leave_running},
                ns_pid=pid if contained else None,
                pass_fds=hold_fds,
                # A container's /dev/shm is its own: carried over (agent.shm).
                extra={"shm_out": str(staging / SHM_FILE)} if contained else None,
            )
            if reply.get("shm_files") == 0:
                (staging / SHM_FILE).unlink(missing_ok=True)
        except criu.CriuFailed as e:
            if not procfs.alive(pid):
                raise CheckpointError(f"process {pid} exited during the checkpoint: {e}") from e
            raise CheckpointError(f"{no_space_reason(store, e)}{e}") from e
        timings["criu_dump_s"] = time.monotonic() - t
        ok = True
    except (OSError, StoreError) as e:
        raise CheckpointError(f"{no_space_reason(store, e)}checkpoint of {pid} failed: {e}") from e
    finally:
        t = time.monotonic()
        after_errors = []
        for step in reversed(done):
            try:
                step.after_dump(ctx, ok)
            except Exception as e:  # every step must get its chance to resume the source
                after_errors.append(f"{step.name}: {e}")
        timings["steps_after_dump_s"] = time.monotonic() - t
        if not ok:
            store.discard(staging)
            shutil.rmtree(work, ignore_errors=True)
    if after_errors:
        store.discard(staging)
        shutil.rmtree(work, ignore_errors=True)
        raise CheckpointError(f"resuming the source failed: {'; '.join(after_errors)}")

    try:
        t = time.monotonic()
        # Zero pages of private anonymous memory read back as zero without being restored:
        # dropped here, a GPU engine's snapshot loses ~40% (agent.image_pages).
        dropped = image_pages.drop_zero_pages(staging / CRIU_IMAGES_DIR)
        timings["zero_pages_s"] = time.monotonic() - t
        timings["zero_pages_dropped_bytes"] = float(dropped.bytes_dropped)

        t = time.monotonic()
        if upper is not None and upper.is_dir():
            rootfs.capture(upper, staging / ROOTFS_DIFF_FILE)
        timings["rootfs_capture_s"] = time.monotonic() - t

        t = time.monotonic()
        files = file_entries(staging)
        timings["hash_s"] = time.monotonic() - t
        manifest = Manifest(
            name=name,
            key=key,
            created=utc_now(),
            image=image,
            kernel=platform.release(),
            arch=platform.machine(),
            criu_version=criu_version,
            root_pid=ns_pid,
            source=source or Source(),
            gpus=tuple(ctx.gpus),
            files=files,
            timings={k: round(v, 4) for k, v in timings.items()},
        )
        t = time.monotonic()
        path = store.publish(staging, manifest)
        timings["publish_s"] = time.monotonic() - t
    except Exception as e:
        reason = no_space_reason(store, e)  # before discard frees the space again
        store.discard(staging)
        raise CheckpointError(f"{reason}publishing snapshot {name} failed: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - t_start
    return CheckpointResult(name, path, manifest, manifest.total_bytes, timings)
