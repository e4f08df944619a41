"""Mutated real AdmissionReviews: the golden inputs, broken one node at a time.

Each mutation is raw bytes, because the interesting breakage (10k-deep
nesting, duplicate keys, NaN, lone surrogates, invalid UTF-8) cannot be
produced by ``json.dumps`` of a Python object. The corpus is deterministic
(seeded), so a failure names a case that reproduces.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any

import jsonpatch
from webhook_support import golden_cases, load_case

from webhook.decision import Reason

DEEP_LEVELS = 10_000
HUGE_BYTES = 2 * 1024 * 1024  # under the 3 MiB default body limit: it must be parsed
CONFUSED = (0, -1, 1.5, 10**30, "", "x", [], {}, None, True, False, [None], {"": {}})


@dataclasses.dataclass(frozen=True)
class Raw:
    """Bytes spliced verbatim into the encoded document."""

    data: bytes


@dataclasses.dataclass(frozen=True)
class DupKeys:
    """An object written with the same key more than once."""

    pairs: tuple[tuple[str, Any], ...]


def encode(node: Any) -> bytes:
    """Compact JSON of ``node``; ``Raw`` and ``DupKeys`` pass through unchecked."""
    if isinstance(node, Raw):
        return node.data
    if isinstance(node, DupKeys):
        items = node.pairs
    elif isinstance(node, dict):
        items = tuple(node.items())
    else:
        items = None
    if items is not None:
        return b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in items) + b"}"
    if isinstance(node, list):
        return b"[" + b",".join(encode(v) for v in node) + b"]"
    return json.dumps(node).encode()


NodePath = tuple[str | int, ...]


def paths(node: Any, prefix: NodePath = ()) -> Iterator[NodePath]:
    """Every node's path, the root included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*prefix, i))


def replaced(doc: Any, path: NodePath, value: Any) -> Any:
    """A copy of ``doc`` with the node at ``path`` replaced (shares untouched parts)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: replaced(doc[head], rest, value)}
    out = list(doc)
    out[head] = replaced(doc[head], rest, value)
    return out


def deleted(doc: Any, path: NodePath) -> Any:
    parent_path, last = path[:-1], path[-1]
    parent = get(doc, parent_path)
    if isinstance(parent, dict):
        smaller: Any = {k: v for k, v in parent.items() if k != last}
    else:
        smaller = parent[:last] + parent[last + 1 :]
    return replaced(doc, parent_path, smaller)


def get(doc: Any, path: NodePath) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def deep(levels: int = DEEP_LEVELS) -> Raw:
    return Raw(b'{"a":' * levels + b"1" + b"}" * levels)


def deep_lists(levels: int = DEEP_LEVELS) -> Raw:
    return Raw(b"[" * levels + b"]" * levels)


BAD_TEXT = (
    Raw(b'"\\ud800"'),  # lone high surrogate, escaped
    Raw(b'"x\\udfff"'),  # lone low surrogate, escaped
    Raw(b'"\xed\xa0\x80"'),  # a surrogate encoded as UTF-8 bytes (invalid UTF-8)
    Raw(b'"\xff\xfe"'),  # bytes that are never UTF-8
    Raw(b'"\xe2\x82"'),  # truncated sequence
    Raw(b'"\xc0\xaf"'),  # overlong encoding of "/"
    Raw(b'"\\u0000nul"'),  # NUL inside a string
)
NON_FINITE = (Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e999"))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    original: Any  # the parsed object when the body is meant to parse, else None


def mutations(seed: int = 7, per_review: int = 120) -> Iterator[Case]:
    """Deterministic mutated bodies of every golden review, ``per_review`` random
    ones each plus the structural ones (deep, huge, bad text, duplicates) on chosen paths."""
    rng = random.Random(seed)
    for name in golden_cases():
        review = load_case(name)["review"]
        all_paths = list(paths(review))
        strings = [p for p in all_paths if isinstance(get(review, p), str)]
        dicts = [p for p in all_paths if isinstance(get(review, p), dict) and get(review, p)]
        chosen = [
            ("request",),
            ("request", "uid"),
            ("request", "object"),
            ("request", "object", "metadata"),
            ("request", "object", "spec", "containers"),
            ("request", "object", "spec", "containers", 0, "command"),
        ]
        for i in range(per_review):
            path = rng.choice(all_paths)
            op = rng.randrange(4)
            if op == 0 or not path:
                value = rng.choice(CONFUSED)
                doc = replaced(review, path, value)
                yield Case(f"{name}:type:{path}:{value!r}", encode(doc), doc)
            elif op == 1:
                doc = deleted(review, path)
                yield Case(f"{name}:delete:{path}", encode(doc), doc)
            elif op == 2:
                bad = BAD_TEXT[i % len(BAD_TEXT)]
                target = rng.choice(strings)
                yield Case(
                    f"{name}:text:{target}:{bad}", encode(replaced(review, target, bad)), None
                )
            else:
                bad = NON_FINITE[i % len(NON_FINITE)]
                yield Case(f"{name}:nonfinite:{path}", encode(replaced(review, path, bad)), None)
        for path in [p for p in chosen if _has(review, p)]:
            for maker in (deep, deep_lists):
                yield Case(f"{name}:deep:{path}", encode(replaced(review, path, maker())), None)
        target = rng.choice(strings)
        doc = replaced(review, target, "A" * HUGE_BYTES)
        yield Case(f"{name}:huge:{target}", encode(doc), doc)
        for path in rng.sample(dicts, min(6, len(dicts))):
            obj = get(review, path)
            key = rng.choice(list(obj))
            for other in (None, 0, {"x": 1}, "dup"):
                dup = DupKeys((*obj.items(), (key, other)))
                doc = replaced(review, path, dup)
                yield Case(f"{name}:dup:{path}:{key}={other!r}", encode(doc), None)


def _has(doc: Any, path: NodePath) -> bool:
    try:
        get(doc, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def check_answer(case: Case, status: int, payload: dict[str, Any]) -> str:
    """ "" when (status, payload) is a correct answer to ``case``, else what is wrong."""
    if status == 400 or status == 413:
        return "" if isinstance(payload.get("error"), str) and payload["error"] else "no error"
    if status != 200:
        return f"status {status}"
    try:
        json.dumps(payload, allow_nan=False)  # what goes back must be strict JSON
    except ValueError as e:
        return f"payload is not strict JSON: {e}"
    if payload.get("apiVersion") != "admission.k8s.io/v1" or payload.get("kind") != (
        "AdmissionReview"
    ):
        return "not an AdmissionReview"
    r = payload.get("response")
    if not isinstance(r, dict) or r.get("allowed") is not True:
        return "response is not an allowed response"
    if not isinstance(r.get("uid"), str) or not r["uid"]:
        return "response has no uid"
    warnings = r.get("warnings")
    if not (isinstance(warnings, list) and all(isinstance(w, str) and w for w in warnings)):
        return "no reason in warnings"
    if r.get("auditAnnotations", {}).get("decision") not in {x.value for x in Reason}:
        return "no decision"
    if "patch" in r:
        ops = json.loads(base64.b64decode(r["patch"]))
        if case.original is not None:
            obj = case.original["request"]["object"]
            try:
                jsonpatch.apply_patch(obj, ops)
            except jsonpatch.JsonPatchException as e:
                return f"patch does not apply: {e}"
    return ""
