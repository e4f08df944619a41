"""In-cluster pod source and sink: pods of this node from the API server, Snapshot CRs, Events.

The pod cache is fed by list + watch (field selector ``spec.nodeName``); the
agent's poll loop reads only that cache and the control dirs, so a slow API
server never delays a restore. A container's processes are found without
asking the runtime: every runtime puts a container's processes in a cgroup
whose path holds the pod UID and the container ID, so we scan
``/proc/*/cgroup`` for both and take the process that is PID 1 of its pid
namespace (the container's init).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from agent import procfs
from agent.pods import PodRef, control_via_proc
from thaw import contract
from thaw.contract import InjectedMode

log = logging.getLogger(__name__)


def load_api_client(kubeconfig: str | None = None) -> Any:
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.ApiClient()


# --- pod object -> what the agent needs ---------------------------------------------------
def _get(obj: Any, *path: str) -> Any:
    """Read a field from either a kubernetes model object or a plain dict."""
    for p in path:
        if obj is None:
            return None
        if isinstance(obj, dict):
            camel = p.split("_")[0] + "".join(w.title() for w in p.split("_")[1:])
            obj = obj.get(p, obj.get(camel))
        else:
            obj = getattr(obj, p, None)
    return obj


def target_container(pod: Any) -> tuple[str, str, str]:
    """(name, image, container ID without the runtime prefix) of the thaw target container."""
    annotations = _get(pod, "metadata", "annotations") or {}
    containers = _get(pod, "spec", "containers") or []
    wanted = annotations.get(contract.ANNOTATION_CONTAINER) or (
        _get(containers[0], "name") if containers else ""
    )
    image = next((_get(c, "image") for c in containers if _get(c, "name") == wanted), "") or ""
    cid = ""
    for st in _get(pod, "status", "container_statuses") or []:
        if _get(st, "name") == wanted and _get(st, "container_id"):
            cid = str(_get(st, "container_id")).split("://", 1)[-1]
    return wanted or "", image, cid


def pod_mode(pod: Any) -> InjectedMode | None:
    annotations = _get(pod, "metadata", "annotations") or {}
    raw = annotations.get(contract.ANNOTATION_INJECTED)
    try:
        return InjectedMode(raw) if raw else None
    except ValueError:
        return None


def find_container_init(pod_uid: str, container_id: str, proc: Path = Path("/proc")) -> int | None:
    """Host pid of the container's PID 1, found by its cgroup path (runtime-agnostic)."""
    if not container_id:
        return None
    uid_forms = {pod_uid, pod_uid.replace("-", "_")}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            cg = (proc / entry / "cgroup").read_text()
        except OSError:
            continue
        if container_id not in cg or not any(u in cg for u in uid_forms):
            continue
        try:
            if procfs.ns_pids(int(entry))[-1] == 1:
                return int(entry)
        except (OSError, ProcessLookupError):
            continue
    return None


