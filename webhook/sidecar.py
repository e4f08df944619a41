"""The ``thaw-sidecar`` container and where it goes in the pod.

Native mode (default) makes it an init container with ``restartPolicy:
Always``: it starts before, and stays up beside, the worker, and does not
keep a finished Job pod alive. Container mode is for clusters without
native sidecars.
"""

from __future__ import annotations

from typing import Any

from thaw import contract
from webhook.config import InjectConfig, SidecarMode

PORT_NAME = contract.SIDECAR_CONTAINER  # the port is named after its container (<= 15 chars)


def restricted_security_context(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """Meets the "restricted" Pod Security Standard, so injection never makes a pod
    inadmissible where that is enforced (the thaw image runs as a non-root user).

    ``runAsNonRoot`` is left out when the pod itself insists on root (``runAsUser:
    0``): the kubelet would refuse to start our containers, and such a pod cannot be
    "restricted" anyway.
    """
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_context = pod_spec.get("securityContext")
    if not (isinstance(pod_context, dict) and pod_context.get("runAsUser") == 0):
        context["runAsNonRoot"] = True
    return context


def control_mount() -> dict[str, Any]:
    return {"name": contract.CONTROL_VOLUME, "mountPath": contract.CONTROL_DIR}


def _field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}


def downward_env(target: str) -> list[dict[str, Any]]:
    """Who the injected containers serve: pod, namespace, node, target container."""
    return [
        {"name": contract.ENV_POD_NAME, "valueFrom": _field("metadata.name")},
        {"name": contract.ENV_POD_NAMESPACE, "valueFrom": _field("metadata.namespace")},
        {"name": contract.ENV_NODE_NAME, "valueFrom": _field("spec.nodeName")},
        {"name": contract.ENV_TARGET_CONTAINER, "value": target},
    ]


def sidecar_container(
    config: InjectConfig, env: list[dict[str, Any]], target: str, pod_spec: dict[str, Any]
) -> dict[str, Any]:
    """``thaw-sidecar``; ``env``: the thaw env the target also gets, then the warm plan's.

    It probes the worker at the pod IP, as the kubelet does (the worker may not
    listen on loopback).
    """
    pod_ip = {"name": contract.ENV_POD_IP, "valueFrom": _field("status.podIP")}
    container: dict[str, Any] = {
        "name": contract.SIDECAR_CONTAINER,
        "image": config.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(contract.SIDECAR_ARGV),
        "env": [*env, *downward_env(target), pod_ip],
        "ports": [{"name": PORT_NAME, "containerPort": contract.SIDECAR_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": contract.SIDECAR_READY_PATH, "port": contract.SIDECAR_PORT},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "securityContext": restricted_security_context(pod_spec),
        "volumeMounts": [control_mount()],
    }
    if config.sidecar_mode is SidecarMode.NATIVE:
        container["restartPolicy"] = "Always"
    return container


def place_sidecar(spec: dict[str, Any], sidecar: dict[str, Any], config: InjectConfig) -> None:
    """Native: first init container (up before anything else). Container: last container."""
    if config.sidecar_mode is SidecarMode.NATIVE:
        spec["initContainers"] = [sidecar, *(spec.get("initContainers") or ())]
    else:
        spec["containers"] = [*spec["containers"], sidecar]
