"""Fixtures every suite may use.

``criu_ready``, ``pods``, ``agents``: real CRIU (as root), namespace "pods"
stopped after each test, and in-process agents over a local pods folder.

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


@pytest.fixture(scope="session")
def criu_ready():
    """CRIU >= 4 (installed by `make install`); tests needing it skip only when not root."""
    import os

    if os.geteuid() != 0:
        pytest.skip("CRIU tests need root (CAP_SYS_ADMIN, ptrace, namespaces)")
    from agent import criu

    return criu.require(check_kernel=True)  # fails loudly if missing: not a skip


@pytest.fixture
def pods():
    """Collects LocalPods started by a test and stops them all afterwards."""
    started: list = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def agents(criu_ready):
    """``start(root, store, steps=None)``: an in-process agent on its own thread; all stopped."""
    import threading
    from pathlib import Path

    from agent.daemon import Agent
    from agent.local import LocalPods, LocalSink
    from agent.store import Store

    running: list = []

    def start(root: Path, store, steps=None):
        store = store if isinstance(store, Store) else Store(store)
        agent = Agent(LocalPods(root), LocalSink(root), store, node="test", steps=steps)
        threading.Thread(target=agent.run, daemon=True).start()
        running.append(agent)
        return agent

    yield start
    for a in running:
        a.stop(wait=True)
