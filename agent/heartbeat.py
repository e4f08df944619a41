"""The agent's heartbeat in the store: how a restore step learns an agent serves its node.

The restore init step can read only the store (mounted read-only) and its own
control folder, and the agent cannot reach a pod's control folder before the
pod's worker container runs. So the agent keeps ``STORE/.agents/<node>.json``
fresh while restore pods are on its node; an init step that finds no fresh
beat for its node within ``THAW_AGENT_WAIT`` seconds cold-starts the pod at
once instead of waiting out the restore timeout. An agent with no restore
pods leaves the store as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from thaw.contract import AGENT_HEARTBEAT_DIR, AGENT_HEARTBEAT_S

log = logging.getLogger(__name__)


class Heartbeat:
    """One node's heartbeat file; ``beat(active)`` once per agent loop."""

    def __init__(self, store_root: Path, node: str) -> None:
        self.path = Path(store_root) / AGENT_HEARTBEAT_DIR / f"{node or 'local'}.json"
        self.node = node
        self._next = 0.0
        self._failed = False
        self._written = False  # the file exists

    def beat(self, active: bool) -> None:
        """Refresh the file (every AGENT_HEARTBEAT_S at most) while ``active``, else remove it."""
        if not active:
            self.stop()
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + AGENT_HEARTBEAT_S
        beat = {"node": self.node, "time": time.time(), "pid": os.getpid()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            if self.path.parent.is_symlink():
                raise OSError(f"{self.path.parent} is a symlink")
            self.path.parent.mkdir(mode=0o755, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o644)
            try:
                os.write(fd, json.dumps(beat).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._failed:
                log.warning("cannot write the agent heartbeat %s: %s", self.path, e)
            self._failed = True
            return
        self._failed = False
        self._written = True

    def stop(self) -> None:
        """Remove the file: restore steps stop waiting for this agent now."""
        self._next = 0.0  # the next restore pod gets a beat at once
        if not self._written:
            return
        self._written = False
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
            self.path.parent.rmdir()  # fails while another node's agent beats there: fine
