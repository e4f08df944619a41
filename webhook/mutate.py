"""``inject``: (pod, namespace, snapshot view, config) -> (decision, pod). Pure.

Both the admission server and ``thaw inject`` call this, so a pod injected
offline is byte-for-byte the pod the webhook would have produced. Injecting
an injected pod is a skip (``already-injected``), so inject twice == once.
"""

from __future__ import annotations

import copy
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
    out = copy.deepcopy(pod)
    if decision.mode is contract.InjectedMode.RESTORE:
        return apply_restore_mode(out, decision, config)
    return apply_checkpoint_mode(out, decision, config)


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
