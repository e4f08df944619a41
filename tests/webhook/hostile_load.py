"""Helpers for hostile-load tests and ``bench/webhook_hostile.py``.

Heavy reviews (an opted-in pod padded to ~3 MiB with env entries), a real
memory cgroup (v1 or v2) the server process starts inside, and an aiohttp
load generator that records status and latency per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from webhook_support import load_case
from webhook_tls_server import running_webhook_process, status_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
REPO = Path(__file__).resolve().parents[2]


def small_review() -> dict[str, Any]:
    """An opted-in pod of a few KiB, as most admissions are."""
    review = copy.deepcopy(load_case("checkpoint-native")["review"])
    review["request"]["uid"] = str(uuid.uuid4())
    return review


def heavy_review(target_bytes: int = 3 * 1024 * 1024) -> dict[str, Any]:
    """An opted-in pod padded with env entries to about ``target_bytes`` of review JSON."""
    review = small_review()
    base = len(json.dumps(review))
    entry = len(json.dumps({"name": "E000000", "value": "v" * 8})) + 2
    count = max(1, (target_bytes - base) // entry)
    env = [{"name": f"E{i:06d}", "value": "v" * 8} for i in range(count)]
    review["request"]["object"]["spec"]["containers"][0]["env"] = env
    return review


class MemoryCgroup:
    """A child memory cgroup of this process's own, with a hard limit.

    cgroup v1 (``memory.limit_in_bytes``) or v2 (``memory.max``), whichever
    this machine mounts. Raises OSError when it cannot be created.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.v2 = not (CGROUP_ROOT / "memory").is_dir()
        own = _own_cgroup(self.v2)
        base = (CGROUP_ROOT if self.v2 else CGROUP_ROOT / "memory") / own.lstrip("/")
        self.path = base / f"thaw-webhook-{os.getpid()}-{time.monotonic_ns()}"
        self.path.mkdir()
        limit_file = "memory.max" if self.v2 else "memory.limit_in_bytes"
        (self.path / limit_file).write_text(str(limit_bytes))
        if not self.v2:
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        else:
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")

    def prefix(self) -> tuple[str, ...]:
        """Wraps a command so it joins the cgroup before it execs (no unlimited window)."""
        procs = self.path / "cgroup.procs"
        return ("sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh")

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text())
        return 0

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


def _own_cgroup(v2: bool) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "memory" in controllers.split(",")):
            return path
    raise OSError("no memory cgroup for this process")


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, from /proc."""
    return status_bytes(pid, "VmHWM")


def webhook_in(
    certs: Path, log: Path, *extra: str, prefix: tuple[str, ...] = (), repo: Path = REPO
) -> contextlib.AbstractContextManager[tuple[int, subprocess.Popen]]:
    """``thaw webhook serve`` from ``repo`` with its output in ``log``; yields (port, process)."""
    return running_webhook_process(certs, *extra, prefix=prefix, log=log, repo=repo)


@dataclasses.dataclass
class Result:
    status: int  # 0: no HTTP answer (connection dropped or timed out)
    seconds: float
    decision: str = ""
    retry_after: str = ""
    error: str = ""


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float = 60
) -> Result:
    started = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            data = await resp.read()
            decision = ""
            if resp.status == 200:
                decision = json.loads(data)["response"]["auditAnnotations"]["decision"]
            return Result(
                resp.status,
                time.perf_counter() - started,
                decision,
                resp.headers.get("Retry-After", ""),
            )
    except (aiohttp.ClientError, TimeoutError) as e:
        return Result(0, time.perf_counter() - started, error=f"{type(e).__name__}: {e}")


async def storm(port: int, ctx: ssl.SSLContext, body: bytes, count: int) -> list[Result]:
    """``count`` copies of ``body`` at once, each on its own TLS connection."""
    url = f"https://127.0.0.1:{port}/mutate"

    async def one() -> Result:
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await post(session, url, body)

    return await asyncio.gather(*(one() for _ in range(count)))


async def probe_while(
    port: int, ctx: ssl.SSLContext, body: bytes, busy: asyncio.Future, every_s: float = 0.05
) -> list[Result]:
    """Small reviews one after another on a kept-alive connection until ``busy`` is done."""
    url = f"https://127.0.0.1:{port}/mutate"
    out: list[Result] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        while not busy.done():
            out.append(await post(session, url, body, timeout_s=30))
            await asyncio.sleep(every_s)
    return out


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0