class KubePods:
    """PodSource: the thaw pods scheduled on ``node``, from a list + watch cache."""

    WATCH_TIMEOUT_S = 300

    def __init__(self, api_client: Any, node: str, start: bool = True) -> None:
        from kubernetes import client

        self.node = node
        self._core = client.CoreV1Api(api_client)
        self._pods: dict[str, Any] = {}
        self._pids: dict[str, int] = {}  # container id -> init pid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if start:
            threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()

    def apply(self, event_type: str, pod: Any) -> None:
        uid = _get(pod, "metadata", "uid")
        with self._lock:
            if event_type == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = pod

    def _watch(self) -> None:
        from kubernetes import watch

        selector = f"spec.nodeName={self.node}"
        while not self._stop.is_set():
            try:
                listing = self._core.list_pod_for_all_namespaces(field_selector=selector)
                with self._lock:
                    self._pods = {p.metadata.uid: p for p in listing.items}
                rv = listing.metadata.resource_version
                for ev in watch.Watch().stream(
                    self._core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=self.WATCH_TIMEOUT_S,
                ):
                    self.apply(ev["type"], ev["object"])
                    if self._stop.is_set():
                        return
            except Exception as e:
                log.warning("pod watch: %s; re-listing", e)
                self._stop.wait(1.0)

    def to_ref(self, pod: Any) -> PodRef | None:
        mode = pod_mode(pod)
        if mode is None:
            return None
        uid = str(_get(pod, "metadata", "uid"))
        name, image, cid = target_container(pod)
        pid = self._pids.get(cid)
        if pid is None or not procfs.alive(pid):
            pid = find_container_init(uid, cid)
            if pid is not None:
                self._pids[cid] = pid
        annotations = _get(pod, "metadata", "annotations") or {}
        return PodRef(
            uid=uid,
            namespace=str(_get(pod, "metadata", "namespace")),
            name=str(_get(pod, "metadata", "name")),
            mode=mode,
            init_pid=pid,
            control=control_via_proc(pid) if pid else Path("/nonexistent"),
            container=name,
            key=annotations.get(contract.ANNOTATION_SNAPSHOT_KEY, ""),
            snapshot=annotations.get(contract.ANNOTATION_SNAPSHOT, ""),
            image=image,
            node=self.node,
        )

    def pods(self) -> list[PodRef]:
        with self._lock:
            pods = list(self._pods.values())
        return [r for r in (self.to_ref(p) for p in pods) if r is not None]

    def close(self) -> None:
        self._stop.set()


def snapshot_object(pod: PodRef, name: str, node: str) -> dict:
    """The Snapshot custom object the agent creates when a checkpoint starts."""
    labels = {}
    if pod.key and len(pod.key) <= 63:
        labels[contract.LABEL_SNAPSHOT_KEY] = pod.key
    return {
        "apiVersion": contract.CRD_API_VERSION,
        "kind": contract.CRD_KIND,
        "metadata": {"name": name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            contract.SPEC_KEY: pod.key,
            contract.SPEC_ARTIFACT: name,
            contract.SPEC_IMAGE: pod.image,
            contract.SPEC_SOURCE_POD: pod.name,
        },
    }


def status_patch(phase: contract.Phase, node: str, message: str = "", summary: dict | None = None):
    status: dict[str, Any] = {contract.STATUS_PHASE: phase.value, contract.STATUS_NODE: node}
    if message:
        status[contract.STATUS_MESSAGE] = message[:1000]
    if summary:
        status[contract.STATUS_SIZE_BYTES] = int(summary.get("bytes", 0))
        status[contract.STATUS_TIMINGS] = {
            k: str(v) for k, v in (summary.get("seconds") or {}).items()
        }
    return {"status": status}


