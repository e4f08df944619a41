"""When a failed checkpoint is tried again, and when it is not.

A dump can fail for a passing reason (a worker busy in a syscall CRIU cannot
interrupt, a short disk hiccup); the worker serves on in between, since CRIU
resumed it. What only a person can fix fails the same way every time and is
not retried: a refused agent, bad names or keys, a full store, an unwrapped
worker, and a CRIU killed by a signal (the OOM killer or an operator: dumping
again freezes the worker for the same end).
"""

from __future__ import annotations

import threading
import time

from agent.store import StoreError

ATTEMPTS = 3  # dumps tried per pod before checkpoint-complete says ok: false
BACKOFF_S = (5.0, 20.0, 60.0)  # wait before the 2nd, 3rd, ... attempt
_FINAL = ("no space left", "invalid snapshot", "is the command wrapped", "was killed by sig")


def retryable(error: Exception) -> bool:
    """Could another attempt go better?"""
    text = str(error).lower()
    return not (isinstance(error, StoreError) or any(s in text for s in _FINAL))


class Retries:
    """Failed attempts and next attempt times, per pod uid (thread-safe)."""

    def __init__(self, attempts: int = ATTEMPTS, backoff_s: tuple[float, ...] = BACKOFF_S) -> None:
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s or (0.0,)
        self._failed: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, uid: str, error: Exception, final: bool = False) -> tuple[int, float | None]:
        """(attempts so far, seconds until the next one); None: this was the last one."""
        with self._lock:
            n = self._failed.get(uid, 0) + 1
            self._failed[uid] = n
            if final or n >= self.attempts or not retryable(error):
                self._retry_at.pop(uid, None)
                return n, None
            delay = self.backoff_s[min(n - 1, len(self.backoff_s) - 1)]
            self._retry_at[uid] = time.monotonic() + delay
            return n, delay

    def succeeded(self, uid: str) -> None:
        with self._lock:
            self._retry_at.pop(uid, None)
            self._failed.pop(uid, None)

    def waiting(self, uid: str) -> bool:
        """A retry is scheduled (the pod's task is not done)."""
        with self._lock:
            return uid in self._retry_at

    def backing_off(self, uid: str) -> bool:
        """A retry is scheduled and its time has not come."""
        with self._lock:
            return time.monotonic() < self._retry_at.get(uid, 0.0)
