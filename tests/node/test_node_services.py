"""In-cluster API access from a pod: service-account token, kube-proxy's Service VIP, RBAC."""

from __future__ import annotations

import time
import uuid
from typing import Any

import cluster
import pytest

pytestmark = pytest.mark.node

# Runs in the worker image; exactly what an in-cluster client does, with the standard library.
PROBE = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
token = open(f"{sa}/token").read()
def get(path):
    req = urllib.request.Request(f"https://{host}:{port}{path}")
    req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
print("HOST", host)
print("VERSION", get("/version")[1]["gitVersion"])
print("PODS", get("/api/v1/namespaces/default/pods")[0])
"""


def run_to_completion(core: Any, pod: dict[str, Any], timeout: float = 90) -> str:
    name = pod["metadata"]["name"]
    core.create_namespaced_pod("default", pod)
    try:
        deadline = time.monotonic() + timeout
        phase = None
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, "default").status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.3)
        logs = core.read_namespaced_pod_log(name, "default")
        assert phase == "Succeeded", f"phase {phase}, logs:\n{logs}"
        return logs
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_pod_reaches_the_api_server_through_the_kubernetes_service(
    node: cluster.Node, core: Any
) -> None:
    svc = core.read_namespaced_service("kubernetes", "default")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"api-probe-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": node.images["worker"]["ref"],
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", PROBE],
                }
            ],
        },
    }
    logs = run_to_completion(core, pod)
    assert f"HOST {svc.spec.cluster_ip}\n" in logs  # the Service VIP, not the node IP
    assert "VERSION v1.20.2\n" in logs
    # The default service account may not list pods: RBAC is enforced, not bypassed.
    assert "PODS 403\n" in logs
