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
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from webhook_support import load_case

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
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@contextlib.contextmanager
def webhook_in(
    certs: Path, log: Path, *extra: str, prefix: tuple[str, ...] = (), repo: Path = REPO
) -> Iterator[tuple[int, subprocess.Popen]]:
    """``thaw webhook serve`` from ``repo`` on an ephemeral port, log to a file (never a pipe
    that fills up under load); yields (port, process), SIGTERM afterwards."""
    port_file = certs.parent / f"port-{time.monotonic_ns()}"
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "thaw.cli",
        "webhook",
        "serve",
        "--listen=127.0.0.1:0",
        f"--tls-cert={certs / 'tls.crt'}",
        f"--tls-key={certs / 'tls.key'}",
        f"--port-file={port_file}",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=repo)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"webhook did not start (rc={proc.poll()}):\n{log.read_text()}")
            time.sleep(0.02)
        yield int(port_file.read_text()), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
