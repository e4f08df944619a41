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
* ``volumeMounts``: name, mountPath, subPath, readOnly;
* ``volumes``: every pod volume's name and source type (``emptyDir``,
  ``persistentVolumeClaim``, ...), not the source's details.

Service-account token volumes are left out (volumes named
``kube-api-access-*`` and whatever the target mounts at the service-account
path): the API server's ServiceAccount admission adds them before webhooks
run, with a random name suffix per pod.

Left out on purpose: pod name, generateName, labels, annotations, uid, owner
references, node placement, other containers - they differ between replicas
of one Deployment without changing the worker.

Format: ``KEY_PREFIX`` + the first ``KEY_HEX_CHARS`` hex digits of the SHA-256
of the canonical JSON of the material: 43 characters, valid as a label value.
A new version prefix is needed whenever the material changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = "v1"
KEY_PREFIX = f"{KEY_VERSION}-"
KEY_HEX_CHARS = 40
_MOUNT_FIELDS = ("name", "mountPath", "subPath", "readOnly")
_VOLUME_META_FIELDS = frozenset({"name"})
SERVICE_ACCOUNT_PREFIX = "kube-api-access-"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def key_material(namespace: str, pod_spec: dict[str, Any], container: dict[str, Any]) -> dict:
    """The inputs of the key, as a plain JSON-able dict (see module doc)."""
    mounts = container.get("volumeMounts") or ()
    names = [v.get("name") for v in pod_spec.get("volumes") or ()]
    names += [m.get("name") for m in mounts]
    dropped = {m.get("name") for m in mounts if m.get("mountPath") == SERVICE_ACCOUNT_PATH}
    dropped |= {n for n in names if str(n).startswith(SERVICE_ACCOUNT_PREFIX)}
    volumes = [v for v in pod_spec.get("volumes") or () if v.get("name") not in dropped]
    own_mounts = [m for m in mounts if m.get("name") not in dropped]
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
        },
        "volumes": [{"name": v.get("name"), "type": _volume_type(v)} for v in volumes],
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


def _env_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry.get("name"), "value": entry.get("value"), "from": entry.get("valueFrom")}


def _volume_type(volume: dict[str, Any]) -> str:
    kinds = sorted(k for k in volume if k not in _VOLUME_META_FIELDS)
    return ",".join(kinds)
