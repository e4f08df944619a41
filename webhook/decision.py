"""Whether and how to inject a pod: a pure function with a named reason for every outcome.

Every outcome - injected or skipped - carries a ``Reason``; the server counts
them in metrics and returns them to the API server as a warning and an audit
annotation, so "why was my pod not thawed?" has an answer without logs.

``thaw.dev/mode: restore`` with no Ready snapshot is a skip
(``NO_READY_SNAPSHOT``): the pod runs exactly as written. Restore mode means
"use a snapshot, never take one" - checkpointing pauses the worker while it
is dumped, which a user asking only for restores did not agree to.

Pods thaw cannot serve (shared PID namespaces, host network, the sidecar's
port taken, a mount over the control folder) are skipped by ``webhook.unservable``.

A pod must also say how its warmth is seen (``webhook.warm``): by default its
own readinessProbe, which the sidecar runs; without one the sidecar could
never tell, and the pod is skipped with a reason that says what to add.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thaw import contract
from webhook.config import InjectConfig
from webhook.reasons import INJECTING, Reason, Refused
from webhook.snapshot_key import snapshot_key
from webhook.snapshots import SnapshotRef, SnapshotView
from webhook.unservable import check_pod, check_target
from webhook.warm import WarmPlan, warm_plan

INJECTED_NAMES = frozenset({contract.SIDECAR_CONTAINER, contract.RESTORE_CONTAINER})
INJECTED_VOLUMES = frozenset({contract.CONTROL_VOLUME, contract.STORE_VOLUME})


@dataclasses.dataclass(frozen=True)
class Decision:
    reason: Reason
    detail: str = ""
    container: str = ""  # target container name
    key: str = ""  # snapshot key (computed on the original pod)
    snapshot: SnapshotRef | None = None  # restore mode only
    warm: WarmPlan | None = None  # what the sidecar watches for (both modes)

    @property
    def inject(self) -> bool:
        return self.reason in INJECTING

    @property
    def mode(self) -> contract.InjectedMode | None:
        if not self.inject:
            return None
        if self.reason is Reason.RESTORE_SNAPSHOT_READY:
            return contract.InjectedMode.RESTORE
        return contract.InjectedMode.CHECKPOINT

    def message(self) -> str:
        verb = f"injected {self.mode}" if self.inject else "skipped"
        tail = f": {self.detail}" if self.detail else ""
        return f"{contract.DOMAIN}: {verb} ({self.reason}){tail}"


def skip(reason: Reason, detail: str = "") -> Decision:
    return Decision(reason=reason, detail=detail)


def decide(
    pod: Any,
    namespace: str,
    config: InjectConfig,
    snapshots: SnapshotView,
    *,
    kind: str = "Pod",
    operation: str = "CREATE",
) -> Decision:
    """Decide for ``pod`` (the object as submitted) in ``namespace``."""
    if kind != "Pod":
        return skip(Reason.NOT_A_POD, f"kind {kind!r}")
    if operation != "CREATE":
        return skip(Reason.NOT_CREATE, f"operation {operation!r}")
    problem = shape_problem(pod)
    if problem:
        return skip(Reason.MALFORMED_POD, problem)
    meta = pod.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if labels.get(contract.LABEL_ENABLED) != contract.LABEL_ENABLED_VALUE:
        return skip(
            Reason.NO_OPT_IN, f"needs label {contract.LABEL_ENABLED}={contract.LABEL_ENABLED_VALUE}"
        )
    if contract.ANNOTATION_INJECTED in annotations:
        return skip(Reason.ALREADY_INJECTED, annotations[contract.ANNOTATION_INJECTED])
    raw_mode = annotations.get(contract.ANNOTATION_MODE, contract.Mode.AUTO)
    try:
        mode = contract.Mode(raw_mode)
    except ValueError:
        return skip(Reason.UNKNOWN_MODE, f"{contract.ANNOTATION_MODE}={raw_mode!r}")
    if mode is contract.Mode.OFF:
        return skip(Reason.MODE_OFF)
    if namespace in config.excluded_namespaces:
        return skip(Reason.EXCLUDED_NAMESPACE, namespace)

    spec = pod["spec"]
    try:
        check_pod(spec)
    except Refused as e:
        return skip(e.reason, e.detail)
    containers = spec["containers"]
    wanted = annotations.get(contract.ANNOTATION_CONTAINER, containers[0]["name"])
    target = next((c for c in containers if c["name"] == wanted), None)
    if target is None:
        return skip(Reason.CONTAINER_NOT_FOUND, f"no container named {wanted!r}")
    if not target.get("command"):
        return skip(
            Reason.NO_COMMAND,
            f"container {wanted!r} has no explicit command (the image ENTRYPOINT is unknown here)",
        )
    clash = _name_clash(spec)
    if clash:
        return skip(Reason.NAME_CONFLICT, clash)
    try:
        check_target(target)
        warm = warm_plan(annotations, target)
    except Refused as e:
        return skip(e.reason, e.detail)

    if mode is not contract.Mode.CHECKPOINT and not getattr(snapshots, "synced", True):
        # Without a first list "no snapshot" would be a guess that costs a needless
        # checkpoint (or a missed restore): admit the pod as written instead.
        return skip(Reason.SNAPSHOTS_NOT_SYNCED, "snapshot cache has not listed yet")
    key = snapshot_key(namespace, spec, target)
    found = None if mode is contract.Mode.CHECKPOINT else snapshots.find_ready(key, namespace)
    if found is not None:
        return Decision(Reason.RESTORE_SNAPSHOT_READY, found.name, wanted, key, found, warm)
    if mode is contract.Mode.RESTORE:
        return skip(Reason.NO_READY_SNAPSHOT, f"key {key}")
    reason = (
        Reason.CHECKPOINT_FORCED
        if mode is contract.Mode.CHECKPOINT
        else Reason.CHECKPOINT_NO_SNAPSHOT
    )
    return Decision(reason, f"key {key}", wanted, key, warm=warm)


def _name_clash(spec: dict[str, Any]) -> str:
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or ():
            if c["name"] in INJECTED_NAMES:
                return f"pod already has a container named {c['name']!r}"
    for v in spec.get("volumes") or ():
        if v["name"] in INJECTED_VOLUMES:
            return f"pod already has a volume named {v['name']!r}"
    return ""


def shape_problem(pod: Any) -> str:
    """What makes ``pod`` unsafe to mutate, or "" - checks only what injection touches."""
    if not isinstance(pod, dict):
        return "object is not a JSON object"
    meta = pod.get("metadata", {})
    if not isinstance(meta, dict):
        return "metadata is not an object"
    for field in ("labels", "annotations"):
        value = meta.get(field) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return f"metadata.{field} is not a map of strings"
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return "spec is not an object"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.containers is not a non-empty list"
    for field in ("containers", "initContainers"):
        items = spec.get(field) or []
        if not isinstance(items, list):
            return f"spec.{field} is not a list"
        for i, c in enumerate(items):
            problem = _container_problem(c)
            if problem:
                return f"spec.{field}[{i}]: {problem}"
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list) or not all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in volumes
    ):
        return "spec.volumes is not a list of named objects"
    return ""


def _container_problem(c: Any) -> str:
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        return "not an object with a string name"
    for field in ("command", "args"):
        value = c.get(field) or []
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            return f"{field} is not a list of strings"
    for field in ("env", "volumeMounts", "envFrom", "ports", "volumeDevices"):
        value = c.get(field) or []
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            return f"{field} is not a list of objects"
    if not isinstance(c.get("resources") or {}, dict):
        return "resources is not an object"
    for m in c.get("volumeMounts") or []:
        # The snapshot key hashes and compares these; the API server requires both.
        if not isinstance(m.get("name"), str) or not isinstance(m.get("mountPath"), str):
            return "volumeMounts entry without a string name and mountPath"
    return ""
