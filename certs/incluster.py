"""In-cluster self-signed mode: keep the Secret and the webhook's caBundle in step.

``reconcile`` reads the Secret, applies ``rotation.plan``, writes it back
with optimistic concurrency (resourceVersion) and sets ``caBundle`` on every
webhook of the MutatingWebhookConfiguration. Every function takes a
kubernetes ``ApiClient`` so tests can point it at a real API server.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

from certs import rotation

log = logging.getLogger(__name__)

SECRET_TYPE = "kubernetes.io/tls"


@dataclasses.dataclass(frozen=True)
class Result:
    secret_changed: bool
    ca_bundle_changed: bool
    why: str


def read_secret(api_client: Any, namespace: str, name: str) -> tuple[dict[str, bytes], dict] | None:
    """(decoded data, the raw object) or None when absent."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        raw = client.CoreV1Api(api_client).read_namespaced_secret(
            name, namespace, _preload_content=False
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    obj = json.loads(raw.data)
    data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    return data, obj


def write_secret(
    api_client: Any, namespace: str, name: str, data: dict[str, bytes], existing: dict | None
) -> None:
    """Create, or replace guarded by resourceVersion (a 409 means someone else won)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "thaw"},
            },
            "type": SECRET_TYPE,
            "data": encoded,
        }
        core.create_namespaced_secret(namespace, body)
        return
    body = dict(existing)
    body["data"] = encoded
    core.replace_namespaced_secret(name, namespace, body)


def patch_ca_bundle(api_client: Any, config_name: str, ca_bundle: bytes) -> bool:
    """Set caBundle on every webhook of the configuration; True if anything changed."""
    from kubernetes import client

    api = client.AdmissionregistrationV1Api(api_client)
    raw = api.read_mutating_webhook_configuration(config_name, _preload_content=False)
    obj = json.loads(raw.data)
    wanted = base64.b64encode(ca_bundle).decode()
    webhooks = obj.get("webhooks") or []
    if all((w.get("clientConfig") or {}).get("caBundle") == wanted for w in webhooks):
        return False
    for w in webhooks:
        w.setdefault("clientConfig", {})["caBundle"] = wanted
    # Replace (not a merge patch): webhooks is a list, and resourceVersion guards the write.
    api.replace_mutating_webhook_configuration(config_name, obj)
    return True


def reconcile(
    api_client: Any,
    namespace: str,
    secret_name: str,
    hosts: Sequence[str],
    webhook_config: str | None,
    now: dt.datetime | None = None,
) -> Result:
    found = read_secret(api_client, namespace, secret_name)
    current, existing = found if found else (None, None)
    step = rotation.plan(current, hosts, now)
    if step.changed:
        log.info("secret %s/%s: %s", namespace, secret_name, step.why)
        write_secret(api_client, namespace, secret_name, step.data, existing)
    bundle_changed = False
    if webhook_config:
        bundle_changed = patch_ca_bundle(api_client, webhook_config, step.ca_bundle)
        if bundle_changed:
            log.info("caBundle of %s updated", webhook_config)
    return Result(step.changed, bundle_changed, step.why)