class KubeSink:
    """SnapshotSink: Snapshot objects (status subresource) and Events on the pod."""

    def __init__(self, api_client: Any, node: str) -> None:
        from kubernetes import client

        self.node = node
        self._co = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._client = client

    def _patch_status(self, pod: PodRef, name: str, body: dict) -> None:
        try:
            self._co.patch_namespaced_custom_object_status(
                contract.CRD_GROUP,
                contract.CRD_VERSION,
                pod.namespace,
                contract.CRD_PLURAL,
                name,
                body,
            )
        except Exception as e:
            log.error("snapshot %s/%s: status update failed: %s", pod.namespace, name, e)

    def event(self, pod: PodRef, reason: str, message: str, warning: bool = False) -> None:
        c = self._client
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = c.CoreV1Event(
            metadata=c.V1ObjectMeta(generate_name=f"{pod.name}.", namespace=pod.namespace),
            involved_object=c.V1ObjectReference(
                kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid, api_version="v1"
            ),
            reason=reason,
            message=message[:1000],
            type="Warning" if warning else "Normal",
            source=c.V1EventSource(component="thaw-agent", host=self.node),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self._core.create_namespaced_event(pod.namespace, body)
        except Exception as e:
            log.warning("event %s on %s failed: %s", reason, pod.ident, e)

    def checkpoint_started(self, pod: PodRef, name: str) -> None:
        try:
            self._co.create_namespaced_custom_object(
                contract.CRD_GROUP,
                contract.CRD_VERSION,
                pod.namespace,
                contract.CRD_PLURAL,
                snapshot_object(pod, name, self.node),
            )
        except Exception as e:
            log.error("creating Snapshot %s/%s failed: %s", pod.namespace, name, e)
        self._patch_status(pod, name, status_patch(contract.Phase.CHECKPOINTING, self.node))
        self.event(pod, "Checkpointing", f"thaw: checkpointing into snapshot {name}")

    def checkpoint_ready(self, pod: PodRef, name: str, summary: dict) -> None:
        patch = status_patch(contract.Phase.READY, self.node, summary=summary)
        self._patch_status(pod, name, patch)
        self.event(pod, "Checkpointed", f"thaw: snapshot {name} ready ({summary.get('bytes')} B)")

    def checkpoint_failed(self, pod: PodRef, name: str, reason: str) -> None:
        self._patch_status(pod, name, status_patch(contract.Phase.FAILED, self.node, reason))
        self.event(pod, "CheckpointFailed", f"thaw: snapshot {name}: {reason}", warning=True)

    def checkpoint_abandoned(self, pod: PodRef, reason: str, detail: str) -> None:
        """No Snapshot object: none was started. The pod serves cold."""
        self.event(
            pod,
            "CheckpointAbandoned",
            f"thaw: no snapshot, serving cold ({reason}): {detail}",
            warning=True,
        )

    def restored(self, pod: PodRef, name: str, summary: dict) -> None:
        secs = (summary.get("seconds") or {}).get("total_s")
        self.event(pod, "Restored", f"thaw: restored from snapshot {name} in {secs}s")

    def restore_failed(self, pod: PodRef, name: str, reason: str) -> None:
        self.event(
            pod,
            "RestoreFailed",
            f"thaw: cold start, restore of {name} failed: {reason}",
            warning=True,
        )

    def snapshot_deleted(self, pod: PodRef, name: str) -> None:
        try:
            self._co.delete_namespaced_custom_object(
                contract.CRD_GROUP, contract.CRD_VERSION, pod.namespace, contract.CRD_PLURAL, name
            )
        except Exception as e:  # already gone, or never created (local store only)
            log.info("deleting Snapshot %s/%s: %s", pod.namespace, name, e)
        self.event(pod, "SnapshotDeleted", f"thaw: snapshot {name} removed by retention")

    def abandon_unfinished(self) -> list[str]:
        """Mark this node's Checkpointing snapshots Failed: their agent died mid-dump.

        Called once at agent start, before any new dump: the previous agent on
        this node (there is one per node) can no longer publish them, and the
        pod's still-pending ``ready-for-checkpoint`` makes this agent dump again
        under a new name.
        """
        try:
            found = self._co.list_cluster_custom_object(
                contract.CRD_GROUP, contract.CRD_VERSION, contract.CRD_PLURAL
            )
        except Exception as e:
            log.warning("cannot list Snapshots to clean up: %s", e)
            return []
        done = []
        for obj in found.get("items", []):
            status = obj.get("status") or {}
            if status.get(contract.STATUS_NODE) != self.node:
                continue
            if status.get(contract.STATUS_PHASE) != contract.Phase.CHECKPOINTING.value:
                continue
            meta = obj["metadata"]
            message = "the agent stopped during this checkpoint; nothing was published"
            try:
                self._co.patch_namespaced_custom_object_status(
                    contract.CRD_GROUP,
                    contract.CRD_VERSION,
                    meta["namespace"],
                    contract.CRD_PLURAL,
                    meta["name"],
                    status_patch(contract.Phase.FAILED, self.node, message),
                )
            except Exception as e:
                log.warning("snapshot %s/%s: %s", meta["namespace"], meta["name"], e)
                continue
            done.append(f"{meta['namespace']}/{meta['name']}")
        if done:
            log.info("marked unfinished snapshots Failed: %s", ", ".join(done))
        return done
