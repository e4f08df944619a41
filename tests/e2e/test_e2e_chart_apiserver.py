"""The Helm chart against a real kube-apiserver v1.20.

``helm template --kube-version 1.20.2`` output is applied with kubectl, so the
server's own validation judges every object (PDB falls back to policy/v1beta1
there); a real ``helm install`` picks the API versions from the live server and
prints the NOTES; the CRD serves Snapshot objects with its printer columns.
"""

from __future__ import annotations

import pytest
import yaml
from chart_render import CHART, helm, render_text

from thaw import contract

pytestmark = pytest.mark.apiserver


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_rendered_chart_is_accepted_by_the_server(control_plane, api_client, snapshot_crd):
    from kubernetes import client

    namespace = "thaw-chart"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    rendered = render_text("1.20.2", namespace=namespace)
    docs = _docs(rendered)
    try:
        out = control_plane.kubectl("apply", "-f", "-", input=rendered).stdout
        for doc in docs:
            assert f"{doc['kind'].lower()}" in out.lower(), (doc["kind"], out)

        apps = client.AppsV1Api(api_client)
        webhook = apps.read_namespaced_deployment("thaw-webhook", namespace)
        assert webhook.spec.replicas == 2
        sc = webhook.spec.template.spec.containers[0].security_context
        assert sc.run_as_non_root and sc.read_only_root_filesystem
        assert sc.capabilities.drop == ["ALL"]
        assert sc.seccomp_profile.type == "RuntimeDefault"  # kept by a 1.20 server
        agent = apps.read_namespaced_daemon_set("thaw-agent", namespace)
        assert agent.spec.template.spec.host_pid is True
        pdb = control_plane.kubectl(
            "get", "poddisruptionbudgets.v1beta1.policy", "-n", namespace, "-o", "name"
        ).stdout
        assert "thaw-webhook" in pdb
        mwc_names = [
            d["metadata"]["name"] for d in docs if d["kind"] == "MutatingWebhookConfiguration"
        ]
        mwc = client.AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration(
            mwc_names[0]
        )
        assert mwc.webhooks[0].failure_policy == "Ignore"
        assert mwc.webhooks[0].reinvocation_policy == "IfNeeded"
    finally:
        without_crd = "\n---\n".join(
            yaml.safe_dump(d) for d in docs if d["kind"] != "CustomResourceDefinition"
        )
        control_plane.kubectl("delete", "--wait=false", "-f", "-", input=without_crd, check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_install_on_the_live_server(control_plane, snapshot_crd):
    """`helm install` (no --kube-version): capabilities come from the real server."""
    namespace = "thaw-helm"
    args = ["--kubeconfig", str(control_plane.kubeconfig), "--namespace", namespace]
    result = helm(
        "install", "thaw", str(CHART), *args, "--create-namespace", "--skip-crds", check=False
    )
    try:
        assert result.returncode == 0, result.stderr
        assert f'{contract.LABEL_ENABLED}: "{contract.LABEL_ENABLED_VALUE}"' in result.stdout
        manifest = helm("get", "manifest", "thaw", *args).stdout
        kinds = {(d["apiVersion"], d["kind"]) for d in _docs(manifest)}
        assert ("policy/v1beta1", "PodDisruptionBudget") in kinds
        assert ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") in kinds
    finally:
        helm("uninstall", "thaw", *args, check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_snapshot_printer_columns(control_plane, api_client, snapshot_crd, namespace):
    from kubernetes import client

    snapshot = {
        "apiVersion": contract.CRD_API_VERSION,
        "kind": contract.CRD_KIND,
        "metadata": {"name": "demo-snap", "namespace": namespace},
        "spec": {contract.SPEC_KEY: "v1-0123456789abcdef", contract.SPEC_ARTIFACT: "demo-snap"},
    }
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(snapshot))
    status = {
        "status": {
            contract.STATUS_PHASE: contract.Phase.READY.value,
            contract.STATUS_NODE: "gpu-node-1",
            contract.STATUS_SIZE_BYTES: 4096,
        }
    }
    custom = client.CustomObjectsApi(api_client)
    coords = (contract.CRD_GROUP, contract.CRD_VERSION, namespace, contract.CRD_PLURAL)
    custom.patch_namespaced_custom_object_status(*coords, "demo-snap", status)

    table = control_plane.kubectl("get", "snapshots", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "KEY", "SIZE", "NODE", "AGE"]
    row = table[1].split()
    assert row[:5] == ["demo-snap", "Ready", "v1-0123456789abcdef", "4096", "gpu-node-1"]

    # With the status subresource, writes to the main endpoint cannot change status.
    obj = custom.get_namespaced_custom_object(*coords, "demo-snap")
    obj["status"] = {contract.STATUS_PHASE: contract.Phase.FAILED.value}
    custom.replace_namespaced_custom_object(*coords, "demo-snap", obj)
    assert custom.get_namespaced_custom_object(*coords, "demo-snap")["status"] == status["status"]


def test_crd_schema_rejects_invalid_snapshots(control_plane, snapshot_crd, namespace):
    missing_key = {
        "apiVersion": contract.CRD_API_VERSION,
        "kind": contract.CRD_KIND,
        "metadata": {"name": "no-key", "namespace": namespace},
        "spec": {contract.SPEC_ARTIFACT: "x"},
    }
    # --validate=false: the server's structural schema must reject it, not kubectl.
    result = control_plane.kubectl(
        "create", "--validate=false", "-f", "-", input=yaml.safe_dump(missing_key), check=False
    )
    assert result.returncode != 0
    assert "spec.key: Required value" in result.stderr
