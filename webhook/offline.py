"""``thaw inject``: the webhook's mutation applied to manifests, offline.

Useful to review exactly what the webhook will do, or to run without a
webhook at all. Pod templates of workload kinds get the same pure mutation
as admitted pods; every other document passes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from webhook import safe_yaml
from webhook.config import InjectConfig
from webhook.decision import Decision
from webhook.mutate import inject
from webhook.snapshots import SnapshotView

# kind -> path of keys to the pod template (a Pod is its own template).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def _template(doc: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    path = TEMPLATE_PATHS.get(str(doc.get("kind")))
    if path is None:
        return None, ()
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), path


Decisions = list[tuple[str, Decision]]  # (document label, decision) per workload


def inject_document(
    doc: Any, config: InjectConfig, snapshots: SnapshotView, label: str = ""
) -> tuple[Any, Decisions]:
    """(possibly injected document, decisions for the workloads in it)."""
    if not isinstance(doc, dict):
        return doc, []
    label = _label(doc, label)
    if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        items, decisions = [], []
        for i, item in enumerate(doc["items"]):
            new, found = inject_document(item, config, snapshots, f"{label}[{i}]")
            items.append(new)
            decisions += found
        return {**doc, "items": items}, decisions
    template, path = _template(doc)
    if template is None:
        return doc, []
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    result = inject(template, namespace or "default", config, snapshots)
    if not result.decision.inject:
        return doc, [(label, result.decision)]
    if not path:
        return result.pod, [(label, result.decision)]
    out = dict(doc)
    node = out
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[path[-1]] = result.pod
    return out, [(label, result.decision)]


def inject_stream(
    text: str, config: InjectConfig, snapshots: SnapshotView
) -> tuple[str, Decisions]:
    """Multi-document YAML in, YAML out; also the decision for every workload.

    Loads with ``safe_yaml``'s bounds: an alias bomb or absurd nesting is a
    yaml.YAMLError before anything is written.
    """
    out_docs, decisions = [], []
    for i, doc in enumerate(safe_yaml.load_all(text)):
        new, found = inject_document(doc, config, snapshots, f"#{i}")
        out_docs.append(new)
        decisions += found
    return _dump(out_docs), decisions


def _label(doc: dict[str, Any], fallback: str) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or fallback
    return f"{doc.get('kind')}/{name}"


class _Dumper(yaml.SafeDumper):
    """No anchors/aliases (kubectl users read this) and scripts as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(docs: Iterable[Any]) -> str:
    return yaml.dump_all(
        [d for d in docs if d is not None],
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
