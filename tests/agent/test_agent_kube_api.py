"""The agent's Kubernetes side against a real kube-apiserver (marker ``apiserver``).

KubePods must follow the node's pods through list + watch; KubeSink must create
Snapshot objects, move their status through the phases and post Events. The
control plane comes from the binaries ``scripts/build-kube.sh`` caches (shared
helpers in tests/e2e); without them these tests skip, unless THAW_REQUIRE_E2E.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from kube_control_plane import ControlPlane, kube_bin_dir, missing_binaries

from agent.kube import KubePods, KubeSink
from agent.pods import PodRef
from thaw import contract
from thaw.contract import InjectedMode, Phase

pytestmark = pytest.mark.apiserver
CRD_FILE = (
    Path(__file__).resolve().parents[2] / "charts" / "thaw" / "crds" / "snapshots.thaw.dev.yaml"
)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    bin_dir = kube_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        reason = f"Kubernetes binaries {missing} not in {bin_dir} (scripts/build-kube.sh)"
        if os.environ.get("THAW_REQUIRE_E2E"):
            pytest.fail(reason)
        pytest.skip(reason)
    from kubernetes import client, config

    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("agent-control-plane"))
    plane.start()
    try:
        plane.kubectl("apply", "-f", str(CRD_FILE))
        api_client = config.new_client_from_config(config_file=str(plane.kubeconfig))
        ext = client.ApiextensionsV1Api(api_client)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            crd = ext.read_custom_resource_definition(contract.CRD_NAME)
            if any(
                c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
            ):
                break
            time.sleep(0.2)
        yield api_client
        api_client.close()
    finally:
        plane.stop()


@pytest.fixture
def namespace(api):
    from kubernetes import client

    name = f"agent-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def _pod(name: str, node: str, mode: str) -> dict:
    return {
        "metadata": {
            "name": name,
            "annotations": {
                contract.ANNOTATION_INJECTED: mode,
                contract.ANNOTATION_SNAPSHOT_KEY: "v1-abc",
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "server", "image": "vllm:1", "command": ["serve"]}],
        },
    }


def _eventually(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_pod_source_follows_this_nodes_pods(api, namespace):
    from kubernetes import client

    core = client.CoreV1Api(api)
    pods = KubePods(api, "node-a")
    try:
        core.create_namespaced_pod(namespace, _pod("mine", "node-a", "checkpoint"))
        core.create_namespaced_pod(namespace, _pod("other-node", "node-b", "checkpoint"))
        core.create_namespaced_pod(
            namespace, {**_pod("plain", "node-a", "x"), "metadata": {"name": "plain"}}
        )
        refs = _eventually(lambda: [r for r in pods.pods() if r.namespace == namespace])
        assert [(r.name, r.mode, r.key, r.image) for r in refs] == [
            ("mine", InjectedMode.CHECKPOINT, "v1-abc", "vllm:1")
        ]
        assert refs[0].init_pid is None  # no kubelet here: no container process yet
        core.delete_namespaced_pod("mine", namespace, grace_period_seconds=0)
        assert _eventually(lambda: not [r for r in pods.pods() if r.namespace == namespace])
    finally:
        pods.close()


def test_sink_drives_snapshot_status_and_events(api, namespace):
    from kubernetes import client

    co, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    pod = core.create_namespaced_pod(namespace, _pod("src", "node-a", "checkpoint"))
    ref = PodRef(
        pod.metadata.uid,
        namespace,
        "src",
        InjectedMode.CHECKPOINT,
        1,
        Path("/x"),
        container="server",
        key="v1-abc",
        image="vllm:1",
        node="node-a",
    )
    sink = KubeSink(api, "node-a")
    args = (contract.CRD_GROUP, contract.CRD_VERSION, namespace, contract.CRD_PLURAL)

    sink.checkpoint_started(ref, "v1-abc-1")
    obj = co.get_namespaced_custom_object(*args, "v1-abc-1")
    assert obj["spec"] == {
        contract.SPEC_KEY: "v1-abc",
        contract.SPEC_ARTIFACT: "v1-abc-1",
        contract.SPEC_IMAGE: "vllm:1",
        contract.SPEC_SOURCE_POD: "src",
    }
    assert obj["metadata"]["labels"] == {contract.LABEL_SNAPSHOT_KEY: "v1-abc"}
    assert obj["status"][contract.STATUS_PHASE] == Phase.CHECKPOINTING
    assert obj["status"][contract.STATUS_NODE] == "node-a"

    sink.checkpoint_ready(ref, "v1-abc-1", {"bytes": 12345, "seconds": {"criu_dump_s": 0.5}})
    status = co.get_namespaced_custom_object(*args, "v1-abc-1")["status"]
    assert status[contract.STATUS_PHASE] == Phase.READY
    assert status[contract.STATUS_SIZE_BYTES] == 12345

    sink.checkpoint_started(ref, "v1-abc-2")
    sink.checkpoint_failed(ref, "v1-abc-2", "process 7 exited during the checkpoint")
    status = co.get_namespaced_custom_object(*args, "v1-abc-2")["status"]
    assert status[contract.STATUS_PHASE] == Phase.FAILED
    assert "exited during the checkpoint" in status[contract.STATUS_MESSAGE]

    sink.restore_failed(ref, "v1-abc-1", "checksum mismatch")
    events = core.list_namespaced_event(namespace).items
    seen = {(e.reason, e.type, e.involved_object.name) for e in events}
    assert ("Checkpointing", "Normal", "src") in seen
    assert ("Checkpointed", "Normal", "src") in seen
    assert ("CheckpointFailed", "Warning", "src") in seen
    assert ("RestoreFailed", "Warning", "src") in seen


def test_restarted_agent_fails_its_nodes_unfinished_snapshots(api, namespace):
    """A dump cut off by an agent restart stays Checkpointing forever unless the next agent on
    that node says so; other nodes' dumps in flight are left alone."""
    from kubernetes import client

    co, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    args = (contract.CRD_GROUP, contract.CRD_VERSION, namespace, contract.CRD_PLURAL)
    for node in ("node-a", "node-b"):
        pod = core.create_namespaced_pod(namespace, _pod(f"src-{node}", node, "checkpoint"))
        ref = PodRef(
            pod.metadata.uid,
            namespace,
            f"src-{node}",
            InjectedMode.CHECKPOINT,
            1,
            Path("/x"),
            key="v1-abc",
            node=node,
        )
        KubeSink(api, node).checkpoint_started(ref, f"cut-{node}")

    assert KubeSink(api, "node-a").abandon_unfinished() == [f"{namespace}/cut-node-a"]
    a = co.get_namespaced_custom_object(*args, "cut-node-a")["status"]
    assert a[contract.STATUS_PHASE] == Phase.FAILED
    assert "agent stopped during this checkpoint" in a[contract.STATUS_MESSAGE]
    b = co.get_namespaced_custom_object(*args, "cut-node-b")["status"]
    assert b[contract.STATUS_PHASE] == Phase.CHECKPOINTING  # node-b's agent is still at it
    assert KubeSink(api, "node-a").abandon_unfinished() == []  # nothing left to mark
