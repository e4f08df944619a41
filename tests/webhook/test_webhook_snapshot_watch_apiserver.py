"""ClusterSnapshots against a real kube-apiserver: list, watch, resume, 410 re-list."""

from __future__ import annotations

import time

import pytest

from tests.support.kube_plane import api_client, install_crd, running_plane
from thaw import contract

pytestmark = pytest.mark.apiserver
KEY = "v2-" + "d" * 40
GVP = (contract.CRD_GROUP, contract.CRD_VERSION)


@pytest.fixture(scope="module")
def api(kube_plane):
    from kubernetes import client

    install_crd(kube_plane)
    api = api_client(kube_plane)
    for ns in ("ml", "other"):
        client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    yield api


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def create(api, ns, name, phase=None, key=KEY):
    from kubernetes import client

    co = client.CustomObjectsApi(api)
    body = {
        "apiVersion": contract.CRD_API_VERSION,
        "kind": contract.CRD_KIND,
        "metadata": {"name": name, "labels": {contract.LABEL_SNAPSHOT_KEY: key}},
        "spec": {contract.SPEC_KEY: key, contract.SPEC_ARTIFACT: name},
    }
    co.create_namespaced_custom_object(*GVP, ns, contract.CRD_PLURAL, body)
    if phase:
        set_phase(api, ns, name, phase)


def set_phase(api, ns, name, phase):
    from kubernetes import client

    co = client.CustomObjectsApi(api)
    obj = co.get_namespaced_custom_object(*GVP, ns, contract.CRD_PLURAL, name)
    obj["status"] = {contract.STATUS_PHASE: phase}
    co.replace_namespaced_custom_object_status(*GVP, ns, contract.CRD_PLURAL, name, obj)


def test_cache_follows_snapshots_and_recovers_from_410(api):
    from kubernetes import client

    from webhook.snapshots import ClusterSnapshots

    create(api, "ml", "a-listed", contract.Phase.READY)  # exists before the first list
    cache = ClusterSnapshots(api)
    cache.WATCH_TIMEOUT_S = 2  # several watch calls resume from resourceVersion
    cache.start()
    try:
        wait_for(lambda: cache.synced)
        assert cache.find_ready(KEY, "ml").name == "a-listed"

        create(api, "other", "elsewhere", contract.Phase.READY)
        create(api, "ml", "b-fresh", contract.Phase.CHECKPOINTING)
        time.sleep(2.5)  # past a watch timeout
        assert cache.find_ready(KEY, "ml").name == "a-listed"
        set_phase(api, "ml", "b-fresh", contract.Phase.READY)
        wait_for(lambda: cache.find_ready(KEY, "ml").name == "b-fresh")
        assert cache.find_ready(KEY, "other").name == "elsewhere"

        co = client.CustomObjectsApi(api)
        for name in ("b-fresh", "a-listed"):
            co.delete_namespaced_custom_object(*GVP, "ml", contract.CRD_PLURAL, name)
        wait_for(lambda: cache.find_ready(KEY, "ml") is None)

        lists = cache.lists
        cache.resource_version = "1"  # long compacted: the server answers 410 Gone
        wait_for(lambda: cache.lists > lists)
        assert cache.find_ready(KEY, "other").name == "elsewhere"
    finally:
        cache.stop()


def test_missing_crd_means_ready_with_no_snapshots(tmp_path):
    """Before the chart's CRD exists the webhook is ready and answers "no snapshot"."""
    from kubernetes import config

    from webhook.snapshots import ClusterSnapshots

    with running_plane(tmp_path / "bare") as plane:
        cache = ClusterSnapshots(config.new_client_from_config(config_file=str(plane.kubeconfig)))
        cache.start()
        try:
            wait_for(lambda: cache.synced)
            assert cache.find_ready(KEY, "ml") is None and cache.lists == 0
        finally:
            cache.stop()
