"""Restore-mode wiring: checkpoint-mode wiring plus the restore init step.

``thaw-restore`` runs after the sidecar (which is already up in native mode)
and before the user's init containers; it asks the node agent to restore
the snapshot into this pod, reading the artifact store read-only. The target
container runs ``thaw.launch.restore_placeholder``, which carries the
original argv so a failed restore becomes a cold start, never a stuck pod.
"""

from __future__ import annotations

from typing import Any

from thaw import contract
from thaw.launch import restore_placeholder
from webhook.checkpoint_mode import original_argv, thaw_env, wire_pod
from webhook.config import InjectConfig, SidecarMode
from webhook.decision import Decision
from webhook.sidecar import control_mount, downward_env, restricted_security_context


def restore_init_container(
    decision: Decision, config: InjectConfig, pod_spec: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": contract.RESTORE_CONTAINER,
        "image": config.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(contract.RESTORE_INIT_ARGV),
        "env": [
            *thaw_env(decision, contract.InjectedMode.RESTORE),
            {"name": contract.ENV_STORE_DIR, "value": contract.STORE_MOUNT_PATH},
            {"name": contract.ENV_RESTORE_TIMEOUT, "value": str(config.restore_timeout_s)},
            *downward_env(decision.container),
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "securityContext": restricted_security_context(pod_spec),
        "volumeMounts": [
            control_mount(),
            {
                "name": contract.STORE_VOLUME,
                "mountPath": contract.STORE_MOUNT_PATH,
                "readOnly": True,
            },
        ],
    }


def store_volume(config: InjectConfig) -> dict:
    """The artifact store: a shared PVC, or (single node) the agent's host folder."""
    if config.store_host_path:
        return {
            "name": contract.STORE_VOLUME,
            "hostPath": {"path": config.store_host_path, "type": "Directory"},
        }
    return {
        "name": contract.STORE_VOLUME,
        "persistentVolumeClaim": {"claimName": config.store_claim, "readOnly": True},
    }


def apply_restore_mode(
    pod: dict[str, Any], decision: Decision, config: InjectConfig
) -> dict[str, Any]:
    assert decision.snapshot is not None, "restore mode needs a snapshot"
    timeout = ({"name": contract.ENV_RESTORE_TIMEOUT, "value": str(config.restore_timeout_s)},)
    target = wire_pod(pod, decision, config, contract.InjectedMode.RESTORE, timeout)
    target["command"] = restore_placeholder(original_argv(target))
    target.pop("args", None)

    spec = pod["spec"]
    pod["metadata"]["annotations"][contract.ANNOTATION_SNAPSHOT] = decision.snapshot.name
    spec["volumes"].append(store_volume(config))
    # Right after the native sidecar, before the user's own init containers.
    inits = spec.get("initContainers") or []
    at = 1 if config.sidecar_mode is SidecarMode.NATIVE else 0
    spec["initContainers"] = [
        *inits[:at],
        restore_init_container(decision, config, spec),
        *inits[at:],
    ]
    return pod
