"""``inject``: (pod, namespace, snapshot view, config) -> (decision, pod). Pure.

Both the admission server and ``thaw inject`` call this, so a pod injected
offline is byte-for-byte the pod the webhook would have produced. Injecting
an injected pod is a skip (``already-injected``), so inject twice == once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thaw import contract
from webhook.checkpoint_mode import apply_checkpoint_mode
from webhook.config import InjectConfig
from webhook.decision import Decision, decide
from webhook.restore_mode import apply_restore_mode
from webhook.snapshots import SnapshotView


@dataclasses.dataclass(frozen=True)
class Injection:
    decision: Decision
    pod: Any  # the input object itself when skipped, else a mutated copy


def mutate(pod: dict[str, Any], decision: Decision, config: InjectConfig) -> dict[str, Any]:
    """The pod ``decision`` asks for; never modifies ``pod``."""
    if not decision.inject:
        return pod
    out = private_levels(pod)
    if decision.mode is contract.InjectedMode.RESTORE:
        return apply_restore_mode(out, decision, config)
    return apply_checkpoint_mode(out, decision, config)


def private_levels(pod: dict[str, Any]) -> dict[str, Any]:
    """A copy of the levels the modes edit in place; everything below is shared.

    The modes set keys on the pod, metadata, annotations, spec and containers,
    and replace (never edit) the lists below them, so sharing the rest is safe
    and keeps a pod with 150k env entries as cheap as a small one. Shared
    subtrees are also what makes ``make_patch`` skip them.
    """
    out = dict(pod)
    if isinstance(pod.get("metadata"), dict):
        meta = out["metadata"] = dict(pod["metadata"])
        if isinstance(meta.get("annotations"), dict):
            meta["annotations"] = dict(meta["annotations"])
    spec = out["spec"] = dict(pod["spec"])
    for field in ("containers", "initContainers"):
        if isinstance(spec.get(field), list):
            spec[field] = [dict(c) for c in spec[field]]
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = list(spec["volumes"])
    return out


def inject(
    pod: Any,
    namespace: str,
    config: InjectConfig,
    snapshots: SnapshotView,
    *,
    kind: str = "Pod",
    operation: str = "CREATE",
) -> Injection:
    decision = decide(pod, namespace, config, snapshots, kind=kind, operation=operation)
    return Injection(decision, mutate(pod, decision, config))
