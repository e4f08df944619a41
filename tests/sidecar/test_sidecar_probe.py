"""The sidecar's probe runner against a real HTTP server and a real TCP listener on loopback."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys

import aiohttp
import pytest
from engine_support import free_port, running_engine, tcp_listener

from sidecar.probe import ProbeRunner
from thaw.contract import ProbeError, WarmProbe

FAST = {"period_s": 0.02, "timeout_s": 1}


def http_probe(port: int, **kw) -> WarmProbe:
    return WarmProbe(port, "http", "/health", **{**FAST, **kw})


async def warm_after(runner: ProbeRunner, session, polls: int) -> list[bool]:
    """``warm()`` once per period, ``polls`` times."""
    out = []
    for _ in range(polls):
        out.append(await runner.warm(session))
        await asyncio.sleep(runner.spec.period_s)
    return out


async def test_warm_only_after_success_threshold_in_a_row():
    async with running_engine() as engine, aiohttp.ClientSession() as s:
        engine.status = 200
        runner = ProbeRunner(http_probe(engine.port, success_threshold=3), "127.0.0.1")
        assert await warm_after(runner, s, 4) == [False, False, True, True]
        engine.status = 503  # one failure ends the streak
        assert await warm_after(runner, s, 1) == [False]
        engine.status = 200
        assert await warm_after(runner, s, 3) == [False, False, True]
        assert runner.last == "HTTP 200"


async def test_not_warm_while_failing_or_refused():
    async with running_engine() as engine, aiohttp.ClientSession() as s:
        runner = ProbeRunner(http_probe(engine.port), "127.0.0.1")
        assert await warm_after(runner, s, 3) == [False] * 3 and runner.last == "HTTP 503"
    closed = ProbeRunner(WarmProbe(free_port(), **FAST))
    async with aiohttp.ClientSession() as s:
        assert not await closed.warm(s) and "Error" in closed.last


async def test_probes_run_once_per_period_after_the_initial_delay():
    async with running_engine() as engine, aiohttp.ClientSession() as s:
        engine.status = 200
        runner = ProbeRunner(http_probe(engine.port, period_s=0.3, initial_delay_s=0.2))
        for _ in range(10):  # the sidecar polls far more often than the period
            assert not await runner.warm(s)
            await asyncio.sleep(0.01)
        assert engine.health_calls == 0
        await asyncio.sleep(0.2)
        assert await runner.warm(s) and await runner.warm(s)
        assert engine.health_calls == 1


async def test_http_probe_sends_headers_and_treats_redirects_as_success():
    async with running_engine() as engine, aiohttp.ClientSession() as s:
        engine.status = 302
        headers = (("Host", "llm.example"), ("X-Probe", "thaw"))
        runner = ProbeRunner(http_probe(engine.port, headers=headers))
        assert await runner.warm(s) and runner.last == "HTTP 302"  # not followed
        seen = engine.headers[-1]
        assert seen["Host"] == "llm.example" and seen["X-Probe"] == "thaw"
        assert seen["User-Agent"] == "thaw-sidecar" and seen["Accept"] == "*/*"
        assert engine.calls == [("GET", "/health")]


async def test_a_slow_answer_is_a_failure():
    async with running_engine() as engine, aiohttp.ClientSession() as s:
        engine.status, engine.delay_s = 200, 1.0
        runner = ProbeRunner(http_probe(engine.port, timeout_s=0.2))
        t0 = asyncio.get_running_loop().time()
        assert not await runner.warm(s)
        assert asyncio.get_running_loop().time() - t0 < 0.9 and "Timeout" in runner.last


async def test_https_probe_does_not_verify_the_certificate(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "thaw.cli", "certs", "generate", "--hosts", "127.0.0.1",
         "--out", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    async with running_engine(ctx) as engine, aiohttp.ClientSession() as s:
        engine.status = 200
        runner = ProbeRunner(WarmProbe(engine.port, "https", "/health", **FAST))
        assert await runner.warm(s) and runner.base_url.startswith("https://")


async def test_tcp_probe_connects_to_the_pod_ip():
    async with tcp_listener() as port, aiohttp.ClientSession() as s:
        runner = ProbeRunner(WarmProbe(port, success_threshold=2, **FAST), pod_ip="127.0.0.1")
        assert runner.describe() == f"tcp 127.0.0.1:{port}"
        assert await warm_after(runner, s, 2) == [False, True] and runner.last == "connected"


def test_host_is_the_probes_then_the_pod_ip_then_loopback():
    assert ProbeRunner(WarmProbe(80, host="10.0.0.9"), "10.0.0.1").host == "10.0.0.9"
    assert ProbeRunner(WarmProbe(80), "10.0.0.1").host == "10.0.0.1"
    assert ProbeRunner(WarmProbe(80)).host == "127.0.0.1"
    v6 = ProbeRunner(WarmProbe(8000, "http"), "fd00::5")
    assert v6.base_url == "http://[fd00::5]:8000"


def test_engine_paths_resolve_on_the_probes_endpoint():
    runner = ProbeRunner(WarmProbe(8000, "http", "/health"), "10.0.0.1")
    assert runner.resolve("/sleep?level=1") == "http://10.0.0.1:8000/sleep?level=1"
    assert runner.resolve("http://other:1/x") == "http://other:1/x"
    tcp = ProbeRunner(WarmProbe(30000), "10.0.0.1")
    assert tcp.resolve("/release_memory_occupation") == (
        "http://10.0.0.1:30000/release_memory_occupation"
    )


def test_health_url_becomes_an_http_probe():
    runner = ProbeRunner.from_url("http://127.0.0.1:8000/health?x=1")
    assert (runner.host, runner.spec.port, runner.spec.path) == ("127.0.0.1", 8000, "/health?x=1")
    with pytest.raises(ProbeError):
        ProbeRunner.from_url("localhost:8000/health")
