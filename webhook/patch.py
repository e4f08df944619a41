"""The JSON patch the API server applies: a diff of the original and the mutated pod.

The diff is generic (whatever the mutation did, applying the patch to the
original gives the mutated pod) but cheap: ``mutate`` shares every subtree it
did not change with the original, so a subtree that is the same object is
skipped without looking inside. A 3 MiB pod costs what its changed paths
cost, not a walk of every env entry. Lists are trimmed to their changed
middle, so appending to a 150k-entry env list is a few ``add`` operations.
"""

from __future__ import annotations

import base64
import json
from typing import Any

_MISSING = object()


def without_managed_fields(obj: Any) -> Any:
    """Kept for callers: managedFields is never touched, so it never shows up in a patch."""
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        return {**obj, "metadata": meta}
    return obj


def make_patch(original: Any, mutated: Any) -> list[dict[str, Any]]:
    """RFC 6902 operations that turn ``original`` into ``mutated``."""
    ops: list[dict[str, Any]] = []
    _diff(original, mutated, "", ops)
    return ops


def _same(a: Any, b: Any) -> bool:
    """Equal without a deep walk: the same object, or equal scalars of one JSON type."""
    if a is b:
        return True
    # bool is an int in Python but not in JSON: True == 1 must still be a change.
    return type(a) is type(b) and not isinstance(a, (dict, list)) and a == b


def _diff(a: Any, b: Any, path: str, ops: list[dict[str, Any]]) -> None:
    if a is b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        _diff_dict(a, b, path, ops)
    elif isinstance(a, list) and isinstance(b, list):
        _diff_list(a, b, path, ops)
    elif not _same(a, b):
        ops.append({"op": "replace", "path": path, "value": b})


def _diff_dict(a: dict, b: dict, path: str, ops: list[dict[str, Any]]) -> None:
    for key in a:
        if key not in b:
            ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
    for key, value in b.items():
        old = a.get(key, _MISSING)
        if old is _MISSING:
            ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
        else:
            _diff(old, value, f"{path}/{_escape(key)}", ops)


def _diff_list(a: list, b: list, path: str, ops: list[dict[str, Any]]) -> None:
    head, limit = 0, min(len(a), len(b))
    while head < limit and _same(a[head], b[head]):
        head += 1
    tail = 0
    while tail < limit - head and _same(a[len(a) - 1 - tail], b[len(b) - 1 - tail]):
        tail += 1
    old, new = a[head : len(a) - tail], b[head : len(b) - tail]
    if len(old) == len(new):
        for i, (x, y) in enumerate(zip(old, new, strict=True)):
            _diff(x, y, f"{path}/{head + i}", ops)
        return
    for _ in old:  # each removal shifts the rest down to the same index
        ops.append({"op": "remove", "path": f"{path}/{head}"})
    for i, value in enumerate(new):
        ops.append({"op": "add", "path": f"{path}/{head + i}", "value": value})


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def encode_patch(ops: list[dict[str, Any]]) -> str:
    """base64 of the compact JSON, as AdmissionResponse.patch wants it."""
    return base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
