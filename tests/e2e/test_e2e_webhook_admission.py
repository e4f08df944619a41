"""The real webhook behind a real kube-apiserver (v1.20): what gets stored is mutated.

The webhook is a ``thaw webhook serve`` child process on 127.0.0.1 with a
certificate from ``thaw certs generate``, registered by URL with the
configuration ``webhook.configuration`` builds. Pods are created through the
API server, so the JSON patch must survive the server's own validation.
"""

from __future__ import annotations

import uuid

import pytest
import yaml
from webhook_process import WebhookProcess, labeled_pod

from thaw import contract
from webhook.snapshot_key import snapshot_key

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def webhook(control_plane, api_client, snapshot_crd, tmp_path_factory):
    proc = WebhookProcess(tmp_path_factory.mktemp("webhook"), control_plane.kubeconfig)
    proc.start()
    try:
        proc.register(api_client)
        yield proc
    finally:
        proc.unregister(api_client)
        proc.stop()


def _core(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


def test_labeled_pod_is_stored_mutated(webhook, api_client, namespace):
    request = labeled_pod("worker")
    _core(api_client).create_namespaced_pod(namespace, request)

    stored = api_client.sanitize_for_serialization(
        _core(api_client).read_namespaced_pod("worker", namespace)
    )
    annotations = stored["metadata"].get("annotations") or {}
    assert annotations.get(contract.ANNOTATION_INJECTED) == contract.InjectedMode.CHECKPOINT
    expected_key = snapshot_key(namespace, request["spec"], request["spec"]["containers"][0])
    assert annotations.get(contract.ANNOTATION_SNAPSHOT_KEY) == expected_key

    containers = {c["name"]: c for c in stored["spec"]["containers"]}
    assert contract.SIDECAR_CONTAINER in containers, "container-mode sidecar not stored"
    worker = containers["worker"]
    env = {e["name"]: e.get("value") for e in worker.get("env") or []}
    assert env.get(contract.ENV_MODE) == contract.InjectedMode.CHECKPOINT
    assert env.get(contract.ENV_SNAPSHOT_KEY) == expected_key
    # The original argv survives behind the checkpoint wrapper.
    assert worker["command"][-3:] == ["python3", "-m", "worker"]
    assert worker["command"] != request["spec"]["containers"][0]["command"]
    volumes = {v["name"] for v in stored["spec"].get("volumes") or []}
    assert contract.CONTROL_VOLUME in volumes


def test_unlabeled_pod_is_untouched(webhook, api_client, namespace):
    request = labeled_pod("plain")
    request["metadata"]["labels"] = {"app": "plain"}
    _core(api_client).create_namespaced_pod(namespace, request)

    stored = _core(api_client).read_namespaced_pod("plain", namespace)
    assert contract.ANNOTATION_INJECTED not in (stored.metadata.annotations or {})
    assert [c.name for c in stored.spec.containers] == ["worker"]
    assert stored.spec.containers[0].command == ["python3", "-m", "worker"]
    assert not stored.spec.init_containers


def test_kube_system_pod_is_untouched(webhook, api_client):
    name = f"sys-{uuid.uuid4().hex[:6]}"
    _core(api_client).create_namespaced_pod("kube-system", labeled_pod(name))
    try:
        stored = _core(api_client).read_namespaced_pod(name, "kube-system")
        assert contract.ANNOTATION_INJECTED not in (stored.metadata.annotations or {})
        assert [c.name for c in stored.spec.containers] == ["worker"]
    finally:
        _core(api_client).delete_namespaced_pod(name, "kube-system", grace_period_seconds=0)


def test_server_dry_run_shows_mutation_and_stores_nothing(
    webhook, control_plane, api_client, namespace
):
    manifest = yaml.safe_dump(labeled_pod("dry"))
    out = control_plane.kubectl(
        "create", "-n", namespace, "--dry-run=server", "-o", "yaml", "-f", "-", input=manifest
    ).stdout
    shown = yaml.safe_load(out)
    assert (
        shown["metadata"]["annotations"][contract.ANNOTATION_INJECTED]
        == contract.InjectedMode.CHECKPOINT
    )
    assert contract.SIDECAR_CONTAINER in [c["name"] for c in shown["spec"]["containers"]]

    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as err:
        _core(api_client).read_namespaced_pod("dry", namespace)
    assert err.value.status == 404
