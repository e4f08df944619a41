"""failurePolicy Ignore, for real: with the webhook process gone, the API server
still admits opted-in pods (unmutated) instead of blocking workloads."""

from __future__ import annotations

import time

import pytest
from webhook_process import WebhookProcess, labeled_pod

from thaw import contract

pytestmark = pytest.mark.apiserver


def test_pods_are_admitted_while_webhook_is_down(
    control_plane, api_client, snapshot_crd, namespace, tmp_path
):
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    webhook = WebhookProcess(tmp_path / "webhook", control_plane.kubeconfig)
    webhook.start()
    try:
        webhook.register(api_client)
        core.create_namespaced_pod(namespace, labeled_pod("while-up"))
        up = core.read_namespaced_pod("while-up", namespace)
        assert contract.ANNOTATION_INJECTED in (up.metadata.annotations or {})

        webhook.stop()
        started = time.monotonic()
        core.create_namespaced_pod(namespace, labeled_pod("while-down"))
        elapsed = time.monotonic() - started
        down = core.read_namespaced_pod("while-down", namespace)
        assert contract.ANNOTATION_INJECTED not in (down.metadata.annotations or {})
        assert [c.name for c in down.spec.containers] == ["worker"]
        # A refused connection fails fast; only a hung webhook would cost timeoutSeconds.
        assert elapsed < 5, f"admission took {elapsed:.1f}s with the webhook down"
    finally:
        webhook.unregister(api_client)
        webhook.stop()
