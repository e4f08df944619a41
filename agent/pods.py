"""What the agent needs to know about a pod, and where it reports, whatever the source.

The daemon only talks to these two interfaces: a ``PodSource`` (Kubernetes
API on a node, or a local directory) lists the thaw pods and where their
container's PID 1 and control dir are; a ``SnapshotSink`` records what
happened (Snapshot objects + Events in a cluster, a JSON-lines file locally).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import stat
from pathlib import Path
from typing import Protocol

from agent.procfs import resolve_in_root
from thaw.contract import CONTROL_DIR, InjectedMode, Signal


@dataclasses.dataclass(frozen=True)
class PodRef:
    uid: str
    namespace: str
    name: str
    mode: InjectedMode
    init_pid: int | None  # host pid of the target container's PID 1 (None: not running yet)
    control: Path  # host path of the control dir
    container: str = ""
    key: str = ""  # snapshot key (checkpoint and restore)
    snapshot: str = ""  # restore: snapshot name wanted (empty: newest for the key)
    image: str = ""
    node: str = ""

    @property
    def ident(self) -> str:
        return f"{self.namespace}/{self.name}"

    # The control dir belongs to the pod: its author can plant symlinks there. The agent
    # runs as root on the node, so it never follows one (O_NOFOLLOW, regular files only).

    def has(self, signal: Signal) -> bool:
        return os.path.lexists(self.control / signal.value)

    def read(self, signal: Signal) -> str:
        try:
            fd = open_control_file(self.control / signal.value, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as f:
            return f.read(MAX_SIGNAL_BYTES).decode(errors="replace")

    def write(self, signal: Signal, payload: dict | str) -> None:
        """Write a signal file atomically (tmp + rename): readers never see half of it."""
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1) + "\n"
        tmp = self.control / f".{signal.value}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # whatever the pod left there; unlink never follows a symlink
        fd = open_control_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.rename(tmp, self.control / signal.value)  # replaces a planted link, never follows


MAX_SIGNAL_BYTES = 64 << 10  # signal files are small JSON; never slurp what a pod planted


def open_control_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a file in a pod's control dir: no symlink, nothing but a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path.name}: not a regular file")
    return fd


def control_via_proc(init_pid: int) -> Path:
    """The control dir as the container sees it, reached from the host."""
    return resolve_in_root(init_pid, CONTROL_DIR)


class PodSource(Protocol):
    def pods(self) -> list[PodRef]: ...
    def close(self) -> None: ...


class SnapshotSink(Protocol):
    def checkpoint_started(self, pod: PodRef, name: str) -> None: ...
    def checkpoint_ready(self, pod: PodRef, name: str, summary: dict) -> None: ...
    def checkpoint_failed(self, pod: PodRef, name: str, reason: str) -> None: ...
    def checkpoint_abandoned(self, pod: PodRef, reason: str, detail: str) -> None: ...
    def restored(self, pod: PodRef, name: str, summary: dict) -> None: ...
    def restore_failed(self, pod: PodRef, name: str, reason: str) -> None: ...
    def snapshot_deleted(self, pod: PodRef, name: str) -> None: ...
    def abandon_unfinished(self) -> list[str]: ...
