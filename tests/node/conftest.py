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
from node_support import TIMINGS, record  # noqa: E402


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
        paths, images = cluster.prepare()
    except Exception as exc:  # a failed download or build is a failure, not a skip
        pytest.fail(f"preparing the node (install.sh, images.py) failed: {exc}", pytrace=False)
    record("install_and_images_s", time.monotonic() - t0)
    return paths, images


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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("single-node cluster timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k:32s} {v:8.2f}")
