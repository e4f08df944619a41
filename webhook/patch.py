"""The JSON patch the API server applies: always a diff of two whole pods.

Computing it with ``jsonpatch.make_patch`` (never by hand) means the patch
is exactly "original -> pure mutation result", whatever the mutation did.
``metadata.managedFields`` is dropped from both sides first: it is large,
the mutation never touches it, and diffing it only costs time.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch


def without_managed_fields(obj: Any) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        return {**obj, "metadata": meta}
    return obj


def make_patch(original: Any, mutated: Any) -> list[dict[str, Any]]:
    return jsonpatch.make_patch(
        without_managed_fields(original), without_managed_fields(mutated)
    ).patch


def encode_patch(ops: list[dict[str, Any]]) -> str:
    """base64 of the compact JSON, as AdmissionResponse.patch wants it."""
    return base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
