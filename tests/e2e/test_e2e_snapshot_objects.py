"""The Snapshot objects the agent writes, through the chart's CRD on a real API server.

A structural CRD schema prunes unknown fields silently, so a field the agent
sets but the CRD lacks would just vanish. Here the agent's own object and
status builders go through the real server and must come back whole, and the
webhook's watch cache (``ClusterSnapshots``) must index the result only once
it is Ready.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.kube import snapshot_object, status_patch
from agent.pods import PodRef
from thaw import contract

pytestmark = pytest.mark.apiserver


def test_agent_snapshot_objects_survive_the_crd(api_client, snapshot_crd, namespace):
    from kubernetes import client

    from webhook.snapshots import ClusterSnapshots

    custom = client.CustomObjectsApi(api_client)
    coords = (contract.CRD_GROUP, contract.CRD_VERSION, namespace, contract.CRD_PLURAL)
    key = "v1-" + "ab" * 20
    pod = PodRef(
        uid="1",
        namespace=namespace,
        name="llm-abc",
        mode=contract.InjectedMode.CHECKPOINT,
        init_pid=None,
        control=Path("/nonexistent"),
        container="server",
        key=key,
        image="registry.invalid/llm:1",
        node="gpu-1",
    )
    view = ClusterSnapshots(api_client)
    view.start()
    try:
        body = snapshot_object(pod, "llm-snap-a", "gpu-1")
        created = custom.create_namespaced_custom_object(*coords, body)
        assert created["spec"] == body["spec"], "the CRD pruned spec fields the agent sets"
        assert created["metadata"]["labels"] == body["metadata"]["labels"]

        pending = status_patch(contract.Phase.CHECKPOINTING, "gpu-1")
        custom.patch_namespaced_custom_object_status(*coords, "llm-snap-a", pending)
        ready = status_patch(
            contract.Phase.READY,
            "gpu-1",
            message="ok",
            summary={"bytes": 7 * 2**30, "seconds": {"dump": 3.25, "publish": 0.5}},
        )
        custom.patch_namespaced_custom_object_status(*coords, "llm-snap-a", ready)
        stored = custom.get_namespaced_custom_object(*coords, "llm-snap-a")
        assert stored["status"] == ready["status"], "the CRD pruned status fields the agent sets"

        deadline = time.monotonic() + 10
        found = None
        while time.monotonic() < deadline and found is None:
            found = view.find_ready(key, namespace)
            time.sleep(0.05)
        assert found is not None and found.name == "llm-snap-a"
        assert found.artifact == body["spec"][contract.SPEC_ARTIFACT]
        assert view.find_ready(key, "some-other-namespace") is None
    finally:
        view.stop()
