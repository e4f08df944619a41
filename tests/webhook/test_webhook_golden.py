"""Golden AdmissionReviews: real pod shapes in, the exact patched pod out, per mode and skip.

Inputs (``tests/golden/*.review.json``) are checked in; so are the expected
outputs. ``THAW_REGEN_GOLDEN=1`` rewrites the outputs - review the diff.
"""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
from webhook_support import (
    GOLDEN,
    REGEN,
    case_config,
    case_snapshots,
    expected_of,
    golden_cases,
    load_case,
    run_case,
)

from thaw import contract
from thaw.launch import original_argv
from webhook.decision import INJECTING, Reason
from webhook.mutate import inject
from webhook.patch import make_patch

CASES = golden_cases()


def test_every_reason_has_a_golden_case(tmp_path):
    seen = set()
    for i, name in enumerate(CASES):
        response, _, _ = run_case(load_case(name), tmp_path / str(i))
        seen.add(response["response"]["auditAnnotations"]["decision"])
    assert seen == {r.value for r in Reason} - {Reason.INTERNAL_ERROR.value}


@pytest.mark.parametrize("name", CASES)
def test_golden(name, tmp_path):
    case = load_case(name)
    response, injection, patched = run_case(case, tmp_path / "store")
    got = expected_of(response, patched)
    path = GOLDEN / f"{name}.expected.json"
    if REGEN:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())
    r = response["response"]
    assert r["uid"] == case["review"]["request"]["uid"] and r["allowed"] is True
    assert name.startswith("skip-") != (got["decision"] in INJECTING)
    if got["patched"] is not None:
        # The patch applied to the original is exactly the pure mutation result.
        assert patched == injection.pod


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("skip-")])
def test_injected_pods_are_valid_and_stable(name, tmp_path):
    case = load_case(name)
    request = case["review"]["request"]
    _, _, patched = run_case(case, tmp_path / "store")
    kubernetes_validate.validate(patched, "1.30", strict=True)

    # inject(inject(p)) == inject(p), and its patch is empty.
    config, view = case_config(case), case_snapshots(case, tmp_path / "again")
    twice = inject(patched, request["namespace"], config, view)
    assert twice.decision.reason is Reason.ALREADY_INJECTED
    assert twice.pod == patched and make_patch(patched, twice.pod) == []

    spec, meta = patched["spec"], patched["metadata"]
    target_name = meta.get("annotations", {}).get(contract.ANNOTATION_CONTAINER)
    target = next(c for c in spec["containers"] if c["name"] == (target_name or c["name"]))
    original = next(
        c for c in request["object"]["spec"]["containers"] if c["name"] == target["name"]
    )
    assert original_argv(target["command"]) == original["command"] + original.get("args", [])
    assert "args" not in target
    env = {e["name"]: e.get("value") for e in target["env"]}
    assert env[contract.ENV_MODE] == meta["annotations"][contract.ANNOTATION_INJECTED]
    assert env[contract.ENV_SNAPSHOT_KEY] == meta["annotations"][contract.ANNOTATION_SNAPSHOT_KEY]
    # Other containers are untouched.
    others = [c for c in spec["containers"] if c["name"] not in (target["name"], "thaw-sidecar")]
    originals = [c for c in request["object"]["spec"]["containers"] if c["name"] != target["name"]]
    assert others == originals
    # Everything outside containers/initContainers/volumes/annotations is unchanged.
    strip = copy.deepcopy(patched), copy.deepcopy(request["object"])
    for pod in strip:
        for field in ("containers", "initContainers", "volumes"):
            pod["spec"].pop(field, None)
        pod["metadata"].pop("annotations", None)
    assert strip[0] == strip[1]


def test_already_injected_case_is_the_checkpoint_output(tmp_path):
    """Re-invocation (reinvocationPolicy IfNeeded) of an injected pod is a no-op."""
    case = load_case("checkpoint-native")
    _, _, patched = run_case(case, tmp_path / "a")
    again = copy.deepcopy(case)
    again["review"]["request"]["object"] = patched
    response, _, out = run_case(again, tmp_path / "b")
    assert response["response"]["auditAnnotations"]["decision"] == Reason.ALREADY_INJECTED
    assert "patch" not in response["response"] and out == patched
