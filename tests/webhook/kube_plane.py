"""A real etcd + kube-apiserver for this folder's ``apiserver`` tests.

Reuses the end-to-end suite's control-plane launcher (binaries from
scripts/build-kube.sh); skips when they are missing unless THAW_REQUIRE_E2E.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
CRD_FILE = (
    Path(__file__).resolve().parents[2] / "charts" / "thaw" / "crds" / "snapshots.thaw.dev.yaml"
)


def control_plane(work: Path) -> Iterator:
    sys.path.insert(0, str(E2E))
    from kube_control_plane import ControlPlane, kube_bin_dir, missing_binaries

    bin_dir = kube_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        reason = f"Kubernetes binaries {missing} not in {bin_dir}; run scripts/build-kube.sh"
        if os.environ.get("THAW_REQUIRE_E2E"):
            pytest.fail(reason)
        pytest.skip(reason)
    plane = ControlPlane(bin_dir, work)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


running_plane = contextlib.contextmanager(control_plane)
