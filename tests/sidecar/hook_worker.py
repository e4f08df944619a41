"""A tiny engine that uses sidecar.hooks; the tests run it as a real process.

Each callback appends a line to ``$EVENTS`` so the test can check the order;
the outcome is printed as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys

from sidecar import hooks

EVENTS = os.environ["EVENTS"]


def note(what: str) -> None:
    with open(EVENTS, "a") as f:
        f.write(what + "\n")


@hooks.quiesce
def _quiesce() -> None:
    note("quiesce")
    if os.environ.get("FAIL_QUIESCE"):
        raise RuntimeError("engine refused to quiesce")


@hooks.resume
def _resume() -> None:
    note("resume")


try:
    outcome = hooks.wait_for_checkpoint_or_restore(
        timeout_s=float(os.environ.get("TIMEOUT", "30")), poll_s=0.01
    )
except hooks.HookTimeout as e:
    print(json.dumps({"error": "timeout", "message": str(e)}))
    sys.exit(3)
except hooks.HookError as e:
    print(json.dumps({"error": "hook", "message": str(e)}))
    sys.exit(4)
note("serving")
print(json.dumps({"event": outcome.event, "ok": outcome.ok, "detail": outcome.detail}))
