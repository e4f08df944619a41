"""Fixtures every suite may use.

``kube_plane``: one real etcd + kube-apiserver per session, shared by the
``apiserver`` tests outside ``tests/e2e`` (which keeps its own, with the
controller manager). Tests that must not share one (no CRD, or an API
server they stop) use ``tests.support.kube_plane.running_plane``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def kube_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A started ``ControlPlane`` (imported lazily: unit runs never load the launcher)."""
    from tests.support.kube_plane import running_plane

    with running_plane(tmp_path_factory.mktemp("kube-plane")) as plane:
        yield plane
