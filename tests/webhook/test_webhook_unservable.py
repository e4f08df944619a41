"""Pods thaw cannot serve are skipped with a named reason, never injected into breakage."""

from __future__ import annotations

import copy

import pytest
from webhook_support import load_case

from thaw import contract
from webhook.config import InjectConfig
from webhook.decision import Reason, decide
from webhook.snapshots import NoSnapshots
from webhook.unservable import overlaps_control_dir

POD = load_case("checkpoint-native")["review"]["request"]["object"]
PORT = contract.SIDECAR_PORT


def decide_on(change) -> object:
    pod = copy.deepcopy(POD)
    change(pod)
    return decide(pod, "inference", InjectConfig(), NoSnapshots())


def test_the_base_pod_is_injected():
    assert decide_on(lambda p: None).inject


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("hostPID", Reason.SHARED_PID_NAMESPACE),
        ("shareProcessNamespace", Reason.SHARED_PID_NAMESPACE),
        ("hostNetwork", Reason.HOST_NETWORK),
    ],
)
def test_host_and_shared_namespaces_are_skipped(field, reason):
    d = decide_on(lambda p: p["spec"].update({field: True}))
    assert d.reason is reason and not d.inject and f"spec.{field}" in d.detail
    assert decide_on(lambda p: p["spec"].update({field: False})).inject


def _add_container(c: dict, field: str = "containers"):
    return lambda p: p["spec"].setdefault(field, []).append(c)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["spec"]["containers"][0]["ports"].append(
            {"name": "metrics", "containerPort": PORT, "protocol": "TCP"}
        ),
        _add_container(
            {"name": "exporter", "image": "e", "ports": [{"containerPort": PORT}]},
        ),
        _add_container(
            {
                "name": "proxy",
                "image": "p",
                "restartPolicy": "Always",
                "ports": [{"containerPort": PORT}],
            },
            "initContainers",
        ),
        _add_container(
            {"name": "h", "image": "h", "ports": [{"containerPort": 1, "hostPort": PORT}]}
        ),
        _add_container(
            {"name": "probed", "image": "x", "livenessProbe": {"tcpSocket": {"port": PORT}}}
        ),
        lambda p: p["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(port=PORT),
    ],
    ids=["worker", "other", "init", "host-port", "liveness", "worker-probe"],
)
def test_a_container_on_the_sidecar_port_is_a_port_conflict(change):
    d = decide_on(change)
    assert d.reason is Reason.PORT_CONFLICT and str(PORT) in d.detail and not d.inject


def test_other_ports_are_fine_and_malformed_ones_are_malformed():
    ok = [{"containerPort": 9465}, {"containerPort": "9464"}, {"name": "x"}]
    assert decide_on(_add_container({"name": "x", "image": "x", "ports": ok})).inject
    d = decide_on(_add_container({"name": "x", "image": "x", "ports": ["junk"]}))
    assert d.reason is Reason.MALFORMED_POD and "ports" in d.detail


CLASHING = [
    "/var/run/thaw",
    "/var/run/thaw/",
    "/var/run//thaw",
    "//var/run/thaw",
    "/var/./run/thaw",
    "/var/run/x/../thaw",
    "/run/thaw",
    "/run//thaw/",
    "/var/run/thaw/inner",
    "/run/thaw/inner",
    "/var/run",
    "/run",
    "/var",
    "/",
]
FINE = ["/var/run/thawed", "/run/thaw-data", "/var/lib/thaw", "/runx/thaw", "/models", "/thaw"]


@pytest.mark.parametrize("path", CLASHING)
def test_mounts_over_the_control_dir_under_any_spelling_conflict(path):
    assert overlaps_control_dir(path)
    d = decide_on(
        lambda p: p["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "models", "mountPath": path}
        )
    )
    assert d.reason is Reason.CONTROL_DIR_CONFLICT and repr(path) in d.detail


@pytest.mark.parametrize("path", FINE)
def test_neighbouring_paths_are_fine(path):
    assert not overlaps_control_dir(path)
    d = decide_on(
        lambda p: p["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "models", "mountPath": path}
        )
    )
    assert d.inject


def test_other_containers_may_mount_there():
    """Only the worker gets the control volume; a sibling's own /var/run/thaw is its own."""
    d = decide_on(
        _add_container(
            {"name": "s", "image": "s", "volumeMounts": [{"name": "m", "mountPath": "/run/thaw"}]}
        )
    )
    assert d.inject


def test_unservable_pods_that_did_not_opt_in_are_just_not_opted_in():
    def change(p):
        p["metadata"]["labels"].pop(contract.LABEL_ENABLED)
        p["spec"]["hostNetwork"] = True

    assert decide_on(change).reason is Reason.NO_OPT_IN
