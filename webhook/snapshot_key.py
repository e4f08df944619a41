"""The snapshot key: which warm process a pod would build, as a label-safe hash.

A checkpoint taken from one pod may be restored into another pod only if
both would have started the *same* process. The key is a content hash of
exactly the inputs that shape that process, computed on the pod as the user
wrote it (before injection), so the first, checkpoint-mode pod of a
Deployment and every later, restore-mode pod share one key.

What goes in (``key_material``), for the target container only unless said:

* ``namespace`` - snapshots never cross namespaces;
* ``container``: ``name``, ``image``, ``command``, ``args``, ``workingDir``;
* ``env``: every entry in order, name with its ``value`` or its ``valueFrom``
  reference (the reference, not the referenced secret's value);
* ``envFrom``: the ConfigMap/Secret references in order, with prefixes;
* ``resources``: requests, limits and claims, as written (``1Gi`` and
  ``1024Mi`` are different keys);
* ``volumeMounts``: name, mountPath, subPath, readOnly; ``volumeDevices``;
* privilege - a restored process keeps the identity and credentials of the
  dumped one, so a pod may only get a process it could have started itself:
  the container's ``securityContext``; the pod's ``securityContext``,
  ``serviceAccountName``, ``automountServiceAccountToken``,
  ``runtimeClassName``, ``hostNetwork``, ``hostIPC``, ``hostPID``,
  ``hostUsers`` and ``shareProcessNamespace``;
* ``volumes``: every pod volume's full definition (secret and ConfigMap
  names, projected sources, hostPath paths, claim names...), with the API
  server's ``defaultMode: 420`` and ``hostPath.type: ""`` defaults dropped so
  a manifest and its admitted pod agree.

The API server's service-account token volume is left out: the
ServiceAccount admission plugin adds it before webhooks run as
``kube-api-access-<random>``, and its content follows from the pod's
``serviceAccountName``, which is in the key. Only a volume of exactly that
shape is left out; any other volume, whatever its name or mount path, counts.

Left out on purpose: pod name, generateName, labels, annotations, uid, owner
references, node placement, other containers - they differ between replicas
of one Deployment without changing the worker or what it may do.

Format: ``KEY_PREFIX`` + the first ``KEY_HEX_CHARS`` hex digits of the SHA-256
of the canonical JSON of the material: 43 characters, valid as a label value.
A new version prefix is needed whenever the material changes, so that no
snapshot keyed by older, narrower material matches.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = "v2"
KEY_PREFIX = f"{KEY_VERSION}-"
KEY_HEX_CHARS = 40
_MOUNT_FIELDS = ("name", "mountPath", "subPath", "readOnly")
SERVICE_ACCOUNT_PREFIX = "kube-api-access-"
DEFAULT_SERVICE_ACCOUNT = "default"
_POD_FLAGS = ("hostNetwork", "hostIPC", "hostPID", "shareProcessNamespace")
_DEFAULT_MODE = 420  # 0644, what the API server fills in
_MODE_KINDS = ("secret", "configMap", "projected", "downwardAPI")
_ROOT_CA = "kube-root-ca.crt"


def key_material(namespace: str, pod_spec: dict[str, Any], container: dict[str, Any]) -> dict:
    """The inputs of the key, as a plain JSON-able dict (see module doc)."""
    dropped = {v.get("name") for v in pod_spec.get("volumes") or () if is_token_volume(v)}
    volumes = [v for v in pod_spec.get("volumes") or () if v.get("name") not in dropped]
    own_mounts = [m for m in container.get("volumeMounts") or () if m.get("name") not in dropped]
    account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount")
    return {
        "version": KEY_VERSION,
        "namespace": namespace,
        "container": {
            "name": container.get("name"),
            "image": container.get("image"),
            "command": container.get("command"),
            "args": container.get("args"),
            "workingDir": container.get("workingDir"),
            "env": [_env_entry(e) for e in container.get("env") or ()],
            "envFrom": list(container.get("envFrom") or ()),
            "resources": container.get("resources") or {},
            "volumeMounts": [{f: m.get(f) for f in _MOUNT_FIELDS} for m in own_mounts],
            "volumeDevices": list(container.get("volumeDevices") or ()),
            "securityContext": container.get("securityContext") or {},
        },
        "pod": {
            "securityContext": pod_spec.get("securityContext") or {},
            "serviceAccountName": account or DEFAULT_SERVICE_ACCOUNT,
            "automountServiceAccountToken": pod_spec.get("automountServiceAccountToken"),
            "runtimeClassName": pod_spec.get("runtimeClassName"),
            "hostUsers": pod_spec.get("hostUsers", True) is not False,
            **{f: bool(pod_spec.get(f)) for f in _POD_FLAGS},
        },
        "volumes": [_volume(v) for v in volumes],
    }


def snapshot_key(namespace: str, pod_spec: dict[str, Any], container: dict[str, Any]) -> str:
    """Label-safe key of the warm process ``container`` of ``pod_spec`` would build."""
    canonical = json.dumps(
        key_material(namespace, pod_spec, container),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:KEY_HEX_CHARS]


def is_token_volume(volume: dict[str, Any]) -> bool:
    """The ServiceAccount admission plugin's token volume, and nothing that only looks like it.

    A projected volume named ``kube-api-access-*`` whose sources are only an
    audience-less service-account token, the ``kube-root-ca.crt`` ConfigMap
    and the downward API: what it holds follows from the service account.
    """
    name, projected = volume.get("name"), volume.get("projected")
    if not (isinstance(name, str) and name.startswith(SERVICE_ACCOUNT_PREFIX)):
        return False
    if set(volume) != {"name", "projected"} or not isinstance(projected, dict):
        return False
    sources = projected.get("sources")
    if not isinstance(sources, list) or not set(projected) <= {"sources", "defaultMode"}:
        return False
    return all(isinstance(s, dict) and _token_source(s) for s in sources)


def _token_source(source: dict[str, Any]) -> bool:
    if len(source) != 1:
        return False
    kind, value = next(iter(source.items()))
    if not isinstance(value, dict):
        return False
    if kind == "serviceAccountToken":
        return not value.get("audience")
    if kind == "configMap":
        return value.get("name") == _ROOT_CA
    return kind == "downwardAPI"


def _env_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry.get("name"), "value": entry.get("value"), "from": entry.get("valueFrom")}


def _volume(volume: dict[str, Any]) -> dict[str, Any]:
    """The full definition, less the defaults the API server fills in."""
    out: dict[str, Any] = {}
    for kind, source in volume.items():
        if isinstance(source, dict):
            source = {k: v for k, v in source.items() if not _is_default(kind, k, v)}
        out[kind] = source
    return out


def _is_default(kind: str, field: str, value: Any) -> bool:
    if field == "defaultMode":
        return value == _DEFAULT_MODE and kind in _MODE_KINDS
    return kind == "hostPath" and field == "type" and value == ""
