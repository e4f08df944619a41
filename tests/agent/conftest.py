"""Fixtures for the agent tests: real CRIU, real namespace containers, a real sample worker."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]  # agent_helpers

from agent_helpers import SEED, STATE_MB  # noqa: E402

from thaw import sample_worker  # noqa: E402


@pytest.fixture(scope="session")
def criu_ready():
    """CRIU >= 4 (installed by `make install`); tests needing it skip only when not root."""
    if os.geteuid() != 0:
        pytest.skip("CRIU tests need root (CAP_SYS_ADMIN, ptrace, namespaces)")
    from agent import criu

    spec, version = criu.require(check_kernel=True)  # fails loudly if missing: not a skip
    return spec, version


@pytest.fixture(scope="session")
def expected_state() -> str:
    return sample_worker.expected_sha256(SEED, STATE_MB)


@pytest.fixture
def local_root(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("local"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running_agent(criu_ready, local_root):
    """A real agent (local pod source) serving ``local_root`` in a background thread."""
    from agent.local import start_agent

    agent = start_agent(local_root)
    yield agent
    agent.stop(wait=True)


@pytest.fixture
def pods():
    """Collects LocalPods started by a test and stops them all afterwards."""
    started: list = []
    yield started
    for p in started:
        p.stop()
