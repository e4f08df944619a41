"""Deployment -> ReplicaSet -> Pod through the real controllers, then restore mode.

kube-controller-manager creates the pods, so they reach the webhook exactly as
in a cluster (generateName, owner references, pod-template-hash). The first pod
comes in checkpoint mode; after a Ready ``Snapshot`` object for its key appears
(CRD from the chart, status through the status subresource), the webhook's
watch cache - fed by the real API server through a kubeconfig - makes the next
replicas restore-mode pods, while the existing pod stays as it was.
"""

from __future__ import annotations

import time

import pytest
from webhook_process import WebhookProcess

from thaw import contract

pytestmark = pytest.mark.apiserver

APP = "llm"


@pytest.fixture(scope="module")
def webhook(controller_manager, api_client, snapshot_crd, tmp_path_factory):
    proc = WebhookProcess(tmp_path_factory.mktemp("webhook"), controller_manager.kubeconfig)
    proc.start()
    try:
        proc.register(api_client)
        yield proc
    finally:
        proc.unregister(api_client)
        proc.stop()


def _deployment(replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {
                    "labels": {"app": APP, contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE}
                },
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.invalid/llm-server:1",
                            "command": ["python3", "-m", "server", "--port", "8000"],
                            "env": [{"name": "MODEL", "value": "/models/tiny"}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _pods(core, namespace: str, count: int, timeout_s: float = 60) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"app={APP}").items
        if len(pods) >= count:
            return sorted(pods, key=lambda p: p.metadata.creation_timestamp)
        time.sleep(0.2)
    raise AssertionError(f"expected {count} pods of {APP} in {namespace}, got {len(pods)}")


def _wait_restore_visible(core, namespace: str, template_spec: dict, timeout_s: float = 15):
    """Server-side dry-run pods until the webhook's watch cache has the Ready snapshot."""
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "probe-",
            "labels": {contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE},
        },
        "spec": template_spec,
    }
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pod = core.create_namespaced_pod(namespace, probe, dry_run="All")
        mode = (pod.metadata.annotations or {}).get(contract.ANNOTATION_INJECTED)
        if mode == contract.InjectedMode.RESTORE:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError("the webhook never saw the Ready snapshot through its watch")


def test_deployment_checkpoints_then_scales_up_in_restore_mode(webhook, api_client, namespace):
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    deployment = _deployment(replicas=1)
    apps.create_namespaced_deployment(namespace, deployment)
    [first] = _pods(core, namespace, 1)
    annotations = first.metadata.annotations or {}
    assert annotations.get(contract.ANNOTATION_INJECTED) == contract.InjectedMode.CHECKPOINT
    key = annotations[contract.ANNOTATION_SNAPSHOT_KEY]
    assert first.metadata.owner_references[0].kind == "ReplicaSet"
    assert contract.SIDECAR_CONTAINER in [c.name for c in first.spec.containers]

    # What the agent does after a successful dump: a Snapshot object, then Ready status.
    snapshot_name = "llm-snap-1"
    custom.create_namespaced_custom_object(
        contract.CRD_GROUP,
        contract.CRD_VERSION,
        namespace,
        contract.CRD_PLURAL,
        {
            "apiVersion": contract.CRD_API_VERSION,
            "kind": contract.CRD_KIND,
            "metadata": {"name": snapshot_name, "labels": {contract.LABEL_SNAPSHOT_KEY: key}},
            "spec": {
                contract.SPEC_KEY: key,
                contract.SPEC_ARTIFACT: snapshot_name,
                contract.SPEC_IMAGE: "registry.invalid/llm-server:1",
                contract.SPEC_SOURCE_POD: first.metadata.name,
            },
        },
    )
    created_at = time.monotonic()
    custom.patch_namespaced_custom_object_status(
        contract.CRD_GROUP,
        contract.CRD_VERSION,
        namespace,
        contract.CRD_PLURAL,
        snapshot_name,
        {
            "status": {
                contract.STATUS_PHASE: contract.Phase.READY,
                contract.STATUS_NODE: "node-a",
                contract.STATUS_SIZE_BYTES: 123456789,
            }
        },
    )
    stored = custom.get_namespaced_custom_object(
        contract.CRD_GROUP, contract.CRD_VERSION, namespace, contract.CRD_PLURAL, snapshot_name
    )
    assert stored["status"][contract.STATUS_PHASE] == contract.Phase.READY

    seen_at = _wait_restore_visible(core, namespace, deployment["spec"]["template"]["spec"])
    print(f"webhook saw the Ready snapshot {seen_at - created_at:.2f}s after it was created")

    first_version = first.metadata.resource_version
    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name=APP, body={"spec": {"replicas": 3}}
    )
    pods = _pods(core, namespace, 3)
    new = [p for p in pods if p.metadata.uid != first.metadata.uid]
    assert len(new) == 2
    for pod in new:
        ann = pod.metadata.annotations or {}
        assert ann.get(contract.ANNOTATION_INJECTED) == contract.InjectedMode.RESTORE, (
            pod.metadata.name
        )
        assert ann.get(contract.ANNOTATION_SNAPSHOT) == snapshot_name
        assert ann.get(contract.ANNOTATION_SNAPSHOT_KEY) == key
        names = [c.name for c in pod.spec.init_containers or []] + [
            c.name for c in pod.spec.containers
        ]
        assert contract.RESTORE_CONTAINER in names

    old = core.read_namespaced_pod(first.metadata.name, namespace)
    assert old.metadata.resource_version == first_version
    assert (old.metadata.annotations or {})[
        contract.ANNOTATION_INJECTED
    ] == contract.InjectedMode.CHECKPOINT
