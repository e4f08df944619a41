"""The in-cluster pod source and sink, on real Kubernetes model objects and real cgroups.

(Against a real API server they are exercised by the cluster tests.)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from agent import procfs
from agent.kube import (
    KubePods,
    find_container_init,
    snapshot_object,
    status_patch,
    target_container,
)
from agent.local import start_checkpoint_pod, start_restore_pod
from agent.sandbox import Box
from tests.support.workers import worker_argv
from thaw import contract
from thaw.contract import InjectedMode, Phase, Signal


def _pod(uid: str, cid: str, mode: str = "checkpoint") -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="llm-0",
            namespace="ml",
            uid=uid,
            annotations={
                contract.ANNOTATION_INJECTED: mode,
                contract.ANNOTATION_SNAPSHOT_KEY: "key-1",
                contract.ANNOTATION_CONTAINER: "server",
            },
        ),
        spec=client.V1PodSpec(
            node_name="node-a",
            containers=[
                client.V1Container(name=contract.SIDECAR_CONTAINER, image="thaw"),
                client.V1Container(name="server", image="vllm:1"),
            ],
        ),
        status=client.V1PodStatus(
            container_statuses=[
                client.V1ContainerStatus(
                    name="server",
                    container_id=f"containerd://{cid}",
                    image="vllm:1",
                    image_id="",
                    ready=True,
                    restart_count=0,
                )
            ]
        ),
    )


def test_target_container_from_pod_object():
    assert target_container(_pod("u", "abc")) == ("server", "vllm:1", "abc")


def _cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[f.index("-") + 1] == "cgroup2":
            return Path(f[4])
    return None


@pytest.fixture
def pod_cgroup():
    """A real cgroup shaped like a kubelet's: .../pod<uid>/<container id>."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 mount")
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
    base = root / f"thaw-test-{uid[:8]}"
    leaf = base / f"pod{uid}" / cid
    leaf.mkdir(parents=True)
    yield uid, cid, leaf
    for d in (leaf, leaf.parent, base):
        for pid in (d / "cgroup.procs").read_text().split():  # move stragglers back out
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            os.rmdir(d)


@pytest.mark.criu
def test_pod_source_finds_container_init_by_cgroup(criu_ready, pod_cgroup, tmp_path):
    uid, cid, leaf = pod_cgroup
    box = Box([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "ctl", name="k")
    try:
        assert find_container_init(uid, cid) is None
        (leaf / "cgroup.procs").write_text(str(box.pid))
        assert find_container_init(uid, cid) == box.pid
        assert find_container_init(uid, "0" * 64) is None

        pods = KubePods(api_client=None, node="node-a", start=False)
        pods.apply("ADDED", _pod(uid, cid))
        (ref,) = pods.pods()
        assert (ref.uid, ref.namespace, ref.name, ref.mode) == (uid, "ml", "llm-0", "checkpoint")
        assert (ref.key, ref.image, ref.init_pid) == ("key-1", "vllm:1", box.pid)
        inside = os.path.realpath(contract.CONTROL_DIR).lstrip("/")  # /var/run -> /run
        assert ref.control == Path(f"/proc/{box.pid}/root") / inside
        # The control dir is reached through the container's own root.
        (tmp_path / "ctl" / Signal.READY_FOR_CHECKPOINT.value).write_text("{}")
        assert ref.has(Signal.READY_FOR_CHECKPOINT)
        pods.apply("DELETED", _pod(uid, cid))
        assert pods.pods() == []
    finally:
        box.stop()


@pytest.mark.criu
def test_restored_worker_joins_the_placeholders_cgroup(running_agent, local_root, pods, pod_cgroup):
    _uid, _cid, leaf = pod_cgroup
    src = start_checkpoint_pod(local_root, "src", worker_argv(), key="k-cg")
    pods.append(src)
    assert json.loads(src.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))["ok"]
    dst = start_restore_pod(local_root, "dst", worker_argv(), key="k-cg", request=False)
    pods.append(dst)
    (leaf / "cgroup.procs").write_text(str(dst.box.pid))
    (dst.control / Signal.RESTORE_REQUESTED.value).write_text("{}")
    done = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 60))
    cg = Path(f"/proc/{done['host_pid']}/cgroup").read_text()
    assert f"::/{leaf.relative_to(_cgroup2_root())}" in cg
    assert procfs.alive(done["host_pid"])


def test_snapshot_object_and_status_shape():
    from agent.pods import PodRef

    ref = PodRef("u", "ml", "llm-0", InjectedMode.CHECKPOINT, 1, Path("/x"), key="k", image="i")
    obj = snapshot_object(ref, "k-20260101-abc", "node-a")
    assert obj["apiVersion"] == contract.CRD_API_VERSION and obj["kind"] == contract.CRD_KIND
    assert obj["metadata"] == {
        "name": "k-20260101-abc",
        "namespace": "ml",
        "labels": {contract.LABEL_SNAPSHOT_KEY: "k"},
    }
    assert obj["spec"][contract.SPEC_ARTIFACT] == "k-20260101-abc"
    assert obj["spec"][contract.SPEC_SOURCE_POD] == "llm-0"
    patch = status_patch(Phase.READY, "node-a", summary={"bytes": 5, "seconds": {"a_s": 0.5}})
    assert patch["status"][contract.STATUS_PHASE] == "Ready"
    assert patch["status"][contract.STATUS_SIZE_BYTES] == 5
    assert patch["status"][contract.STATUS_NODE] == "node-a"
