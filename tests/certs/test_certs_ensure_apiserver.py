"""``thaw certs ensure`` against a real kube-apiserver: Secret, caBundle, leader election."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys

import pytest

from certs import incluster, lease, pki, rotation
from tests.support.kube_plane import api_client
from webhook.configuration import mutating_webhook_configuration

pytestmark = pytest.mark.apiserver
NS = "thaw-system"


@pytest.fixture(scope="module")
def plane(kube_plane):
    from kubernetes import client

    api = api_client(kube_plane)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
    client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
        mutating_webhook_configuration(NS)
    )
    yield kube_plane, api


def ensure(kubeconfig, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "thaw.cli",
            "certs",
            "ensure",
            "--kubeconfig",
            str(kubeconfig),
            "--webhook-config",
            "thaw-webhook",
            "--service",
            "thaw-webhook",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ca_bundle(api) -> bytes:
    from kubernetes import client

    mwc = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration("thaw-webhook")
    return base64.b64decode(mwc.webhooks[0].client_config.ca_bundle)


def test_ensure_creates_secret_and_ca_bundle_then_is_idempotent(plane):
    p, api = plane
    r = ensure(p.kubeconfig, "--secret", f"{NS}/webhook-tls", "--leader-elect")
    assert r.returncode == 0, r.stderr
    data, obj = incluster.read_secret(api, NS, "webhook-tls")
    assert obj["type"] == "kubernetes.io/tls"
    assert ca_bundle(api) == data["ca-bundle.crt"]
    assert pki.signed_by(data["tls.crt"], data["ca.crt"])
    assert pki.covers_hosts(data["tls.crt"], rotation.service_hosts("thaw-webhook", NS))

    r = ensure(p.kubeconfig, "--secret", f"{NS}/webhook-tls", "--leader-elect")
    assert r.returncode == 0 and "up to date" in r.stderr
    assert incluster.read_secret(api, NS, "webhook-tls")[0] == data


def test_reconcile_rotates_near_expiry_and_keeps_the_bundle(plane):
    _, api = plane
    first = incluster.reconcile(api, NS, "rotating", ["thaw-webhook.thaw-system.svc"], None)
    assert first.secret_changed
    before = incluster.read_secret(api, NS, "rotating")[0]
    later = pki.now_utc() + dt.timedelta(days=300)
    again = incluster.reconcile(api, NS, "rotating", ["thaw-webhook.thaw-system.svc"], None, later)
    after = incluster.read_secret(api, NS, "rotating")[0]
    assert again.secret_changed and again.why == "serving certificate near expiry"
    assert after["ca.crt"] == before["ca.crt"] and after["tls.crt"] != before["tls.crt"]


def test_only_the_lease_holder_writes(plane):
    p, api = plane
    assert lease.try_acquire(api, NS, "held", "someone-else", duration_s=300)
    r = ensure(p.kubeconfig, "--secret", f"{NS}/follower-tls", "--leader-elect", "--lease", "held")
    assert r.returncode == 0 and "not the leader" in r.stderr
    assert incluster.read_secret(api, NS, "follower-tls") is None
    # The holder renews; a stale lease is taken over.
    assert lease.try_acquire(api, NS, "held", "someone-else", duration_s=300)
    stale = pki.now_utc() + dt.timedelta(seconds=301)
    assert lease.try_acquire(api, NS, "held", "me", duration_s=300, now=stale)
    assert not lease.try_acquire(api, NS, "held", "someone-else", duration_s=300, now=stale)
