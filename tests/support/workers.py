"""The sample worker as the agent and hardening tests run it (``thaw.sample_worker``)."""

from __future__ import annotations

import sys

STATE_MB = 64
SEED = "thaw-test"
MARKER = "/var/lib/thaw-test/marker"  # written by the worker into its container's rootfs


def worker_argv(state_mb: int = STATE_MB, seed: str = SEED) -> list[str]:
    return [
        sys.executable,
        "-m",
        "thaw.sample_worker",
        "--state-mb",
        str(state_mb),
        "--seed",
        seed,
        "--write-file",
        MARKER,
    ]
