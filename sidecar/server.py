"""``thaw sidecar run``: readiness, progress and engine sleep/wake for one pod.

The sidecar watches the control folder and keeps the pod *not ready* until
the worker is really serving: in checkpoint mode once the snapshot is taken
(``checkpoint-complete``), in restore mode once the agent restored it
(``restore-complete``) or, after ``restore-failed``, once the cold-started
engine answers its health URL. For engines with their own sleep/wake
endpoints (vLLM's ``/sleep`` and ``/wake_up``) it drives them: sleep the warm
engine, announce ``ready-for-checkpoint`` on its behalf, wake it after the
checkpoint or the restore. Progress is exported as Prometheus metrics and
logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import exposition as prom_exposition

from sidecar.hooks import read_signal, write_signal
from thaw.contract import SIDECAR_READY_PATH, InjectedMode, Signal

log = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    WAITING_FOR_ENGINE = "waiting-for-engine"  # checkpoint mode: engine warming up
    CHECKPOINTING = "checkpointing"  # ready-for-checkpoint written, agent at work
    RESTORING = "restoring"  # restore mode: waiting for the agent
    COLD_START = "cold-start"  # restore failed: the original command runs
    SERVING = "serving"


@dataclasses.dataclass
class EngineUrls:
    """An engine's own HTTP endpoints; empty strings mean "not available"."""

    health: str = ""
    sleep: str = ""
    wake: str = ""


class Sidecar:
    """State machine over the control folder; one ``step()`` per poll."""

    def __init__(self, control_dir: Path, mode: str, engine: EngineUrls | None = None) -> None:
        self.control = Path(control_dir)
        self.mode = mode
        self.engine = engine or EngineUrls()
        self.registry = CollectorRegistry()
        self._phase_gauge = Gauge(
            "thaw_sidecar_phase", "1 for the current phase", ["phase"], registry=self.registry
        )
        self._ready_gauge = Gauge(
            "thaw_sidecar_ready", "1 when the worker serves", registry=self.registry
        )
        self._duration = Gauge(
            "thaw_sidecar_seconds",
            "Duration of a completed step, from the control files' timestamps",
            ["step"],
            registry=self.registry,
        )
        self._engine_calls = Counter(
            "thaw_sidecar_engine_calls",
            "Calls to the engine's own endpoints",
            ["action", "result"],
            registry=self.registry,
        )
        self.detail: dict = {}
        self.phase: Phase | None = None
        self._set_phase(
            {
                InjectedMode.CHECKPOINT.value: Phase.WAITING_FOR_ENGINE,
                InjectedMode.RESTORE.value: Phase.RESTORING,
            }.get(mode, Phase.SERVING)
        )
        self._asked_to_sleep = False

    # --- state ---------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.phase == Phase.SERVING

    def _set_phase(self, phase: Phase) -> None:
        if phase != self.phase:
            log.info("phase: %s", phase.value)
        self.phase = phase
        for p in Phase:
            self._phase_gauge.labels(p.value).set(1 if p == phase else 0)
        self._ready_gauge.set(1 if phase == Phase.SERVING else 0)

    def _file(self, signal: Signal) -> Path:
        return self.control / signal.value

    def _record(self, step: str, start: Signal, end: Signal) -> None:
        try:
            seconds = self._file(end).stat().st_mtime - self._file(start).stat().st_mtime
        except OSError:
            return
        self._duration.labels(step).set(seconds)
        self.detail[f"{step}_s"] = round(seconds, 3)
        log.info("%s took %.2fs", step, seconds)

    # --- engine endpoints ------------------------------------------------------
    async def _engine(self, session: aiohttp.ClientSession, action: str, url: str) -> bool:
        method = session.get if action == "health" else session.post
        try:
            async with method(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                ok = resp.status < 300
        except (TimeoutError, aiohttp.ClientError) as e:
            log.debug("engine %s %s: %s", action, url, e)
            ok = False
        self._engine_calls.labels(action, "ok" if ok else "error").inc()
        if not ok and action != "health":
            log.warning("engine %s call to %s failed", action, url)
        return ok

    async def _healthy(self, session: aiohttp.ClientSession) -> bool:
        return not self.engine.health or await self._engine(session, "health", self.engine.health)

    # --- one poll --------------------------------------------------------------
    async def step(self, session: aiohttp.ClientSession) -> None:
        exists = {s: self._file(s).exists() for s in Signal}
        if self.phase == Phase.WAITING_FOR_ENGINE:
            if exists[Signal.READY_FOR_CHECKPOINT]:
                self._set_phase(Phase.CHECKPOINTING)
            elif (
                self.engine.sleep
                and await self._healthy(session)
                and await self._engine(session, "sleep", self.engine.sleep)
            ):
                # An unmodified engine was warm and is now asleep: speak for it.
                self._asked_to_sleep = True
                write_signal(
                    self.control, Signal.READY_FOR_CHECKPOINT, {"by": "sidecar", "t": time.time()}
                )
                self._set_phase(Phase.CHECKPOINTING)
        if self.phase == Phase.CHECKPOINTING and exists[Signal.CHECKPOINT_COMPLETE]:
            self.detail.update(read_signal(self._file(Signal.CHECKPOINT_COMPLETE)))
            self._record("checkpoint", Signal.READY_FOR_CHECKPOINT, Signal.CHECKPOINT_COMPLETE)
            if self.engine.wake and self._asked_to_sleep:
                await self._engine(session, "wake", self.engine.wake)
            self._set_phase(Phase.SERVING)
        if self.phase == Phase.RESTORING:
            if exists[Signal.RESTORE_COMPLETE]:
                self.detail.update(read_signal(self._file(Signal.RESTORE_COMPLETE)))
                self._record("restore", Signal.RESTORE_REQUESTED, Signal.RESTORE_COMPLETE)
                if self.engine.wake:  # the restored engine went to sleep before the dump
                    await self._engine(session, "wake", self.engine.wake)
                self._set_phase(Phase.SERVING)
            elif exists[Signal.RESTORE_FAILED]:
                self.detail.update(read_signal(self._file(Signal.RESTORE_FAILED)))
                log.warning("restore failed, cold start: %s", self.detail)
                self._set_phase(Phase.COLD_START)
        if self.phase == Phase.COLD_START and await self._healthy(session):
            self._set_phase(Phase.SERVING)

    async def watch(self, poll_s: float = 0.1) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.step(session)
                except OSError as e:
                    log.error("control folder %s: %s", self.control, e)
                await asyncio.sleep(poll_s)

    # --- HTTP --------------------------------------------------------------------
    def app(self) -> web.Application:
        async def readyz(_: web.Request) -> web.Response:
            body = {"ready": self.ready, "phase": self.phase.value, "mode": self.mode}
            return web.json_response(body, status=200 if self.ready else 503)

        async def status(_: web.Request) -> web.Response:
            return web.json_response(
                {"ready": self.ready, "phase": self.phase.value, "detail": self.detail}
            )

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry),
                headers={"Content-Type": prom_exposition.CONTENT_TYPE_LATEST},
            )

        app = web.Application()
        app.router.add_get(SIDECAR_READY_PATH, readyz)
        app.router.add_get("/status", status)
        app.router.add_get("/metrics", metrics)
        return app


async def serve(sidecar: Sidecar, host: str, port: int, poll_s: float = 0.1) -> None:
    runner = web.AppRunner(sidecar.app())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("sidecar on %s:%d (mode %s, control %s)", host, port, sidecar.mode, sidecar.control)
    try:
        await sidecar.watch(poll_s)
    finally:
        await runner.cleanup()
