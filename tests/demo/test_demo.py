"""``make demo`` stays true: the whole local flow runs and restores the same state."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.criu
DEMO = (sys.executable, "-m", "thaw.cli", "demo")


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's CRIU part needs root")
def test_demo_checkpoints_and_restores_the_same_state():
    out = subprocess.run(
        [*DEMO, "--engine", "sample", "--state-mb", "32", "--warmup-rounds", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replica 1 -> mode=checkpoint" in out.stdout
    assert "replica 2 -> mode=restore snapshot=" in out.stdout
    assert "[thaw-restore] restore-requested" in out.stdout
    table = dict(
        (cells[1].strip(), cells[2].strip())
        for line in out.stdout.splitlines()
        if (cells := line.split("|")) and len(cells) == 4
    )
    assert table["restored state == source state"] == "yes"
    assert float(table["snapshot size"].split()[0]) > 32
    # times are seconds of this run, each under the test's own timeout
    for row in ("cold start (to warm)", "checkpoint (agent)", "restore (to first answer"):
        (value,) = [v for k, v in table.items() if k.startswith(row)]
        assert 0 < float(value.removesuffix(" s")) < 300, (row, value)


def table_of(stdout: str) -> dict[str, str]:
    return {
        cells[1].strip(): cells[2].strip()
        for line in stdout.splitlines()
        if (cells := line.split("|")) and len(cells) == 4
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's CRIU part needs root")
def test_demo_default_is_the_real_engine_restored_with_the_same_answer():
    """``make demo``: an unmodified `transformers serve` checkpointed and restored."""
    out = subprocess.run(list(DEMO), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replica 1 -> mode=checkpoint" in out.stdout
    assert "[sidecar] replica 1's probe passed" in out.stdout  # its own readinessProbe
    assert "replica 2 -> mode=restore snapshot=" in out.stdout
    table = table_of(out.stdout)
    assert table["same answer, byte for byte"] == "yes"
    cold = float(table["cold start (pod start to first completion)"].removesuffix(" s"))
    (restore,) = [v for k, v in table.items() if k.startswith("restore (to first completion")]
    assert 0 < float(restore.removesuffix(" s")) < cold
