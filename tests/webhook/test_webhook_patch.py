"""The JSON patch is exact (original + patch == mutated) and cheap for huge pods."""

from __future__ import annotations

import copy
import json
import time

import jsonpatch
import pytest
from hostile_load import heavy_review
from hypothesis import given, settings
from hypothesis import strategies as st
from webhook_support import case_config, golden_cases, load_case

from webhook.mutate import inject
from webhook.patch import make_patch
from webhook.snapshots import SnapshotRef

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


def _containers(kids):
    return st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=4), kids, max_size=5)


json_value = st.recursive(json_leaf, _containers, max_leaves=30)


class AlwaysReady:
    synced = True

    def find_ready(self, key, namespace):
        return SnapshotRef("snap", namespace, key, "snap", "2026-11-20T00:00:00Z")


def canonical(obj) -> str:
    """JSON text: tells True from 1, which Python's == does not."""
    return json.dumps(obj, sort_keys=True)


@given(json_value, json_value)
@settings(max_examples=300, deadline=None)
def test_patch_of_unrelated_documents_is_exact(a, b):
    patched = jsonpatch.apply_patch(copy.deepcopy(a), make_patch(a, b))
    assert canonical(patched) == canonical(b)


@given(st.lists(json_value, max_size=6), st.lists(json_value, max_size=3), st.integers(0, 5))
@settings(max_examples=200, deadline=None)
def test_patch_of_a_list_edited_in_place_is_exact(items, inserted, at):
    original = {"l": [*items, [1, True]]}
    edited = {"l": [*original["l"][:at], *inserted, *original["l"][at + 1 :]]}
    patched = jsonpatch.apply_patch(copy.deepcopy(original), make_patch(original, edited))
    assert canonical(patched) == canonical(edited)


@pytest.mark.parametrize("name", golden_cases())
@pytest.mark.parametrize("view", [None, AlwaysReady()], ids=["no-snapshot", "ready"])
def test_golden_pods_patch_to_exactly_the_mutation(name, view):
    case = load_case(name)
    request = case["review"]["request"]
    pod = request["object"]
    before = canonical(pod)
    injection = inject(
        pod,
        request.get("namespace") or "default",
        case_config(case),
        view or NoneView(),
        kind=request["kind"]["kind"],
        operation=request.get("operation", "CREATE"),
    )
    assert canonical(pod) == before, "mutation changed its input"
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), make_patch(pod, injection.pod))
    assert canonical(patched) == canonical(injection.pod)


class NoneView:
    synced = True

    def find_ready(self, key, namespace):
        return None


def test_huge_pod_patch_is_a_few_operations_and_fast():
    pod = heavy_review()["request"]["object"]
    env = pod["spec"]["containers"][0]["env"]
    started = time.perf_counter()
    injection = inject(pod, "inference", case_config(load_case("checkpoint-native")), NoneView())
    ops = make_patch(pod, injection.pod)
    elapsed = time.perf_counter() - started
    assert injection.decision.inject
    assert pod["spec"]["containers"][0]["env"] is env and len(env) > 50_000  # input untouched
    assert len(ops) < 40, len(ops)
    assert elapsed < 1.0, elapsed
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    assert canonical(patched) == canonical(injection.pod)
