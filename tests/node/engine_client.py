"""An OpenAI-style chat client on the node's pod network, and a load loop for the dump.

Each client thread joins the node's network namespace once (pod IPs are only
routed there) and talks plain HTTP/1.1 with keep-alive, as a real client would:
an established connection is exactly what CRIU meets during the dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

PROMPT = "Name the capital of France in one word."


def chat_body(model: str, max_tokens: int = 24) -> bytes:
    """A greedy chat completion: the same answer every time from the same weights."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    ).encode()


def join_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path} failed")
    finally:
        os.close(fd)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a fresh thread inside the namespace; its result or its exception."""
    out: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            join_netns(path)
            out.append((True, fn()))
        except BaseException as e:
            out.append((False, e))

    t = threading.Thread(target=run, name="netns-call")
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def complete(conn: http.client.HTTPConnection, body: bytes) -> str:
    """One chat completion over ``conn``; the answer's text (raises on any non-200)."""
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return str(json.loads(data)["choices"][0]["message"]["content"])


def first_completion(netns: str, host: str, port: int, body: bytes, timeout: float) -> str:
    """Ask until the engine answers (connection refused while it starts); its answer."""

    def ask() -> str:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                return complete(conn, body)
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                last = e
                time.sleep(0.2)
            finally:
                conn.close()
        raise TimeoutError(f"no completion from {host}:{port} in {timeout:.0f}s: {last}")

    return in_netns(netns, ask)


@dataclasses.dataclass
class LoadResult:
    answers: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)

    @property
    def longest_s(self) -> float:
        return max(self.latencies, default=0.0)


class LoadLoop:
    """Keeps one keep-alive connection busy with completions until stopped.

    Every request must succeed: a request that meets the dump waits (the pause)
    and then completes; a failure or a wrong answer is recorded, never retried.
    """

    def __init__(self, netns: str, host: str, port: int, body: bytes) -> None:
        self.netns, self.host, self.port, self.body = netns, host, port, body
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-loop", daemon=True)

    def start(self) -> LoadLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        join_netns(self.netns)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    self.result.answers.append(complete(conn, self.body))
                except (OSError, RuntimeError, http.client.HTTPException) as e:
                    self.result.failures.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                self.result.latencies.append(time.monotonic() - t0)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(180)
        return self.result
