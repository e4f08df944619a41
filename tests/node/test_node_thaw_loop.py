"""The whole product on the real node (release and warm Deployment: conftest):

helm install charts/thaw -> labeled Deployment -> webhook injects checkpoint mode -> agent
dumps the warm worker with CRIU -> Snapshot Ready -> scale to 3 -> webhook injects restore
mode -> agent restores; ``kubectl get snapshots`` shows the result.

The fault tests (test_node_thaw_loop_faults.py) run after these, on the same release.
"""

from __future__ import annotations

import time
from typing import Any

import cluster
import pytest
import thaw_release as tr
from node_support import record

from thaw import contract
from thaw.sample_worker import expected_sha256

pytestmark = pytest.mark.node


def test_checkpoint_then_restore_through_the_chart(kube: Any, warm: tr.Warm) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    snap = warm.snapshot
    assert int(snap["status"][contract.STATUS_SIZE_BYTES]) > tr.STATE_MB << 20  # the state
    cold_state, cold_pid, cold_warmup = tr.worker_facts(core, warm.first_pod)
    assert cold_warmup["rounds"] == tr.WARMUP_ROUNDS

    t0 = time.monotonic()
    apps.patch_namespaced_deployment_scale(warm.name, tr.NS, {"spec": {"replicas": 3}})
    clock = tr.ReadyClock(core, warm.name, t0)

    def restored_pods() -> list[Any]:
        new = [p for p in tr.pods_of(core, warm.name) if p.metadata.name != warm.first_pod]
        done = []
        for p in new:
            events = tr.pod_events(core, p.metadata.name)
            failed = [msg for reason, msg in events if reason == tr.RESTORE_FAILED]
            assert not failed, f"{p.metadata.name}: {failed}"
            if tr.RESTORED in (reason for reason, _ in events):
                done.append(p)
        return done if len(done) == 2 else []

    pods = tr.wait(
        "2 restored replicas",
        restored_pods,
        240,
        lambda: [
            (p.metadata.name, tr.pod_events(core, p.metadata.name))
            for p in core.list_namespaced_pod(tr.NS).items
        ],
    )
    record("scale_to_2_restored_s", time.monotonic() - t0)
    names = {p.metadata.name for p in pods}
    tr.wait("both restored replicas Ready", lambda: names <= set(clock.poll(names)), 120)
    record("restored_pod_create_to_ready_s", max(clock.ready_at[n] for n in names))
    for p in pods:
        assert p.metadata.annotations[contract.ANNOTATION_INJECTED] == (
            contract.InjectedMode.RESTORE.value
        )
        assert p.metadata.annotations[contract.ANNOTATION_SNAPSHOT] == snap["metadata"]["name"]
        # Inside the restored container (exec: API server -> kubelet -> containerd), the
        # worker holds the checkpointed memory and warm-up result, not a cold-started copy.
        state, pid, warmup = tr.worker_facts(core, p.metadata.name)
        assert state["sha256"] == expected_sha256("thaw", tr.STATE_MB) == cold_state["sha256"]
        assert warmup == cold_warmup
        assert pid != 1  # the restored tree, not the placeholder's cold exec
    assert cold_pid != 1  # checkpoint mode: the worker is the wrapper's child


def test_kubectl_get_snapshots_shows_phase_size_node(node: cluster.Node, warm: tr.Warm) -> None:
    """The CRD's printer columns through the real kubectl (1.20.2, from the build cache)."""
    out = tr.kubectl(node, "get", contract.CRD_PLURAL, "-n", tr.NS, "-o", "wide")
    header, *rows = out.strip().splitlines()
    columns = header.split()
    for col in ("NAME", "PHASE", "KEY", "SIZE", "NODE", "AGE"):
        assert col in columns, out
    by_name = {r.split()[0]: dict(zip(columns, r.split(), strict=False)) for r in rows}
    row = by_name.get(warm.snapshot["metadata"]["name"])
    assert row is not None, out
    assert row["PHASE"] == contract.Phase.READY.value
    assert row["KEY"] == warm.key
    assert int(row["SIZE"]) == int(warm.snapshot["status"][contract.STATUS_SIZE_BYTES])
    assert int(row["SIZE"]) > tr.STATE_MB << 20
    assert row["NODE"] == cluster.NODE_NAME
