"""A real etcd + kube-apiserver for tests outside ``tests/e2e`` (marker ``apiserver``).

One wrapper around the end-to-end suite's launcher (binaries from
scripts/build-kube.sh), used by the session fixture ``kube_plane`` in
``tests/conftest.py`` and by tests that need a private plane (one without the
CRD, or one whose API server they stop). Missing binaries skip the test,
unless THAW_REQUIRE_E2E is set, where they fail it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "charts" / "thaw" / "crds" / "snapshots.thaw.dev.yaml"
_E2E = str(REPO / "tests" / "e2e")
if _E2E not in sys.path:  # the launcher imports its sibling kube_pki as a top-level module
    sys.path.append(_E2E)

from kube_control_plane import ControlPlane, kube_bin_dir, missing_binaries  # noqa: E402

__all__ = ["CRD_FILE", "ControlPlane", "api_client", "install_crd", "running_plane"]


def require_binaries() -> Path:
    bin_dir = kube_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        reason = f"Kubernetes binaries {missing} not in {bin_dir}; run scripts/build-kube.sh"
        if os.environ.get("THAW_REQUIRE_E2E"):
            pytest.fail(reason)
        pytest.skip(reason)
    return bin_dir


@contextlib.contextmanager
def running_plane(work: Path) -> Iterator[ControlPlane]:
    """A started control plane in ``work``; every component is stopped afterwards."""
    plane = ControlPlane(require_binaries(), work)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


def api_client(plane: ControlPlane):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(plane.kubeconfig))


def install_crd(plane: ControlPlane, timeout_s: float = 30) -> None:
    """The chart's Snapshot CRD, applied and Established (idempotent)."""
    from kubernetes import client

    from thaw import contract

    plane.kubectl("apply", "-f", str(CRD_FILE))
    ext = client.ApiextensionsV1Api(api_client(plane))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(contract.CRD_NAME)
        if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
            return
        time.sleep(0.1)
    raise AssertionError(f"{contract.CRD_NAME} never became Established")
