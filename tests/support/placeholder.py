"""A stand-in for a restore's placeholder container: a child process chrooted into a folder."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def chrooted(root: Path, timeout_s: float = 5.0) -> Iterator[int]:
    """A child whose ``/proc/PID/root`` is ``root`` (needs root); killed on exit."""
    pid = os.fork()
    if pid == 0:  # the placeholder: chrooted, waits to be killed
        try:
            os.chroot(root)
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + timeout_s
        while os.readlink(f"/proc/{pid}/root") != str(root) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield pid
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
