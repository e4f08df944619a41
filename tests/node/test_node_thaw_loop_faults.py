"""Faults on the real node, on the session's release (after test_node_thaw_loop.py):

a corrupt artifact, the agent killed in the middle of a dump, the webhook gone.
Each must leave pods serving (cold if need be) and never publish a broken snapshot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import cluster
import pytest
import thaw_release as tr
from node_support import record

from thaw import contract
from thaw.sample_worker import expected_sha256

pytestmark = pytest.mark.node

BIG_STATE_MB = 512  # large enough that the dump takes a while to write


def scale_up_one(apps: Any, core: Any, app: str) -> tuple[float, set[str]]:
    """Add a replica; returns when that was asked and the pods that were there before."""
    before = {p.metadata.name for p in tr.pods_of(core, app)}
    replicas = apps.read_namespaced_deployment_scale(app, tr.NS).spec.replicas
    t0 = time.monotonic()
    apps.patch_namespaced_deployment_scale(app, tr.NS, {"spec": {"replicas": replicas + 1}})
    return t0, before


def new_pod(core: Any, app: str, before: set[str]) -> Any:
    def found() -> Any:
        new = [p for p in tr.pods_of(core, app) if p.metadata.name not in before]
        return new[0] if new else None

    return tr.wait("the new replica", found, 60)


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_artifact_falls_back_to_a_cold_start(
    node: cluster.Node, kube: Any, warm: tr.Warm
) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    folder = tr.store_root(node) / warm.snapshot["metadata"]["name"]
    pages = sorted(folder.rglob("pages-*.img"), key=lambda p: p.stat().st_size)
    assert pages, f"no pages-*.img in {folder}: {sorted(folder.rglob('*'))}"
    flip_byte(pages[-1])  # the biggest: the worker's state
    try:
        t0, before = scale_up_one(apps, core, warm.name)
        pod = new_pod(core, warm.name, before)
        name = pod.metadata.name
        assert pod.metadata.annotations[contract.ANNOTATION_INJECTED] == (
            contract.InjectedMode.RESTORE.value
        )

        def failed() -> list[str]:
            events = tr.pod_events(core, name)
            assert tr.RESTORED not in (r for r, _ in events), events
            return [m for r, m in events if r == tr.RESTORE_FAILED]

        messages = tr.wait("a RestoreFailed event", failed, 120, lambda: tr.pod_events(core, name))
        print(f"corrupt artifact: {name}: RestoreFailed: {messages[0]}")
        assert "checksum" in messages[0], messages
        assert pages[-1].name in messages[0], messages
        clock = tr.ReadyClock(core, warm.name, t0)
        tr.wait(
            "the cold-started replica Ready",
            lambda: clock.poll({name}),
            120,
            lambda: core.read_namespaced_pod(name, tr.NS).status,
        )
        record("cold_fallback_pod_create_to_ready_s", clock.ready_at[name])
        # The placeholder exec'd the original command: the worker is the container's PID 1
        # and built its state and warm-up itself.
        state, pid, warmup = tr.worker_facts(core, name)
        assert pid == 1
        assert state["sha256"] == expected_sha256("thaw", tr.STATE_MB)
        assert warmup["rounds"] == tr.WARMUP_ROUNDS
    finally:
        flip_byte(pages[-1])  # back as it was, for whatever runs next


def _container_cgroups(node: cluster.Node, container_id: str) -> list[Path]:
    """The container's cgroup in every v1 hierarchy under the node's cgroup root."""
    found = []
    for h in cluster.CGROUP_HIERARCHIES.iterdir():
        top = h / node.cgroup_root.lstrip("/")
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top) if Path(d).name == container_id]
    return found


def sigkill_container(node: cluster.Node, container_id: str) -> int:
    """SIGKILL every process of a container (its main process and every helper it started)."""
    cgroups = _container_cgroups(node, container_id)
    assert cgroups, f"no cgroup for container {container_id}"
    killed: set[int] = set()
    for _ in range(50):
        pids = set()
        for d in cgroups:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.02)
    raise AssertionError(f"container {container_id} keeps running processes")


def agent_status(pod: Any) -> Any:
    return next(c for c in pod.status.container_statuses if c.name == "agent")


def agent_pod(core: Any) -> Any:
    pods = core.list_namespaced_pod(tr.NAMESPACE).items
    agents = [p for p in pods if p.metadata.name.startswith(f"{tr.RELEASE}-agent-")]
    assert len(agents) == 1, [p.metadata.name for p in pods]
    return agents[0]


def test_agent_killed_mid_dump_publishes_nothing_and_recovers(
    node: cluster.Node, kube: Any, release: None
) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    store, staging_root = tr.store_root(node), tr.store_root(node) / contract.STORE_STAGING_DIR
    app = f"big-{uuid.uuid4().hex[:6]}"
    image = node.images["thaw-agent"]["ref"]
    apps.create_namespaced_deployment(
        tr.NS, tr.worker_deployment(app, image, state_mb=BIG_STATE_MB, rounds=0, seed=app)
    )
    try:
        source = tr.wait("the big worker's pod", lambda: tr.pods_of(core, app), 60)[0]
        key = source.metadata.annotations[contract.ANNOTATION_SNAPSHOT_KEY]
        agent = agent_pod(core)
        agent_cid = agent_status(agent).container_id.split("://", 1)[1]

        def dumping() -> tuple[str, int] | None:
            """(snapshot name, bytes written) once CRIU has started writing pages."""
            for d in staging_root.glob("*.*"):
                written = sum(p.stat().st_size for p in d.rglob("pages-*.img"))
                if written and ".deleted." not in d.name:
                    return d.name.rsplit(".", 1)[0], written
            return None

        # A tight loop, not tr.wait: CRIU writes pages at about 1 GB/s here, so the kill
        # must follow the first written bytes within milliseconds.
        deadline = time.monotonic() + 120
        while (found := dumping()) is None:
            assert time.monotonic() < deadline, tr.pod_events(core, source.metadata.name)
            time.sleep(0.005)
        killed_name, written = found
        t_kill = time.monotonic()
        n = sigkill_container(node, agent_cid)
        assert n >= 1
        assert written < BIG_STATE_MB << 20, "the dump was already complete when killed"
        assert not (store / killed_name).exists(), "published before the kill: raise the size"

        # The kubelet restarts the agent container; the new agent removes the dead writer's
        # staging folder and, seeing ready-for-checkpoint without checkpoint-complete, dumps
        # the source again under a new name.
        def redone() -> dict[str, Any] | None:
            mine = [s for s in tr.snapshots(custom) if s["spec"].get(contract.SPEC_KEY) == key]
            ok = [s for s in mine if tr.phase(s) == contract.Phase.READY.value]
            return ok[0] if ok else None

        snap = tr.wait(
            "a Ready snapshot from the restarted agent",
            redone,
            180,
            lambda: (tr.snapshots(custom), agent_pod(core).status),
        )
        record("agent_kill_to_snapshot_ready_s", time.monotonic() - t_kill)
        assert snap["metadata"]["name"] != killed_name
        assert agent_status(agent_pod(core)).restart_count >= 1
        assert int(snap["status"][contract.STATUS_SIZE_BYTES]) > BIG_STATE_MB << 20

        # The killed dump: never published, its staging folder gone, and its Snapshot marked
        # Failed by the restarted agent (it would otherwise say Checkpointing forever).
        assert not (store / killed_name).exists()
        assert not list(staging_root.glob(f"{killed_name}.*")), list(staging_root.iterdir())
        killed = [s for s in tr.snapshots(custom) if s["metadata"]["name"] == killed_name]
        assert [tr.phase(s) for s in killed] == [contract.Phase.FAILED.value], killed
        print(
            f"agent killed mid-dump: {killed_name} ({written} B of pages written) left as "
            f"{[tr.phase(s) for s in killed]}; redone as {snap['metadata']['name']}"
        )
        # The source kept (or got back) its worker and serves once the redo answered it.
        clock = tr.ReadyClock(core, app, time.monotonic())
        tr.wait(
            "the source pod Ready",
            lambda: clock.poll({source.metadata.name}),
            60,
            lambda: core.read_namespaced_pod(source.metadata.name, tr.NS).status,
        )
        state, pid, _ = tr.worker_facts(core, source.metadata.name)
        assert state["sha256"] == expected_sha256(app, BIG_STATE_MB)
        assert pid != 1
        pod = core.read_namespaced_pod(source.metadata.name, tr.NS)
        assert all(c.restart_count == 0 for c in pod.status.container_statuses), pod.status
    finally:
        apps.delete_namespaced_deployment(app, tr.NS)


def test_webhook_down_admits_pods_uninjected(kube: Any, warm: tr.Warm) -> None:
    """failurePolicy Ignore: with no webhook pod, labeled pods are admitted as they are."""
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    webhook = f"{tr.RELEASE}-webhook"

    def webhook_pods() -> list[str]:
        pods = core.list_namespaced_pod(tr.NAMESPACE).items
        return [p.metadata.name for p in pods if p.metadata.name.startswith(f"{webhook}-")]

    apps.patch_namespaced_deployment_scale(webhook, tr.NAMESPACE, {"spec": {"replicas": 0}})
    try:
        tr.wait("no webhook pod", lambda: not webhook_pods(), 60, webhook_pods)
        t0, before = scale_up_one(apps, core, warm.name)
        pod = new_pod(core, warm.name, before)
        name = pod.metadata.name
        assert contract.ANNOTATION_INJECTED not in (pod.metadata.annotations or {})
        assert [c.name for c in pod.spec.containers] == ["worker"]
        clock = tr.ReadyClock(core, warm.name, t0)
        tr.wait(
            "the uninjected replica Ready",
            lambda: clock.poll({name}),
            120,
            lambda: core.read_namespaced_pod(name, tr.NS).status,
        )
        record("uninjected_pod_create_to_ready_s", clock.ready_at[name])
        state, pid, warmup = tr.worker_facts(core, name)
        assert pid == 1  # the original command, as written, no wrapper
        assert state["sha256"] == expected_sha256("thaw", tr.STATE_MB)
        assert warmup["rounds"] == tr.WARMUP_ROUNDS
        assert not [r for r, _ in tr.pod_events(core, name) if r.startswith(("Restore", "Check"))]
    finally:
        apps.patch_namespaced_deployment_scale(webhook, tr.NAMESPACE, {"spec": {"replicas": 1}})
