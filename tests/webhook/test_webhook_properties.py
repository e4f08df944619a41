"""Property tests: no input makes the webhook crash or 5xx; deciding is pure and stable."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_support import load_case

from thaw import contract
from webhook.config import InjectConfig, SidecarMode
from webhook.decision import Reason, decide
from webhook.mutate import inject
from webhook.server import answer
from webhook.snapshots import SnapshotRef

CONFIG = InjectConfig()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


class AlwaysReady:
    """A view with a Ready snapshot for every key, so restore paths get fuzzed too."""

    synced = True

    def find_ready(self, key, namespace):
        return SnapshotRef("snap", namespace, key, "snap", "2026-11-20T00:00:00Z")


def names():
    return st.sampled_from(["server", "worker", "thaw-sidecar", "", "x"])


def str_lists():
    return st.lists(st.text(max_size=6), max_size=3)


def containers(wild: bool):
    """Plausible containers; with ``wild``, any field may be any JSON."""

    def maybe(strategy):
        return strategy | json_value if wild else strategy

    return st.fixed_dictionaries(
        {"name": maybe(names())},
        optional={
            "image": st.text(max_size=10),
            "command": maybe(str_lists().filter(bool)),
            "args": maybe(str_lists()),
            "env": maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.text(max_size=5)},
                        optional={"value": st.text(max_size=5), "valueFrom": json_value},
                    ),
                    max_size=2,
                )
            ),
            "volumeMounts": maybe(
                st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2)
            ),
            "resources": maybe(
                st.dictionaries(st.sampled_from(["limits", "requests"]), json_value)
            ),
        },
    )


def pods(wild: bool = False):
    annotations = st.dictionaries(
        st.sampled_from([contract.ANNOTATION_MODE, contract.ANNOTATION_CONTAINER, "a"]),
        st.sampled_from(["auto", "checkpoint", "restore", "off", "worker", "server", "?"]),
    )
    labels = st.just({contract.LABEL_ENABLED: "true"}) | st.dictionaries(
        st.text(max_size=5), st.text(max_size=5)
    )
    meta = st.fixed_dictionaries({}, optional={"labels": labels, "annotations": annotations})
    volumes = st.lists(
        st.fixed_dictionaries({"name": st.sampled_from(["m", "thaw-store", "kube-api-access-1"])}),
        max_size=2,
    )
    spec = st.fixed_dictionaries(
        {"containers": st.lists(containers(wild), min_size=1, max_size=3)},
        optional={
            "initContainers": st.lists(containers(wild), max_size=2),
            "volumes": volumes | json_value if wild else volumes,
        },
    )
    pod = st.fixed_dictionaries({"metadata": meta, "spec": spec})
    return pod | json_value if wild else pod


def envelopes(request):
    return st.fixed_dictionaries(
        {
            "apiVersion": st.just("admission.k8s.io/v1"),
            "kind": st.just("AdmissionReview"),
            "request": request,
        }
    )


def requests(pod_strategy):
    return st.fixed_dictionaries(
        {
            "uid": st.text(min_size=1, max_size=8),
            "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}),
            "object": pod_strategy,
        },
        optional={
            "namespace": st.sampled_from(["ml", "kube-system", "thaw-system", ""]),
            "operation": st.sampled_from(["CREATE", "CREATE", "UPDATE"]),
        },
    )


def reviews():
    """Well-formed envelopes around plausible or wild pods, plus arbitrary JSON."""
    loose_request = st.dictionaries(
        st.sampled_from(["uid", "kind", "object", "namespace", "operation"]), json_value
    )
    return (
        envelopes(requests(pods()))
        | envelopes(requests(pods(wild=True)))
        | envelopes(loose_request | json_value)
        | json_value
    )


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_are_a_clean_400(body):
    status, payload, _ = answer(body, CONFIG, AlwaysReady())
    assert status in (200, 400)
    json.dumps(payload)


@SETTINGS
@given(reviews(), st.sampled_from([SidecarMode.NATIVE, SidecarMode.CONTAINER]))
def test_review_shapes_never_crash(review, mode):
    config = InjectConfig(sidecar_mode=mode)
    status, payload, decision = answer(json.dumps(review).encode(), config, AlwaysReady())
    assert status in (200, 400)
    if status == 200:
        r = payload["response"]
        assert r["allowed"] is True and r["uid"] == review["request"]["uid"]
        assert decision is not None and decision.reason is not Reason.INTERNAL_ERROR
    else:
        assert payload["error"]


@SETTINGS
@given(pods() | pods(wild=True), st.sampled_from(["ml", "kube-system"]))
def test_decide_is_pure_and_inject_is_idempotent(pod, ns):
    before = copy.deepcopy(pod)
    first = decide(pod, ns, CONFIG, AlwaysReady())
    assert decide(pod, ns, CONFIG, AlwaysReady()) == first
    assert pod == before  # input never modified
    once = inject(pod, ns, CONFIG, AlwaysReady())
    assert pod == before
    twice = inject(once.pod, ns, CONFIG, AlwaysReady())
    assert twice.pod == once.pod
    if once.decision.inject:
        assert twice.decision.reason is Reason.ALREADY_INJECTED


def test_deeply_nested_pod_is_admitted_not_crashed():
    review = copy.deepcopy(load_case("checkpoint-native")["review"])
    deep: dict = {}
    node = deep
    for _ in range(900):
        node["x"] = {}
        node = node["x"]
    review["request"]["object"]["spec"]["affinity"] = deep
    status, payload, decision = answer(json.dumps(review).encode(), CONFIG, AlwaysReady())
    assert status == 200 and payload["response"]["allowed"] is True
    assert decision.reason in (Reason.RESTORE_SNAPSHOT_READY, Reason.INTERNAL_ERROR)
