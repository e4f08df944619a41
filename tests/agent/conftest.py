"""Fixtures for the agent tests: real CRIU, real namespace containers, a real sample worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.workers import SEED, STATE_MB
from thaw import sample_worker


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
