"""The snapshot cache when the API server goes away: the real server, a real kube-apiserver.

A private control plane (its API server is stopped mid-test, so it cannot be
the shared one). Checked: a cache that has listed keeps restoring from its
last state and /readyz says it is degraded but stays ready; a webhook that
never listed is not ready and admits auto-mode pods unchanged with
``snapshots-not-synced``; forced checkpoints never needed the cache.
"""

from __future__ import annotations

import copy
import re
import time

import pytest
from test_webhook_snapshot_watch_apiserver import create, wait_for
from webhook_support import load_case
from webhook_tls_server import generate_certs, post_json, request, running_webhook_process

from tests.support.kube_plane import api_client, install_crd, running_plane
from thaw import contract
from webhook.config import InjectConfig
from webhook.decision import decide
from webhook.snapshots import NoSnapshots

pytestmark = pytest.mark.apiserver
NS = "inference"  # the golden reviews' namespace


def pod_key(review: dict) -> str:
    request = review["request"]
    return decide(request["object"], request["namespace"], InjectConfig(), NoSnapshots()).key


def review(mode: str = "") -> dict:
    body = copy.deepcopy(load_case("checkpoint-native")["review"])
    if mode:
        body["request"]["object"]["metadata"].setdefault("annotations", {})[
            contract.ANNOTATION_MODE
        ] = mode
    return body


def decision(port, ca, body) -> str:
    status, out = post_json(port, ca, body)
    assert status == 200 and out["response"]["allowed"] is True
    return out["response"]["auditAnnotations"]["decision"]


def readyz(port, ca) -> tuple[int, str]:
    status, text = request(port, ca, "GET", "/readyz")
    return status, text.decode()


def test_outage_keeps_the_synced_cache_and_never_guesses_without_one(tmp_path):
    from kubernetes import client

    certs = generate_certs(tmp_path / "certs")
    ca = certs / "ca.crt"
    with running_plane(tmp_path / "plane") as plane:
        install_crd(plane)
        api = api_client(plane)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
        key = pod_key(review())
        create(api, NS, "llm-ready", contract.Phase.READY, key=key)
        kubeconfig = str(plane.kubeconfig)
        with running_webhook_process(certs, "--kubeconfig", kubeconfig) as (port, proc):
            wait_for(lambda: readyz(port, ca) == (200, "ready\n"), timeout=30)
            assert decision(port, ca, review()) == "restore-snapshot-ready"

            plane._terminate("kube-apiserver")  # the API server is gone from here on
            wait_for(lambda: "degraded" in readyz(port, ca)[1], timeout=30)
            status, text = readyz(port, ca)
            assert status == 200 and "snapshot cache stale" in text
            for _ in range(20):  # still answering, from the last synced state
                assert decision(port, ca, review()) == "restore-snapshot-ready"
            metrics = request(port, ca, "GET", "/metrics")[1].decode()
            stale = re.search(r"^thaw_webhook_snapshot_cache_stale_seconds (\S+)$", metrics, re.M)
            assert stale and float(stale.group(1)) > 0
            assert "thaw_webhook_snapshot_cache_synced 1.0" in metrics
            assert proc.poll() is None

            # A replica that starts during the outage has never listed.
            started = time.monotonic()
            with running_webhook_process(certs, "--kubeconfig", kubeconfig) as (port2, _):
                status, text = readyz(port2, ca)
                assert status == 503 and "snapshots not synced" in text
                assert decision(port2, ca, review()) == "snapshots-not-synced"
                assert decision(port2, ca, review("restore")) == "snapshots-not-synced"
                assert decision(port2, ca, review("checkpoint")) == "checkpoint-forced"
                metrics = request(port2, ca, "GET", "/metrics")[1].decode()
                assert "thaw_webhook_snapshot_cache_synced 0.0" in metrics
                assert time.monotonic() - started < 20, "answers must not wait for the cache"
