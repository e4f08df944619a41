"""The MutatingWebhookConfiguration, built in one place.

The Helm chart mirrors this object and the API-server tests install it from
here, so what is tested is what ships. Choices, and why:

* ``failurePolicy: Ignore`` - thaw is an optimisation; a webhook outage must
  never stop pods from being created (they start cold instead).
* ``objectSelector`` on the opt-in label - the API server does not even call
  the webhook for other pods.
* ``namespaceSelector`` ``kubernetes.io/metadata.name NotIn`` kube-system and
  the webhook's own namespace - the webhook's own pods can never deadlock on
  it.
* ``reinvocationPolicy: IfNeeded`` - if a later webhook changes the pod, we
  are asked again; the already-injected check makes that a no-op.
* ``sideEffects: None`` and ``timeoutSeconds: 5`` - dry-run safe; a slow
  answer costs at most 5 s before the pod is admitted unchanged.
"""

from __future__ import annotations

import base64
from typing import Any

from thaw import contract
from webhook.config import ALWAYS_EXCLUDED_NAMESPACES

WEBHOOK_NAME = f"inject.{contract.DOMAIN}"
CONFIGURATION_NAME = "thaw-webhook"
MUTATE_PATH = "/mutate"
TIMEOUT_SECONDS = 5
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def client_config(
    *,
    ca_bundle: bytes | None = None,
    service: tuple[str, str] | None = None,
    service_port: int = 443,
    url: str | None = None,
) -> dict[str, Any]:
    """``service`` is (namespace, name); otherwise ``url`` (e.g. a loopback webhook)."""
    if (service is None) == (url is None):
        raise ValueError("exactly one of service or url is needed")
    cfg: dict[str, Any]
    if service is not None:
        ns, name = service
        cfg = {
            "service": {"namespace": ns, "name": name, "path": MUTATE_PATH, "port": service_port}
        }
    else:
        cfg = {"url": url.rstrip("/") + MUTATE_PATH if not url.endswith(MUTATE_PATH) else url}
    if ca_bundle:
        cfg["caBundle"] = base64.b64encode(ca_bundle).decode()
    return cfg


def mutating_webhook_configuration(
    own_namespace: str,
    *,
    ca_bundle: bytes | None = None,
    service_name: str | None = "thaw-webhook",
    service_port: int = 443,
    url: str | None = None,
    name: str = CONFIGURATION_NAME,
) -> dict[str, Any]:
    """The whole object, ready for ``create_mutating_webhook_configuration`` or YAML.

    Pass ``url`` instead of a service for a webhook outside the cluster.
    """
    service = (own_namespace, service_name) if url is None and service_name else None
    webhook = {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config(
            ca_bundle=ca_bundle, service=service, service_port=service_port, url=url
        ),
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "reinvocationPolicy": "IfNeeded",
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "objectSelector": {
            "matchLabels": {contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE},
        },
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": NAMESPACE_NAME_LABEL,
                    "operator": "NotIn",
                    "values": sorted({*ALWAYS_EXCLUDED_NAMESPACES, own_namespace}),
                }
            ]
        },
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "thaw"}},
        "webhooks": [webhook],
    }
