"""Fixtures for the end-to-end tests against a real kube-apiserver (marker ``apiserver``).

One control plane per test session (etcd + kube-apiserver, plus
kube-controller-manager for the tests that need controllers), from the
binaries ``scripts/build-kube.sh`` caches. Without those binaries the tests
skip - unless ``THAW_REQUIRE_E2E`` is set (``make e2e`` and CI set it), where a
missing build is a failure, never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_control_plane import ControlPlane, kube_bin_dir, missing_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "thaw"
CRD_FILE = CHART / "crds" / "snapshots.thaw.dev.yaml"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = kube_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        reason = (
            f"Kubernetes binaries {missing} not found in {bin_dir}; "
            "build them with scripts/build-kube.sh (or `make e2e`)"
        )
        if os.environ.get("THAW_REQUIRE_E2E"):
            pytest.fail(f"THAW_REQUIRE_E2E is set but {reason}")
        pytest.skip(reason)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="session")
def controller_manager(control_plane: ControlPlane) -> ControlPlane:
    control_plane.start_controller_manager()
    return control_plane


@pytest.fixture(scope="session")
def snapshot_crd(control_plane: ControlPlane, api_client) -> dict:
    """The chart's Snapshot CRD, installed and Established."""
    import yaml
    from kubernetes import client

    crd = yaml.safe_load(CRD_FILE.read_text())
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    ext = client.ApiextensionsV1Api(api_client)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        obj = ext.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = {c.type: c.status for c in (obj.status.conditions or [])}
        if conditions.get("Established") == "True":
            return crd
        time.sleep(0.2)
    raise AssertionError("Snapshot CRD never became Established")


@pytest.fixture
def namespace(api_client) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects."""
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)
