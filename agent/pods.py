"""What the agent needs to know about a pod, and where it reports, whatever the source.

The daemon only talks to these two interfaces: a ``PodSource`` (Kubernetes
API on a node, or a local directory) lists the thaw pods and where their
container's PID 1 and control dir are; a ``SnapshotSink`` records what
happened (Snapshot objects + Events in a cluster, a JSON-lines file locally).
"""

from __future__ import annotations

import dataclasses
import json
import os
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

    def has(self, signal: Signal) -> bool:
        return (self.control / signal.value).exists()

    def read(self, signal: Signal) -> str:
        try:
            return (self.control / signal.value).read_text()
        except OSError:
            return ""

    def write(self, signal: Signal, payload: dict | str) -> None:
        """Write a signal file atomically (tmp + rename): readers never see half of it."""
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1) + "\n"
        tmp = self.control / f".{signal.value}.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.control / signal.value)


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
    def restored(self, pod: PodRef, name: str, summary: dict) -> None: ...
    def restore_failed(self, pod: PodRef, name: str, reason: str) -> None: ...
    def snapshot_deleted(self, pod: PodRef, name: str) -> None: ...
    def abandon_unfinished(self) -> list[str]: ...
