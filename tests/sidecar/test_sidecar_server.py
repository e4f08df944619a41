"""``thaw sidecar run``: readiness over real HTTP on loopback, driven by control files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from sidecar.server import EngineUrls, Phase, Sidecar
from thaw.contract import SIDECAR_READY_PATH, Signal

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def start_sidecar(sidecar: Sidecar) -> tuple[web.AppRunner, int, asyncio.Task]:
    runner = web.AppRunner(sidecar.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, asyncio.create_task(sidecar.watch(0.01))


async def http(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}") as r,
    ):
        return r.status, await r.text()


async def until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_checkpoint_mode_ready_only_after_checkpoint(tmp_path: Path) -> None:
    sc = Sidecar(tmp_path, "checkpoint")
    runner, port, task = await start_sidecar(sc)
    try:
        status, body = await http(port, SIDECAR_READY_PATH)
        assert status == 503 and json.loads(body)["phase"] == "waiting-for-engine"
        (tmp_path / Signal.READY_FOR_CHECKPOINT.value).write_text("{}")
        await until(lambda: sc.phase == Phase.CHECKPOINTING)
        assert (await http(port, SIDECAR_READY_PATH))[0] == 503
        (tmp_path / Signal.CHECKPOINT_COMPLETE.value).write_text('{"snapshot": "s"}')
        await until(lambda: sc.ready)
        status, body = await http(port, SIDECAR_READY_PATH)
        assert status == 200 and json.loads(body)["phase"] == "serving"
        _, metrics = await http(port, "/metrics")
        assert "thaw_sidecar_ready 1.0" in metrics
        assert 'thaw_sidecar_seconds{step="checkpoint"}' in metrics
        assert 'thaw_sidecar_phase{phase="serving"} 1.0' in metrics
    finally:
        task.cancel()
        await runner.cleanup()


async def test_restore_mode_complete_and_failed(tmp_path: Path) -> None:
    ok_dir, fail_dir = tmp_path / "ok", tmp_path / "fail"
    ok_dir.mkdir()
    fail_dir.mkdir()
    restored, failed = Sidecar(ok_dir, "restore"), Sidecar(fail_dir, "restore")
    assert restored.phase == Phase.RESTORING and not restored.ready
    (ok_dir / Signal.RESTORE_REQUESTED.value).write_text("{}")
    (ok_dir / Signal.RESTORE_COMPLETE.value).write_text('{"pid": 7}')
    (fail_dir / Signal.RESTORE_FAILED.value).write_text("driver mismatch")
    async with aiohttp.ClientSession() as s:
        await restored.step(s)
        await failed.step(s)
    assert restored.ready and restored.detail["pid"] == 7 and "restore_s" in restored.detail
    # No engine health URL: a cold start is as ready as the engine's own probe says.
    assert failed.ready and failed.detail["message"] == "driver mismatch"


async def test_drives_engine_sleep_and_wake(tmp_path: Path) -> None:
    """An unmodified engine with vLLM-style endpoints: sleep when warm, wake after."""
    calls: list[str] = []
    warm = asyncio.Event()

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if warm.is_set() else 503)

    async def record(req: web.Request) -> web.Response:
        calls.append(req.path)
        return web.Response(text="ok")

    engine = web.Application()
    engine.router.add_get("/health", health)
    engine.router.add_post("/sleep", record)
    engine.router.add_post("/wake_up", record)
    erunner = web.AppRunner(engine)
    await erunner.setup()
    eport = free_port()
    await web.TCPSite(erunner, "127.0.0.1", eport).start()
    base = f"http://127.0.0.1:{eport}"
    sc = Sidecar(
        tmp_path, "checkpoint", EngineUrls(f"{base}/health", f"{base}/sleep", f"{base}/wake_up")
    )
    runner, _, task = await start_sidecar(sc)
    try:
        await asyncio.sleep(0.1)
        assert calls == [] and not (tmp_path / Signal.READY_FOR_CHECKPOINT.value).exists()
        warm.set()
        await until(lambda: (tmp_path / Signal.READY_FOR_CHECKPOINT.value).exists())
        assert calls == ["/sleep"] and not sc.ready
        (tmp_path / Signal.CHECKPOINT_COMPLETE.value).write_text("{}")
        await until(lambda: sc.ready)
        assert calls == ["/sleep", "/wake_up"]
    finally:
        task.cancel()
        await runner.cleanup()
        await erunner.cleanup()


def test_cli_serves_readiness(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thaw.cli", "sidecar", "run", "--host", "127.0.0.1",
         "--port", str(port), "--mode", "restore", "--control-dir", str(tmp_path),
         "--poll", "0.02"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}{SIDECAR_READY_PATH}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get(url)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "sidecar never listened"
                time.sleep(0.05)
        assert status == 503 and json.loads(body)["phase"] == "restoring"
        (tmp_path / Signal.RESTORE_COMPLETE.value).write_text('{"pid": 1}')
        deadline = time.monotonic() + 10
        while get(url)[0] != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
