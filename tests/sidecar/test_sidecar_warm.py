"""The sidecar speaking for an unmodified engine: its probe says warm, the sidecar sleeps it,
announces the checkpoint, wakes it; and every wait ends with the pod serving.

The engine is a real aiohttp server (or a real TCP listener) on loopback; the agent's side
is played by writing the files the agent would write.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from engine_support import free_port, running_engine, tcp_listener

from sidecar.probe import ProbeRunner
from sidecar.server import EngineUrls, Limits, Phase, Sidecar
from thaw import contract
from thaw.contract import AbandonReason, Signal, WarmProbe

REPO = Path(__file__).resolve().parents[2]
FAST = {"period_s": 0.02, "timeout_s": 1}
VLLM = EngineUrls("", "/sleep?level=1", "/wake_up")


def probe(port: int, **kw) -> ProbeRunner:
    return ProbeRunner(WarmProbe(port, "http", "/health", **{**FAST, **kw}), "127.0.0.1")


async def run(sc: Sidecar, cond, timeout: float = 5.0) -> None:
    """Poll the sidecar until ``cond()`` holds (the watch loop, in the test's task)."""
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"never held; phase {sc.phase}"
            await sc.step(s)
            await asyncio.sleep(0.01)


async def steps(sc: Sidecar, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            await sc.step(s)
            await asyncio.sleep(0.01)


def signal_json(control: Path, sig: Signal) -> dict:
    return json.loads((control / sig.value).read_text())


def metric(sc: Sidecar, name: str, **labels: str) -> float | None:
    return sc.registry.get_sample_value(name, labels)


async def test_warm_after_success_threshold_then_ready_for_checkpoint(tmp_path):
    async with running_engine() as engine:
        sc = Sidecar(tmp_path, "checkpoint", probe=probe(engine.port, success_threshold=3))
        await steps(sc, 5)
        assert sc.phase == Phase.WAITING_FOR_ENGINE and engine.health_calls >= 2
        engine.status = 200
        before = engine.health_calls
        await run(sc, lambda: sc.phase == Phase.CHECKPOINTING)
        assert engine.health_calls - before == 3  # exactly successThreshold passes
        ready = signal_json(tmp_path, Signal.READY_FOR_CHECKPOINT)
        assert ready["by"] == "sidecar" and f":{engine.port}/health" in ready["probe"]
        assert not sc.ready  # Not Ready while the agent dumps the worker
        (tmp_path / Signal.CHECKPOINT_COMPLETE.value).write_text('{"snapshot": "s"}')
        await run(sc, lambda: sc.ready)
        assert engine.posts == []  # no sleep/wake endpoints given


async def test_not_warm_while_the_probe_fails(tmp_path):
    async with running_engine() as engine:
        sc = Sidecar(tmp_path, "checkpoint", probe=probe(engine.port))
        await steps(sc, 30)
        assert engine.health_calls >= 5 and sc.phase == Phase.WAITING_FOR_ENGINE
        assert not (tmp_path / Signal.READY_FOR_CHECKPOINT.value).exists()


async def test_sleep_then_wake_around_the_checkpoint(tmp_path):
    async with running_engine() as engine:
        engine.status = 200
        sc = Sidecar(tmp_path, "checkpoint", VLLM, probe(engine.port))
        await run(sc, lambda: sc.phase == Phase.CHECKPOINTING)
        assert engine.posts == ["/sleep?level=1"] and engine.bodies["/sleep"] == b"{}"
        (tmp_path / Signal.CHECKPOINT_COMPLETE.value).write_text("{}")
        await run(sc, lambda: sc.ready)
        assert engine.posts == ["/sleep?level=1", "/wake_up"]
        assert metric(sc, "thaw_sidecar_engine_calls_total", action="wake", result="ok") == 1


async def test_failed_sleep_is_retried_and_nothing_is_announced_meanwhile(tmp_path):
    async with running_engine() as engine:
        engine.status = 200
        sc = Sidecar(
            tmp_path, "checkpoint", EngineUrls("", "/broken", "/wake_up"), probe(engine.port)
        )
        await steps(sc, 20)
        assert engine.posts.count("/broken") >= 2  # once per probe pass, not per poll
        assert engine.posts.count("/broken") <= engine.health_calls
        assert sc.phase == Phase.WAITING_FOR_ENGINE
        assert not (tmp_path / Signal.READY_FOR_CHECKPOINT.value).exists()


async def test_window_expiry_abandons_and_serves(tmp_path):
    async with running_engine() as engine:
        sc = Sidecar(tmp_path, "checkpoint", VLLM, probe(engine.port), Limits(window_s=0.3))
        await run(sc, lambda: sc.ready)
        abandoned = signal_json(tmp_path, Signal.CHECKPOINT_ABANDONED)
        assert abandoned["reason"] == AbandonReason.WARM_WINDOW and abandoned["by"] == "sidecar"
        assert "0.3s checkpoint window" in abandoned["detail"] and "HTTP 503" in abandoned["detail"]
        assert not (tmp_path / Signal.READY_FOR_CHECKPOINT.value).exists()
        assert engine.posts == []  # never put to sleep: nothing to wake
        got = metric(sc, "thaw_sidecar_checkpoint_abandoned_total", reason="warm-window-expired")
        assert got == 1


async def test_hook_engine_without_probe_is_abandoned_after_the_window(tmp_path):
    sc = Sidecar(tmp_path, "checkpoint", limits=Limits(window_s=0.2))
    await run(sc, lambda: sc.ready)
    assert signal_json(tmp_path, Signal.CHECKPOINT_ABANDONED)["reason"] == "warm-window-expired"


async def test_checkpoint_deadline_wakes_the_engine_and_serves(tmp_path):
    async with running_engine() as engine:
        engine.status = 200
        sc = Sidecar(tmp_path, "checkpoint", VLLM, probe(engine.port), Limits(deadline_s=0.3))
        await run(sc, lambda: sc.phase == Phase.CHECKPOINTING)
        t0 = time.monotonic()
        await run(sc, lambda: sc.ready)
        assert time.monotonic() - t0 >= 0.25
        abandoned = signal_json(tmp_path, Signal.CHECKPOINT_ABANDONED)
        assert abandoned["reason"] == AbandonReason.CHECKPOINT_DEADLINE
        assert engine.posts == ["/sleep?level=1", "/wake_up"]
        assert metric(sc, "thaw_sidecar_checkpoint_abandoned_total", reason="checkpoint-deadline")


async def test_a_hook_that_gave_up_makes_the_pod_serve(tmp_path):
    for phase_file in (None, Signal.READY_FOR_CHECKPOINT):
        control = tmp_path / str(phase_file)
        control.mkdir()
        sc = Sidecar(control, "checkpoint")
        if phase_file:
            (control / phase_file.value).write_text("{}")
            await steps(sc, 1)
        payload = {"reason": "hook-timeout", "by": "hook", "detail": "waited 900s"}
        (control / Signal.CHECKPOINT_ABANDONED.value).write_text(json.dumps(payload))
        await run(sc, lambda sc=sc: sc.ready)
        assert metric(sc, "thaw_sidecar_checkpoint_abandoned_total", reason="hook-timeout") == 1


async def test_cold_start_after_a_failed_restore_waits_for_the_probe(tmp_path):
    async with running_engine() as engine:
        sc = Sidecar(tmp_path, "restore", probe=probe(engine.port, success_threshold=2))
        (tmp_path / Signal.RESTORE_REQUESTED.value).write_text("{}")
        (tmp_path / Signal.RESTORE_FAILED.value).write_text("gpu mismatch")
        await steps(sc, 10)
        assert sc.phase == Phase.COLD_START and not sc.ready
        engine.status = 200
        await run(sc, lambda: sc.ready)
        assert sc.detail["message"] == "gpu mismatch"


async def test_restore_without_an_answer_becomes_a_cold_start(tmp_path):
    """The placeholder cold-starts on its own timeout and writes nothing: don't wait forever."""
    async with tcp_listener() as port:
        tcp = ProbeRunner(WarmProbe(port, **FAST))
        sc = Sidecar(tmp_path, "restore", probe=tcp, limits=Limits(restore_s=0.3))
        await steps(sc, 40)
        assert sc.phase == Phase.RESTORING  # the clock starts at restore-requested
        (tmp_path / Signal.RESTORE_REQUESTED.value).write_text("{}")
        await run(sc, lambda: sc.ready)


async def test_restored_engine_is_woken(tmp_path):
    async with running_engine() as engine:
        sc = Sidecar(tmp_path, "restore", VLLM, probe(engine.port))
        (tmp_path / Signal.RESTORE_REQUESTED.value).write_text("{}")
        (tmp_path / Signal.RESTORE_COMPLETE.value).write_text('{"pid": 9}')
        await run(sc, lambda: sc.ready)
        assert engine.posts == ["/wake_up"]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _sidecar_process(control: Path, port: int, **env: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("THAW_")}
    full.update(PYTHONPATH=str(REPO), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "thaw.cli", "sidecar", "run", "--host", "127.0.0.1",
         "--port", str(port), "--control-dir", str(control), "--poll", "0.02"],
        env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)
    return json.loads(path.read_text())


async def test_cli_takes_the_webhooks_env(tmp_path):
    """The env the webhook writes (probe JSON, pod IP, window) drives a real sidecar process."""
    async with tcp_listener() as engine_port:
        spec = WarmProbe(engine_port, period_s=0.05, timeout_s=1)
        port = free_port()
        proc = _sidecar_process(
            tmp_path,
            port,
            **{
                contract.ENV_MODE: "checkpoint",
                contract.ENV_WARM_PROBE: spec.to_json(),
                contract.ENV_POD_IP: "127.0.0.1",
                contract.ENV_CHECKPOINT_WINDOW: "600",
            },
        )
        try:
            ready = await asyncio.to_thread(
                _wait_file, tmp_path / Signal.READY_FOR_CHECKPOINT.value, proc
            )
            assert ready["by"] == "sidecar" and ready["probe"] == f"tcp 127.0.0.1:{engine_port}"
            status, body = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}{contract.SIDECAR_READY_PATH}"
            )
            assert status == 503 and body["phase"] == "checkpointing"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_cli_with_a_bad_probe_still_ends_ready(tmp_path):
    """A probe it cannot parse is logged; the window still ends the wait, never a crash loop."""
    port = free_port()
    proc = _sidecar_process(
        tmp_path,
        port,
        **{
            contract.ENV_MODE: "checkpoint",
            contract.ENV_WARM_PROBE: '{"port": "http"}',
            contract.ENV_ENGINE_SLEEP_URL: "/sleep?level=1",
            contract.ENV_ENGINE_WAKE_URL: "/wake_up",
            contract.ENV_CHECKPOINT_WINDOW: "1",
        },
    )
    try:
        abandoned = _wait_file(tmp_path / Signal.CHECKPOINT_ABANDONED.value, proc)
        assert abandoned["reason"] == "warm-window-expired"
        deadline = time.monotonic() + 10
        while _get_status(port) != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "no warm probe" in err and "port" in err


def _get_status(port: int) -> int:
    try:
        return _get(f"http://127.0.0.1:{port}{contract.SIDECAR_READY_PATH}")[0]
    except (urllib.error.URLError, ConnectionError):
        return 0


async def test_an_unwritable_control_folder_still_ends_serving(tmp_path):
    control = tmp_path / "control"
    control.write_text("not a folder")  # root ignores modes: make writes fail another way
    async with running_engine() as engine:
        engine.status = 200
        sc = Sidecar(control, "checkpoint", VLLM, probe(engine.port), Limits(window_s=0.5))
        await run(sc, lambda: sc.ready)
        assert engine.posts[0] == "/sleep?level=1" and engine.posts[-1] == "/wake_up"
        assert metric(sc, "thaw_sidecar_checkpoint_abandoned_total", reason="warm-window-expired")
