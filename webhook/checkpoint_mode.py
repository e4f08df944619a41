"""Checkpoint-mode wiring, which restore mode builds on.

The target container gets the control volume, the thaw env and its argv
wrapped by ``thaw.launch.checkpoint_wrapper`` (so the worker is never PID 1
and never holds the low PIDs a later restore needs). The sidecar joins the
pod. Nothing else in the user's containers changes.
"""

from __future__ import annotations

from typing import Any

from thaw import contract
from thaw.launch import checkpoint_wrapper
from webhook.config import InjectConfig
from webhook.decision import Decision
from webhook.sidecar import control_mount, place_sidecar, sidecar_container
from webhook.warm import sidecar_env


def thaw_env(decision: Decision, mode: contract.InjectedMode) -> list[dict[str, Any]]:
    env = [
        {"name": contract.ENV_MODE, "value": str(mode)},
        {"name": contract.ENV_CONTROL_DIR, "value": contract.CONTROL_DIR},
        {"name": contract.ENV_SNAPSHOT_KEY, "value": decision.key},
    ]
    if decision.snapshot is not None:
        env.append({"name": contract.ENV_SNAPSHOT, "value": decision.snapshot.name})
    return env


def target_container(spec: dict[str, Any], decision: Decision) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == decision.container)


def original_argv(container: dict[str, Any]) -> list[str]:
    return [*container["command"], *(container.get("args") or ())]


def wire_pod(
    pod: dict[str, Any],
    decision: Decision,
    config: InjectConfig,
    mode: contract.InjectedMode,
    extra_env: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """Steps shared by both modes; mutates ``pod`` (a private copy) and returns the target.

    ``extra_env`` goes to both the target and the sidecar.
    """
    meta, spec = pod.setdefault("metadata", {}), pod["spec"]
    # Which snapshot a pod restores is the webhook's choice alone: a value the
    # pod's author wrote is dropped here (restore mode then sets its own).
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != contract.ANNOTATION_SNAPSHOT
    }
    meta["annotations"] = {
        **annotations,
        contract.ANNOTATION_INJECTED: str(mode),
        contract.ANNOTATION_SNAPSHOT_KEY: decision.key,
    }
    spec["volumes"] = [
        *(spec.get("volumes") or ()),
        {"name": contract.CONTROL_VOLUME, "emptyDir": {}},
    ]
    target = target_container(spec, decision)
    target["env"] = [*(target.get("env") or ()), *thaw_env(decision, mode), *extra_env]
    target["volumeMounts"] = [*(target.get("volumeMounts") or ()), control_mount()]
    env = [*thaw_env(decision, mode), *extra_env, *sidecar_env(decision.warm)]
    sidecar = sidecar_container(config, env, decision.container, spec)
    place_sidecar(spec, sidecar, config)
    return target


def apply_checkpoint_mode(
    pod: dict[str, Any], decision: Decision, config: InjectConfig
) -> dict[str, Any]:
    target = wire_pod(pod, decision, config, contract.InjectedMode.CHECKPOINT)
    target["command"] = checkpoint_wrapper(original_argv(target))
    target.pop("args", None)
    return pod
