"""When the sidecar may checkpoint the worker: the ``thaw.dev/warm`` annotations, checked.

By default the worker's own readinessProbe says "warm" (``webhook.probe``), so a
stock engine is checkpointed without changes; ``thaw.dev/warm: hook`` is for an
engine that announces itself through ``sidecar.hooks``. Sleep/wake endpoints
(from ``thaw.dev/engine`` or explicit paths) are paths on the probe's endpoint,
which the sidecar resolves against the pod IP. ``thaw.dev/checkpoint-window``
bounds the wait: after it the pod serves cold, never stays Not Ready.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thaw import contract
from webhook.probe import warm_probe
from webhook.reasons import Reason, Refused

MAX_PATH_CHARS = 1024


@dataclasses.dataclass(frozen=True)
class WarmPlan:
    """What the sidecar is told: how to see the engine warm, and what to call then."""

    warm: contract.Warm
    probe: contract.WarmProbe | None = None
    sleep: str = ""  # path on the probe's endpoint, POSTed before the dump
    wake: str = ""  # ... and after it, or after a restore
    window_s: int = contract.DEFAULT_CHECKPOINT_WINDOW_S


def warm_plan(annotations: dict[str, str], container: dict[str, Any]) -> WarmPlan:
    """The plan for ``container``; raises Refused for a bad value or no usable warm signal."""
    raw = annotations.get(contract.ANNOTATION_WARM, contract.Warm.PROBE)
    try:
        warm = contract.Warm(raw)
    except ValueError:
        raise Refused(
            Reason.BAD_ANNOTATION,
            f"{contract.ANNOTATION_WARM}={raw!r}: expected {_choices(contract.Warm)}",
        ) from None
    window = _window(annotations)
    sleep, wake = _endpoints(annotations)
    if warm is contract.Warm.HOOK:
        if sleep:
            raise Refused(
                Reason.BAD_ANNOTATION,
                f"sleep/wake endpoints need {contract.ANNOTATION_WARM}: {contract.Warm.PROBE}; "
                "an engine using sidecar.hooks quiesces itself",
            )
        return WarmPlan(warm, window_s=window)
    return WarmPlan(warm, warm_probe(container), sleep, wake, window)


def sidecar_env(plan: WarmPlan | None) -> list[dict[str, Any]]:
    """The sidecar's env for ``plan``: window, probe JSON, sleep/wake paths."""
    if plan is None:
        return []
    env = [{"name": contract.ENV_CHECKPOINT_WINDOW, "value": str(plan.window_s)}]
    if plan.probe is not None:
        env.append({"name": contract.ENV_WARM_PROBE, "value": plan.probe.to_json()})
    if plan.sleep:
        env.append({"name": contract.ENV_ENGINE_SLEEP_URL, "value": plan.sleep})
        env.append({"name": contract.ENV_ENGINE_WAKE_URL, "value": plan.wake})
    return env


def _choices(kind: type) -> str:
    return " or ".join(m.value for m in kind)


def _window(annotations: dict[str, str]) -> int:
    raw = annotations.get(contract.ANNOTATION_CHECKPOINT_WINDOW)
    if raw is None:
        return contract.DEFAULT_CHECKPOINT_WINDOW_S
    top = contract.MAX_CHECKPOINT_WINDOW_S
    if raw.isascii() and raw.isdigit() and len(raw) <= 6 and 0 < int(raw) <= top:
        return int(raw)
    raise Refused(
        Reason.BAD_ANNOTATION,
        f"{contract.ANNOTATION_CHECKPOINT_WINDOW}={raw[:40]!r}: expected whole seconds, 1 to {top}",
    )


def _endpoints(annotations: dict[str, str]) -> tuple[str, str]:
    """(sleep, wake) paths: the engine's preset, each overridden by an explicit path."""
    sleep = wake = ""
    engine = annotations.get(contract.ANNOTATION_ENGINE)
    if engine is not None:
        try:
            sleep, wake = contract.ENGINE_ENDPOINTS[contract.Engine(engine)]
        except ValueError:
            raise Refused(
                Reason.BAD_ANNOTATION,
                f"{contract.ANNOTATION_ENGINE}={engine[:40]!r}: expected "
                f"{_choices(contract.Engine)}, or set {contract.ANNOTATION_SLEEP_PATH} and "
                f"{contract.ANNOTATION_WAKE_PATH}",
            ) from None
    sleep = _path(annotations, contract.ANNOTATION_SLEEP_PATH, sleep)
    wake = _path(annotations, contract.ANNOTATION_WAKE_PATH, wake)
    if bool(sleep) != bool(wake):
        raise Refused(
            Reason.BAD_ANNOTATION,
            f"{contract.ANNOTATION_SLEEP_PATH} and {contract.ANNOTATION_WAKE_PATH} go together: "
            "an engine put to sleep must be woken",
        )
    return sleep, wake


def _path(annotations: dict[str, str], name: str, default: str) -> str:
    raw = annotations.get(name)
    if raw is None:
        return default
    plain = all(c.isprintable() and not c.isspace() for c in raw)
    if raw.startswith("/") and plain and len(raw) <= MAX_PATH_CHARS:
        return raw
    raise Refused(Reason.BAD_ANNOTATION, f"{name}={raw[:40]!r}: expected a URL path like /sleep")
