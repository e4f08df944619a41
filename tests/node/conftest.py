"""Session fixture: one real single-node cluster (scripts/node/cluster.py) for all node tests.

Skips with the missing piece named when something essential is absent,
unless THAW_REQUIRE_NODE is set (``make e2e-node`` sets it): then a missing
piece is an error, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "node"))

import cluster  # noqa: E402
import thaw_release as tr  # noqa: E402
from node_support import TIMINGS, record  # noqa: E402

import images  # noqa: E402


def _cache() -> Path:
    return Path(os.environ.get("THAW_CACHE", Path.home() / ".cache" / "thaw"))


def missing_prerequisite() -> str | None:
    """Why this machine cannot run the node, or None."""
    if os.geteuid() != 0:
        return "the single-node cluster needs root (namespaces, cgroups, overlay mounts)"
    for tool in ("unshare", "nsenter", "ip", "tar", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    kube = _cache() / "kube-1.20.2" / "bin"
    binaries = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
    for name in (*binaries, "kube-proxy", "etcd"):
        if not (kube / name).is_file():
            return f"{kube / name} is missing: run scripts/build-kube.sh"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("THAW_REQUIRE_NODE"):
        pytest.fail(f"THAW_REQUIRE_NODE is set but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_images() -> tuple[cluster.Paths, dict[str, Any]]:
    reason = missing_prerequisite()
    if reason:
        _skip_or_fail(reason)
    t0 = time.monotonic()
    try:
        paths, built = cluster.prepare(images.IMAGE_NAMES)
    except Exception as exc:  # a failed download or build is a failure, not a skip
        pytest.fail(f"preparing the node (install.sh, images.py) failed: {exc}", pytrace=False)
    record("install_and_images_s", time.monotonic() - t0)
    return paths, built


@pytest.fixture(scope="session")
def node(node_images: tuple[cluster.Paths, dict[str, Any]]) -> Iterator[cluster.Node]:
    paths, images = node_images
    n = cluster.Node(paths, images)
    try:
        n.start()
    except BaseException:
        n.stop()
        raise
    for k, v in n.timings.items():
        record(k, v)
    yield n
    n.stop()
    leftovers = n.leftovers()
    assert not leftovers, f"the node left things behind: {leftovers}"


@pytest.fixture(scope="session")
def kube(node: cluster.Node) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(node.kubeconfig))


@pytest.fixture(scope="session")
def core(kube: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(kube)


@pytest.fixture(scope="session")
def release(node: cluster.Node, kube: Any) -> Iterator[None]:
    """One ``helm install`` of charts/thaw for every product test; uninstalled at the end."""
    import yaml
    from kubernetes import client

    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    values = node.tmp / "thaw-values.yaml"
    values.write_text(yaml.safe_dump(tr.chart_values(node)))
    t0 = time.monotonic()
    try:
        tr.helm(
            node,
            "install",
            tr.RELEASE,
            str(tr.CHART),
            "-n",
            tr.NAMESPACE,
            "--create-namespace",
            "-f",
            str(values),
        )

        def deployed() -> bool:
            dep = apps.read_namespaced_deployment(f"{tr.RELEASE}-webhook", tr.NAMESPACE)
            ds = apps.read_namespaced_daemon_set(f"{tr.RELEASE}-agent", tr.NAMESPACE)
            return bool(dep.status.ready_replicas) and bool(ds.status.number_ready)

        tr.wait(
            "the webhook and the agent to be Ready",
            deployed,
            240,
            lambda: core.list_namespaced_pod(tr.NAMESPACE).items,
        )
        record("helm_install_to_ready_s", time.monotonic() - t0)
        yield
    finally:
        tr.helm(node, "uninstall", tr.RELEASE, "-n", tr.NAMESPACE, check=False)


@pytest.fixture(scope="session")
def warm(node: cluster.Node, kube: Any, release: None) -> Iterator[tr.Warm]:
    """A labeled Deployment, checkpointed by the agent: its first pod and Ready Snapshot.

    Records the cold pod's create -> Ready time: warm-up, then the dump (the worker
    serves only once the agent has answered), then the readiness probe.
    """
    import uuid

    from kubernetes import client

    from thaw import contract

    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    name = f"warm-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    apps.create_namespaced_deployment(
        tr.NS, tr.worker_deployment(name, node.images["thaw-agent"]["ref"])
    )
    try:
        first = tr.wait("the first pod", lambda: tr.pods_of(core, name), 60)[0]
        injected = first.metadata.annotations.get(contract.ANNOTATION_INJECTED)
        assert injected == contract.InjectedMode.CHECKPOINT.value, first.metadata.annotations
        key = first.metadata.annotations[contract.ANNOTATION_SNAPSHOT_KEY]

        def ready_snapshot() -> dict[str, Any] | None:
            mine = [s for s in tr.snapshots(custom) if s["spec"].get(contract.SPEC_KEY) == key]
            phases = [tr.phase(s) for s in mine]
            assert contract.Phase.FAILED.value not in phases, (
                [s.get("status", {}).get(contract.STATUS_MESSAGE) for s in mine],
                tr.pod_events(core, first.metadata.name),
            )
            ready = [s for s in mine if tr.phase(s) == contract.Phase.READY.value]
            return ready[0] if ready else None

        snap = tr.wait(
            "a Ready Snapshot",
            ready_snapshot,
            240,
            lambda: tr.pod_events(core, first.metadata.name),
        )
        record("deploy_to_snapshot_ready_s", time.monotonic() - t0)
        clock = tr.ReadyClock(core, name, t0)
        tr.wait(
            "the checkpointed pod to be Ready",
            lambda: clock.poll({first.metadata.name}),
            120,
            lambda: core.read_namespaced_pod(first.metadata.name, tr.NS).status,
        )
        record("cold_pod_create_to_ready_s", clock.ready_at[first.metadata.name])
        yield tr.Warm(name, first.metadata.name, snap, key)
    finally:
        apps.delete_namespaced_deployment(name, tr.NS)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("single-node cluster timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k:40s} {v:8.2f}")
