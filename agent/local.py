"""``thaw agent run --local DIR``: the agent over a directory of "pods", no API server.

Layout, one folder per pod::

    DIR/<pod>/pod.json      {"name", "mode", "pid" (host pid of the container's PID 1),
                             "key", "snapshot", "image", "namespace", "uid"}
    DIR/<pod>/control/      the pod's control dir (bind-mounted at CONTROL_DIR in the box)
    DIR/<pod>/events.jsonl  what the agent did (written by LocalSink)

``start_checkpoint_pod`` / ``start_restore_pod`` create such pods as real
namespace containers (:mod:`agent.sandbox`) running a command under thaw's
launchers; the demo and the tests drive the whole flow through them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.pods import PodRef
from agent.sandbox import Box
from thaw import launch
from thaw.contract import ENV_MODE, ENV_SNAPSHOT, ENV_SNAPSHOT_KEY, InjectedMode, Signal

log = logging.getLogger(__name__)
POD_FILE = "pod.json"
EVENTS_FILE = "events.jsonl"


class LocalPods:
    """PodSource over ``DIR/<pod>/pod.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def pods(self) -> list[PodRef]:
        out = []
        for pod_file in sorted(self.root.glob(f"*/{POD_FILE}")):
            try:
                raw = json.loads(pod_file.read_text())
                out.append(
                    PodRef(
                        uid=str(raw.get("uid") or pod_file.parent.name),
                        namespace=str(raw.get("namespace", "local")),
                        name=str(raw.get("name") or pod_file.parent.name),
                        mode=InjectedMode(raw["mode"]),
                        init_pid=raw.get("pid"),
                        control=pod_file.parent / "control",
                        container=str(raw.get("container", "")),
                        key=str(raw.get("key", "")),
                        snapshot=str(raw.get("snapshot", "")),
                        image=str(raw.get("image", "")),
                    )
                )
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring %s: %s", pod_file, e)
        return out

    def close(self) -> None:
        pass


class LocalSink:
    """SnapshotSink appending one JSON line per event to ``DIR/<pod>/events.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _emit(self, pod: PodRef, event: str, name: str, **fields: object) -> None:
        line = {"time": time.time(), "event": event, "snapshot": name, **fields}
        log.info("%s: %s %s", pod.ident, event, name)
        path = self.root / pod.name / EVENTS_FILE
        try:
            with path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as e:
            log.warning("cannot record event for %s: %s", pod.ident, e)

    def checkpoint_started(self, pod: PodRef, name: str) -> None:
        self._emit(pod, "Checkpointing", name)

    def checkpoint_ready(self, pod: PodRef, name: str, summary: dict) -> None:
        self._emit(pod, "Ready", name, summary=summary)

    def checkpoint_failed(self, pod: PodRef, name: str, reason: str) -> None:
        self._emit(pod, "Failed", name, reason=reason)

    def checkpoint_abandoned(self, pod: PodRef, reason: str, detail: str) -> None:
        self._emit(pod, "CheckpointAbandoned", "", reason=reason, detail=detail)

    def restored(self, pod: PodRef, name: str, summary: dict) -> None:
        self._emit(pod, "Restored", name, summary=summary)

    def restore_failed(self, pod: PodRef, name: str, reason: str) -> None:
        self._emit(pod, "RestoreFailed", name, reason=reason)

    def abandon_unfinished(self) -> list[str]:
        return []  # local events are a log, not state: nothing to mark

    def snapshot_deleted(self, pod: PodRef, name: str) -> None:
        self._emit(pod, "Deleted", name, reason="retention")


def read_events(root: str | Path, pod: str) -> list[dict]:
    path = Path(root) / pod / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass
class LocalPod:
    """A running local pod: its box (container) and its folder under the agent's DIR."""

    name: str
    dir: Path
    box: Box

    @property
    def control(self) -> Path:
        return self.dir / "control"

    def signal_path(self, sig: Signal) -> Path:
        return self.control / sig.value

    def wait_signal(
        self, sig: Signal, timeout: float = 60.0, *, unless: Signal | None = None
    ) -> str:
        """The text of ``sig`` once written; RuntimeError if ``unless`` is written first."""
        deadline = time.monotonic() + timeout
        path = self.signal_path(sig)
        while time.monotonic() < deadline:
            if path.exists():
                return path.read_text()
            if unless is not None and self.signal_path(unless).exists():
                text = self.signal_path(unless).read_text()
                raise RuntimeError(f"{self.name}: {unless.value}: {text.strip()}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: no {sig.value} after {timeout}s; log:\n{self.box.log()}")

    def stop(self) -> None:
        self.box.stop()


