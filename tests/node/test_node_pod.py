"""A plain Pod on the real node: kubelet, containerd (CRI), runc, overlay rootfs, CNI bridge."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from typing import Any

import cluster
import pytest
from node_support import record

pytestmark = pytest.mark.node

WORKER_PORT = 8080


def wait_ready(core: Any, name: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, "default")
        conds = {c.type: c.status for c in pod.status.conditions or []}
        if conds.get("Ready") == "True":
            return pod
        waiting = [
            s.state.waiting.reason
            for s in pod.status.container_statuses or []
            if s.state and s.state.waiting and s.state.waiting.reason
        ]
        if any(
            r in ("ErrImageNeverPull", "CrashLoopBackOff", "CreateContainerError") for r in waiting
        ):
            break
        time.sleep(0.2)
    events = core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}"
    ).items
    raise AssertionError(
        f"pod {name} not Ready: {pod.status if pod else None}\n"
        + "\n".join(f"{e.reason}: {e.message}" for e in events)
    )


def worker_pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "thaw-node-test"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": WORKER_PORT}],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": WORKER_PORT},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def test_node_reports_the_runtime_stack(core: Any) -> None:
    node = core.read_node(cluster.NODE_NAME)
    info = node.status.node_info
    assert info.kubelet_version == "v1.20.2"
    assert info.container_runtime_version.startswith("containerd://1.6.")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == cluster.NODE_IP


def test_plain_pod_becomes_ready_and_serves_http_on_its_pod_ip(
    node: cluster.Node, core: Any
) -> None:
    name = f"worker-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    core.create_namespaced_pod("default", worker_pod(name, node.images["worker"]["ref"]))
    try:
        pod = wait_ready(core, name)
        record("pod_create_to_ready_s", time.monotonic() - t0)
        ip = pod.status.pod_ip
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.POD_SUBNET)
        # From the node's network namespace, over the CNI bridge to the pod's veth.
        first = json.loads(node.http_get(ip, WORKER_PORT, "/"))
        second = json.loads(node.http_get(ip, WORKER_PORT, "/"))
        assert first["hostname"] == name  # the pod's own UTS namespace
        assert first["pid"] == 1  # the worker is PID 1 of its container
        assert first["state"] == second["state"] and len(first["state"]) == 64
        assert second["served"] == first["served"] + 1  # same process answered both
        # API server -> kubelet (TLS on the node IP) -> containerd log file.
        logs = core.read_namespaced_pod_log(name, "default", container="worker")
        assert f"worker ready on :{WORKER_PORT}" in logs
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_missing_image_is_reported_not_pulled(node: cluster.Node, core: Any) -> None:
    """imagePullPolicy Never with an image the node lacks: a clear ErrImageNeverPull, no pull."""
    name = f"absent-{uuid.uuid4().hex[:6]}"
    pod = worker_pod(name, "localhost/thaw/not-built:0")
    core.create_namespaced_pod("default", pod)
    try:
        deadline = time.monotonic() + 60
        reason = None
        while time.monotonic() < deadline and reason is None:
            st = core.read_namespaced_pod(name, "default").status
            for cs in st.container_statuses or []:
                if cs.state.waiting and cs.state.waiting.reason not in (None, "ContainerCreating"):
                    reason = cs.state.waiting.reason
            time.sleep(0.2)
        assert reason == "ErrImageNeverPull"
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_runc_runs_an_imported_image_directly(node: cluster.Node) -> None:
    """The runtime layer below the kubelet: ctr -> containerd -> runc on the overlay snapshot."""
    ref = node.images["worker"]["ref"]
    out = node.ctr(
        "-n", "k8s.io", "run", "--rm", ref, f"direct-{uuid.uuid4().hex[:6]}",
        "python3", "-c", "import os, sys; print(sys.version_info[:2], os.getpid())",
    )  # fmt: skip
    assert out.strip() == "(3, 13) 1"
