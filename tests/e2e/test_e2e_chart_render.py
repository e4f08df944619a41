"""The Helm chart, rendered by real ``helm`` and checked without a cluster.

* ``helm lint`` passes and values.schema.json rejects bad values;
* every rendered object validates strictly (unknown fields are errors) against
  the Kubernetes 1.29-1.33 OpenAPI schemas (``kubernetes-validate``);
* the MutatingWebhookConfiguration equals the one ``webhook.configuration``
  builds, the CRD's schema uses the contract's field names, and the container
  arguments parse with the real ``thaw`` CLI parser - so chart and code cannot
  drift apart silently;
* only the agent is privileged; RBAC is scoped by resource name where it can be.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from chart_render import CHART, NAMESPACE, RELEASE, by_kind, helm, one, render

from thaw import contract
from webhook import configuration

VALIDATED_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
VALUE_SETS = {
    "defaults": {},
    "cert-manager": {"certificates.certManager.enabled": "true"},
    "cert-manager-issuer": {
        "certificates.certManager.enabled": "true",
        "certificates.certManager.issuerRef.name": "corp-ca",
        "certificates.certManager.issuerRef.kind": "ClusterIssuer",
    },
    "single-node": {
        "webhook.replicas": "1",
        "store.type": "hostPath",
        "agent.runtimeClassName": "nvidia",
        "agent.signingKey.secretName": "thaw-signing",
        "webhook.logLevel": "debug",
        "agent.logLevel": "debug",
    },
    "no-agent": {"agent.enabled": "false", "store.pvc.create": "false"},
}
# Kinds from other projects' CRDs have no schema in kubernetes-validate.
FOREIGN_GROUPS = ("cert-manager.io/",)


# --- lint and values schema ---------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_passes(values):
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "key,value",
    [
        ("webhook.timeoutSeconds", "11"),
        ("webhook.timeoutSeconds", "0"),
        ("webhook.sidecarMode", "sideways"),
        ("webhook.replicas", "0"),
        ("store.type", "nfs"),
        ("webhook.unknownKnob", "1"),
        ("image.repository", ""),
    ],
)
def test_values_schema_rejects_bad_values(key, value):
    result = helm("template", RELEASE, str(CHART), "--set", f"{key}={value}", check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower() or "values don't meet" in result.stderr


def test_timeout_default_is_five_seconds():
    mwc = one(render(), "MutatingWebhookConfiguration")
    assert mwc["webhooks"][0]["timeoutSeconds"] == 5


# --- strict validation for current Kubernetes versions ------------------------------


@pytest.mark.parametrize("version", VALIDATED_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_manifests_validate_strictly(version, values):
    docs = render(version, values)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(FOREIGN_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {e}")
        checked += 1
    assert checked >= 8


def test_pdb_api_version_follows_the_cluster():
    assert one(render("1.20.2"), "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert one(render("1.29.0"), "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_pdb_only_with_more_than_one_replica():
    assert by_kind(render(values={"webhook.replicas": "1"}), "PodDisruptionBudget") == []
    pdb = one(render(values={"webhook.replicas": "3"}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


# --- chart == code ------------------------------------------------------------------


def test_webhook_configuration_matches_webhook_code():
    docs = render()
    mwc = one(docs, "MutatingWebhookConfiguration")
    service = one(docs, "Service")
    expected = configuration.mutating_webhook_configuration(
        NAMESPACE,
        service_name=service["metadata"]["name"],
        service_port=service["spec"]["ports"][0]["port"],
        name=mwc["metadata"]["name"],
    )
    assert mwc["apiVersion"] == expected["apiVersion"]
    assert mwc["kind"] == expected["kind"]
    assert mwc["webhooks"] == expected["webhooks"]
    webhook = mwc["webhooks"][0]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["rules"][0]["operations"] == ["CREATE"]
    assert "caBundle" not in webhook["clientConfig"]


def test_extra_excluded_namespaces_are_added():
    mwc = one(
        render(values={"webhook.excludeNamespaces": "{gpu-ops,kube-system}"}),
        "MutatingWebhookConfiguration",
    )
    values = mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert values == sorted({"gpu-ops", "kube-system", NAMESPACE})


def test_cert_manager_mode_injects_ca_and_drops_self_signed_writer():
    docs = render(values=VALUE_SETS["cert-manager"])
    mwc = one(docs, "MutatingWebhookConfiguration")
    cert = one(docs, "Certificate")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{cert['metadata']['name']}"
    )
    deployment = one(docs, "Deployment")
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["webhook"]
    tls = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == cert["spec"]["secretName"]
    assert "optional" not in tls["secret"]
    role = next(r for r in by_kind(docs, "Role"))
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]
    service = one(docs, "Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]


def test_crd_schema_uses_contract_names():
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == contract.CRD_NAME
    assert crd["spec"]["group"] == contract.CRD_GROUP
    assert crd["spec"]["names"]["kind"] == contract.CRD_KIND
    assert crd["spec"]["names"]["plural"] == contract.CRD_PLURAL
    [version] = crd["spec"]["versions"]
    assert version["name"] == contract.CRD_VERSION
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    # Every SPEC_* / STATUS_* name of the contract, so a new field cannot be forgotten here
    # (the API server would silently prune it).
    names = vars(contract)
    spec_fields = {v for k, v in names.items() if k.startswith("SPEC_") and isinstance(v, str)}
    status_fields = {v for k, v in names.items() if k.startswith("STATUS_") and isinstance(v, str)}
    assert {contract.SPEC_KEY, contract.SPEC_ARTIFACT} <= spec_fields
    assert set(schema["spec"]["properties"]) == spec_fields
    assert set(schema["status"]["properties"]) == status_fields
    assert schema["status"]["properties"][contract.STATUS_PHASE]["enum"] == [
        p.value for p in contract.Phase
    ]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": f".status.{contract.STATUS_PHASE}",
        "Key": f".spec.{contract.SPEC_KEY}",
        "Size": f".status.{contract.STATUS_SIZE_BYTES}",
        "Node": f".status.{contract.STATUS_NODE}",
        "Age": ".metadata.creationTimestamp",
    }


def _container_args(docs: list[dict], kind: str) -> dict[str, list[str]]:
    pod = one(docs, kind)["spec"]["template"]["spec"]
    return {c["name"]: c["args"] for c in pod["containers"]}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_webhook_pod_arguments_parse_with_the_thaw_cli(values):
    from thaw.cli import build_parser

    for name, args in _container_args(render(values=values), "Deployment").items():
        parsed = build_parser().parse_args(args)  # SystemExit on an unknown flag
        assert callable(parsed.func), name


@pytest.mark.parametrize("values", [VALUE_SETS["defaults"], VALUE_SETS["single-node"]])
def test_agent_pod_arguments_parse_with_the_thaw_cli(values):
    from thaw.cli import build_parser

    for args in _container_args(render(values=values), "DaemonSet").values():
        assert callable(build_parser().parse_args(args).func)


@pytest.mark.parametrize(
    "version,values,expected",
    [
        ("1.20.2", {}, "container"),
        ("1.28.5", {}, "container"),
        ("1.29.0", {}, "native"),
        ("1.33.0", {}, "native"),
        ("1.33.0", {"webhook.sidecarMode": "container"}, "container"),
    ],
)
def test_sidecar_mode_follows_the_cluster_version(version, values, expected):
    args = _container_args(render(version, values), "Deployment")["webhook"]
    assert f"--sidecar-mode={expected}" in args


def test_webhook_sidecar_image_is_the_chart_image():
    docs = render(values={"image.repository": "example/thaw", "image.tag": "9.9"})
    args = _container_args(docs, "Deployment")["webhook"]
    assert "--sidecar-image=example/thaw:9.9" in args
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "example/thaw:9.9"


# --- security -------------------------------------------------------------------------


def _pod_specs(docs: list[dict]) -> dict[str, dict]:
    return {
        d["kind"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
    }


def test_only_the_agent_is_privileged():
    pods = _pod_specs(render())
    webhook, agent = pods["Deployment"], pods["DaemonSet"]
    assert not webhook.get("hostPID") and not webhook.get("hostNetwork")
    assert webhook["securityContext"]["runAsNonRoot"] is True
    for c in webhook["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert "privileged" not in sc
        assert c["resources"]["requests"]
    assert agent["hostPID"] is True
    assert agent["containers"][0]["securityContext"]["privileged"] is True


def test_webhook_replicas_spread_across_nodes():
    webhook = _pod_specs(render())["Deployment"]
    term = webhook["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert one(render(), "Deployment")["spec"]["replicas"] == 2


def test_agent_mounts_what_checkpointing_needs():
    agent = _pod_specs(render())["DaemonSet"]
    host_paths = {v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    assert {"/var/lib/kubelet/pods", "/proc", "/dev", "/sys/fs/cgroup"} <= host_paths
    assert "/run/containerd/containerd.sock" in host_paths
    store = next(v for v in agent["volumes"] if v["name"] == "store")
    assert store["persistentVolumeClaim"]["claimName"] == contract.DEFAULT_STORE_CLAIM
    single = _pod_specs(render(values=VALUE_SETS["single-node"]))["DaemonSet"]
    assert single["runtimeClassName"] == "nvidia"
    store = next(v for v in single["volumes"] if v["name"] == "store")
    assert store["hostPath"]["path"] == "/var/lib/thaw/snapshots"
    signing = next(v for v in single["volumes"] if v["name"] == "signing-key")
    assert signing["secret"]["secretName"] == "thaw-signing"
    # The signing key is mounted into the agent only.
    webhook = _pod_specs(render(values=VALUE_SETS["single-node"]))["Deployment"]
    assert "thaw-signing" not in json.dumps(webhook)


def test_agent_settings_use_contract_names():
    agent = _pod_specs(render(values=VALUE_SETS["single-node"]))["DaemonSet"]
    container = agent["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.ENV_RETENTION_MAX_PER_KEY] == "3"
    assert env[contract.ENV_RETENTION_MAX_AGE_HOURS] == "168"
    assert env[contract.ENV_SIGNING_KEY_FILE] == "/etc/thaw/signing/signing.key"
    assert f"--store={contract.STORE_MOUNT_PATH}" in container["args"]
    assert "--learn-after=30" in container["args"]
    assert "--loader-standby=on" in container["args"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["store"] == contract.STORE_MOUNT_PATH
    default = _pod_specs(render())["DaemonSet"]["containers"][0]
    assert contract.ENV_SIGNING_KEY_FILE not in {e["name"] for e in default["env"]}


def test_rbac_is_scoped():
    docs = render()
    mwc_name = one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]
            assert "secrets" not in rule["resources"] or role["kind"] == "Role"
    webhook_cluster = next(
        r for r in by_kind(docs, "ClusterRole") if "webhook" in r["metadata"]["name"]
    )
    mwc_rule = next(
        r for r in webhook_cluster["rules"] if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert mwc_rule["resourceNames"] == [mwc_name]
    snap_rule = next(r for r in webhook_cluster["rules"] if "snapshots" in r["resources"])
    assert sorted(snap_rule["verbs"]) == ["get", "list", "watch"]
    role = one(docs, "Role")
    deployment = one(docs, "Deployment")
    secret = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    for rule in role["rules"]:
        if "secrets" in rule["resources"] and rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == [secret["secret"]["secretName"]]
    agent = next(r for r in by_kind(docs, "ClusterRole") if "agent" in r["metadata"]["name"])
    resources = {res for rule in agent["rules"] for res in rule["resources"]}
    assert resources == {"pods", "snapshots", "snapshots/status", "events"}


def test_labels_follow_kubernetes_conventions():
    for doc in render():
        if doc["kind"] == "CustomResourceDefinition":
            continue
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "thaw"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "app.kubernetes.io/version" in labels


def test_notes_name_the_one_label():
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert f'{contract.LABEL_ENABLED}: "{contract.LABEL_ENABLED_VALUE}"' in notes


def test_no_registry_host_is_hard_coded():
    values = (CHART / "values.yaml").read_text()
    for line in values.splitlines():
        if "repository:" in line:
            repo = line.split("repository:", 1)[1].strip()
            assert "." not in repo.split("/")[0], f"registry host in {line!r}"