def _start_pod(
    root: Path,
    name: str,
    command: list[str],
    pod: dict,
    env: Mapping[str, str],
    network: bool = False,
) -> LocalPod:
    pod_dir = Path(root) / name
    (pod_dir / "control").mkdir(parents=True, exist_ok=True)
    log_path = pod_dir / "container.log"
    box = Box(command, pod_dir / "control", name=name, env=env, log=log_path, network=network)
    record = {"uid": str(uuid.uuid4()), "name": name, "pid": box.pid, **pod}
    tmp = pod_dir / f".{POD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.rename(pod_dir / POD_FILE)
    return LocalPod(name, pod_dir, box)


def start_checkpoint_pod(
    root: str | Path,
    name: str,
    argv: Sequence[str],
    *,
    key: str,
    image: str = "local",
    namespace: str = "local",
    env: Mapping[str, str] | None = None,
    network: bool = False,
) -> LocalPod:
    """A checkpoint-mode pod: ``argv`` runs under the PID-offset wrapper.

    ``network``: the pod gets its own IP (:mod:`agent.sandbox_net`), as in a cluster.
    """
    box_env = {ENV_MODE: InjectedMode.CHECKPOINT.value, ENV_SNAPSHOT_KEY: key, **(env or {})}
    pod = {"mode": InjectedMode.CHECKPOINT.value, "key": key, "image": image}
    pod["namespace"] = namespace
    wrapped = launch.checkpoint_wrapper(argv)
    return _start_pod(Path(root), name, wrapped, pod, box_env, network)


def start_restore_pod(
    root: str | Path,
    name: str,
    argv: Sequence[str],
    *,
    key: str,
    snapshot: str = "",
    image: str = "local",
    namespace: str = "local",
    env: Mapping[str, str] | None = None,
    request: bool = True,
    network: bool = False,
) -> LocalPod:
    """A restore-mode pod: the placeholder is PID 1; ``argv`` is its cold-start fallback.

    ``request`` writes ``restore-requested`` (the restore init step's job in a cluster);
    ``network`` gives the pod its own IP, another one than its source's.
    """
    box_env = {ENV_MODE: InjectedMode.RESTORE.value, ENV_SNAPSHOT_KEY: key, **(env or {})}
    if snapshot:
        box_env[ENV_SNAPSHOT] = snapshot
    pod = {"mode": InjectedMode.RESTORE.value, "key": key, "snapshot": snapshot, "image": image}
    pod["namespace"] = namespace
    p = _start_pod(Path(root), name, launch.restore_placeholder(argv), pod, box_env, network)
    if request:
        (p.control / Signal.RESTORE_REQUESTED.value).write_text("{}\n")
    return p


def start_agent(root: str | Path, store: str | Path | None = None):
    """An in-process agent serving ``root`` (store: ``root/store``) on a background thread.

    Returns the Agent; call ``agent.stop()`` when done. For the demo and tests.
    """
    import threading

    from agent.daemon import Agent
    from agent.store import Store

    root = Path(root)
    agent = Agent(LocalPods(root), LocalSink(root), Store(store or root / "store"), node="local")
    threading.Thread(target=agent.run, name="agent", daemon=True).start()
    return agent
