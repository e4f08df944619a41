"""The MutatingWebhookConfiguration builder: valid for 1.30 and carrying every safety choice."""

from __future__ import annotations

import base64

import kubernetes_validate
import pytest

from thaw import contract
from webhook.configuration import mutating_webhook_configuration


def test_service_configuration():
    obj = mutating_webhook_configuration("thaw-system", ca_bundle=b"PEM")
    kubernetes_validate.validate(obj, "1.30", strict=True)
    (hook,) = obj["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5 and hook["admissionReviewVersions"] == ["v1"]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    (rule,) = hook["rules"]
    assert rule["operations"] == ["CREATE"] and rule["resources"] == ["pods"]
    assert hook["objectSelector"]["matchLabels"] == {
        contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE
    }
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "thaw-system"],
    }
    cc = hook["clientConfig"]
    assert cc["service"] == {
        "namespace": "thaw-system",
        "name": "thaw-webhook",
        "path": "/mutate",
        "port": 443,
    }
    assert base64.b64decode(cc["caBundle"]) == b"PEM"


def test_url_configuration_for_a_webhook_outside_the_cluster():
    obj = mutating_webhook_configuration("thaw", url="https://127.0.0.1:8443")
    kubernetes_validate.validate(obj, "1.30", strict=True)
    cc = obj["webhooks"][0]["clientConfig"]
    assert cc == {"url": "https://127.0.0.1:8443/mutate"}


def test_service_or_url_not_both():
    with pytest.raises(ValueError):
        mutating_webhook_configuration("thaw", service_name=None)
