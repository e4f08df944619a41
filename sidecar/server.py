"""``thaw sidecar run``: readiness, progress and engine sleep/wake for one pod.

The sidecar watches the control folder and keeps the pod *not ready* until
the worker is really serving: in checkpoint mode once the snapshot is taken
(``checkpoint-complete``), in restore mode once the agent restored it
(``restore-complete``) or, after ``restore-failed``, once the cold-started
engine passes its probe. An unmodified engine is checkpointed when warm: once
its own readinessProbe (run here, ``sidecar.probe``) passes, the sidecar puts
it to sleep where it has sleep/wake endpoints (vLLM's ``/sleep`` and
``/wake_up``), announces ``ready-for-checkpoint`` on its behalf, and wakes it
after the checkpoint or the restore.

Nothing waits forever: no warm signal within the checkpoint window, or no
``checkpoint-complete`` by the checkpoint deadline, and the sidecar writes
``checkpoint-abandoned`` (so the agent never dumps this pod), wakes the engine
and serves cold. Progress is exported as Prometheus metrics and logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import exposition as prom_exposition

from sidecar.hooks import read_signal, write_signal
from sidecar.probe import ProbeRunner
from thaw.contract import (
    DEFAULT_CHECKPOINT_WINDOW_S,
    ENV_WARM_PROBE,
    SIDECAR_READY_PATH,
    AbandonReason,
    InjectedMode,
    Signal,
)
from thaw.launch import DEFAULT_RESTORE_TIMEOUT_S

log = logging.getLogger(__name__)

# Past ``hooks.DEFAULT_TIMEOUT_S``, so a hook engine normally gives up (and resumes) first.
DEFAULT_CHECKPOINT_DEADLINE_S = 1200
RESTORE_GRACE_S = 30  # after the placeholder's own timeout, it has cold-started
ENGINE_CALL_TIMEOUT_S = 300  # sleep can move a model's weights to host memory


class Phase(enum.StrEnum):
    WAITING_FOR_ENGINE = "waiting-for-engine"  # checkpoint mode: engine warming up
    CHECKPOINTING = "checkpointing"  # ready-for-checkpoint written, agent at work
    RESTORING = "restoring"  # restore mode: waiting for the agent
    COLD_START = "cold-start"  # restore failed: the original command runs
    SERVING = "serving"


@dataclasses.dataclass
class EngineUrls:
    """An engine's own HTTP endpoints; empty strings mean "not available".

    ``health`` stands in for a probe where none is given. ``sleep`` and ``wake``
    may be bare paths, on the probe's endpoint (what the webhook passes).
    """

    health: str = ""
    sleep: str = ""
    wake: str = ""

    def on(self, probe: ProbeRunner | None) -> EngineUrls:
        """Bare paths made URLs on ``probe``'s endpoint; without a probe they are dropped."""
        if probe is None and any(u and "://" not in u for u in (self.sleep, self.wake)):
            log.error("engine sleep/wake paths need a warm probe (%s); not used", ENV_WARM_PROBE)
            return EngineUrls(self.health)
        sleep, wake = (
            u if not u or probe is None else probe.resolve(u) for u in (self.sleep, self.wake)
        )
        return EngineUrls(self.health, sleep, wake)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long each wait may last before the pod serves without it (seconds)."""

    window_s: float = DEFAULT_CHECKPOINT_WINDOW_S  # engine warm, from the sidecar's start
    deadline_s: float = DEFAULT_CHECKPOINT_DEADLINE_S  # checkpoint-complete, from ready
    restore_s: float = DEFAULT_RESTORE_TIMEOUT_S + RESTORE_GRACE_S  # from restore-requested


class Sidecar:
    """State machine over the control folder; one ``step()`` per poll."""

    def __init__(
        self,
        control_dir: Path,
        mode: str,
        engine: EngineUrls | None = None,
        probe: ProbeRunner | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control = Path(control_dir)
        self.mode = mode
        engine = engine or EngineUrls()
        self.probe = probe or (ProbeRunner.from_url(engine.health) if engine.health else None)
        self.engine = engine.on(self.probe)
        self.limits = limits or Limits()
        self._clock = clock
        self._since = clock()  # when the current phase began
        self._restore_seen: float | None = None  # when restore-requested was first seen
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
        self._abandoned = Counter(
            "thaw_sidecar_checkpoint_abandoned",
            "Checkpoints given up; the pod then serves cold, without a snapshot",
            ["reason"],
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
            self._since = self._clock()
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
        """POST to a sleep/wake endpoint (an empty JSON body: SGLang's want one)."""
        timeout = aiohttp.ClientTimeout(total=ENGINE_CALL_TIMEOUT_S)
        try:
            async with session.post(url, json={}, timeout=timeout) as resp:
                ok = resp.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.debug("engine %s %s: %s", action, url, e)
            ok = False
        self._engine_calls.labels(action, "ok" if ok else "error").inc()
        if not ok:
            log.warning("engine %s call to %s failed", action, url)
        return ok

    async def _wake(self, session: aiohttp.ClientSession) -> None:
        if self.engine.wake and self._asked_to_sleep:
            await self._engine(session, "wake", self.engine.wake)
            self._asked_to_sleep = False

    # --- giving up -------------------------------------------------------------------
    def _abandon(self, reason: AbandonReason, detail: str) -> None:
        """Tell the agent never to dump this pod. Serving matters more than a failed write."""
        payload = {"reason": reason.value, "by": "sidecar", "detail": detail, "t": time.time()}
        try:
            write_signal(self.control, Signal.CHECKPOINT_ABANDONED, payload)
        except OSError as e:
            log.error("cannot write %s: %s", Signal.CHECKPOINT_ABANDONED.value, e)
        self._note_abandoned(payload)

    def _note_abandoned(self, payload: dict) -> None:
        reason = str(payload.get("reason", ""))
        known = {r.value for r in AbandonReason}
        self._abandoned.labels(reason if reason in known else "other").inc()
        self.detail["abandoned"] = payload
        log.warning(
            "checkpoint abandoned (%s, by %s): %s; serving without a snapshot",
            reason or "?",
            payload.get("by", "?"),
            payload.get("detail", ""),
        )

    # --- one poll --------------------------------------------------------------
    async def step(self, session: aiohttp.ClientSession) -> None:
        exists = {s: self._file(s).exists() for s in Signal}
        if self.phase == Phase.WAITING_FOR_ENGINE:
            await self._wait_for_engine(session, exists)
        if self.phase == Phase.CHECKPOINTING:
            await self._checkpointing(session, exists)
        if self.phase == Phase.RESTORING:
            await self._restoring(session, exists)
        if self.phase == Phase.COLD_START and (
            self.probe is None or await self.probe.warm(session)
        ):
            self._set_phase(Phase.SERVING)

    def _waited(self) -> float:
        return self._clock() - self._since

    async def _wait_for_engine(self, session: aiohttp.ClientSession, exists: dict) -> None:
        if exists[Signal.READY_FOR_CHECKPOINT]:  # a thaw-aware engine spoke for itself
            self._set_phase(Phase.CHECKPOINTING)
        elif exists[Signal.CHECKPOINT_ABANDONED]:  # its hook gave up waiting
            self._note_abandoned(read_signal(self._file(Signal.CHECKPOINT_ABANDONED)))
            self._set_phase(Phase.SERVING)
        elif self._waited() >= self.limits.window_s:  # first: whatever fails below, this ends it
            self._abandon(
                AbandonReason.WARM_WINDOW,
                f"no warm signal within the {self.limits.window_s:g}s checkpoint window"
                + (f" (probe {self.probe.describe()}: {self.probe.last})" if self.probe else ""),
            )
            await self._wake(session)
            self._set_phase(Phase.SERVING)
        elif self.probe is not None and await self.probe.warm(session):
            await self._speak_for_engine(session, self.probe)

    async def _speak_for_engine(self, session: aiohttp.ClientSession, probe: ProbeRunner) -> None:
        """The unmodified engine is warm: sleep it if it can, then announce it to the agent."""
        if self.engine.sleep:
            self._asked_to_sleep = True  # wake it even after a failed call: it may have slept
            if not await self._engine(session, "sleep", self.engine.sleep):
                probe.cool()  # again once the probe passes again (or the window ends)
                return
        payload = {"by": "sidecar", "probe": probe.describe(), "t": time.time()}
        try:
            write_signal(self.control, Signal.READY_FOR_CHECKPOINT, payload)
        except OSError as e:
            log.error("cannot write %s: %s", Signal.READY_FOR_CHECKPOINT.value, e)
            probe.cool()
            return
        self._set_phase(Phase.CHECKPOINTING)

    async def _checkpointing(self, session: aiohttp.ClientSession, exists: dict) -> None:
        if exists[Signal.CHECKPOINT_COMPLETE]:
            self.detail.update(read_signal(self._file(Signal.CHECKPOINT_COMPLETE)))
            self._record("checkpoint", Signal.READY_FOR_CHECKPOINT, Signal.CHECKPOINT_COMPLETE)
        elif exists[Signal.CHECKPOINT_ABANDONED]:
            self._note_abandoned(read_signal(self._file(Signal.CHECKPOINT_ABANDONED)))
        elif self._waited() >= self.limits.deadline_s:
            self._abandon(
                AbandonReason.CHECKPOINT_DEADLINE,
                f"no {Signal.CHECKPOINT_COMPLETE.value} within {self.limits.deadline_s:g}s "
                "(is the thaw agent running on this node?)",
            )
        else:
            return
        await self._wake(session)
        self._set_phase(Phase.SERVING)

    async def _restoring(self, session: aiohttp.ClientSession, exists: dict) -> None:
        if exists[Signal.RESTORE_COMPLETE]:
            self.detail.update(read_signal(self._file(Signal.RESTORE_COMPLETE)))
            self._record("restore", Signal.RESTORE_REQUESTED, Signal.RESTORE_COMPLETE)
            if self.engine.wake:  # the restored engine went to sleep before the dump
                await self._engine(session, "wake", self.engine.wake)
            self._set_phase(Phase.SERVING)
            return
        if exists[Signal.RESTORE_FAILED]:
            self.detail.update(read_signal(self._file(Signal.RESTORE_FAILED)))
            log.warning("restore failed, cold start: %s", self.detail)
        elif not exists[Signal.RESTORE_REQUESTED]:
            return
        elif self._restore_seen is None:
            self._restore_seen = self._clock()
            return
        elif self._clock() - self._restore_seen < self.limits.restore_s:
            return
        else:  # the placeholder has given up on its own and cold-started the command
            log.warning("no restore answer within %gs: cold start", self.limits.restore_s)
        self._set_phase(Phase.COLD_START)
        if self.probe is not None:
            self.probe.reset()

    async def watch(self, poll_s: float = 0.1) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.step(session)
                except OSError as e:
                    log.error("control folder %s: %s", self.control, e)
                except Exception:  # a bug must not freeze the phase (and readiness) for good
                    log.exception("sidecar step failed")
                await asyncio.sleep(poll_s)

    # --- HTTP --------------------------------------------------------------------
    def app(self) -> web.Application:
        async def readyz(_: web.Request) -> web.Response:
            body = {"ready": self.ready, "phase": self.phase.value, "mode": self.mode}
            return web.json_response(body, status=200 if self.ready else 503)

        async def status(_: web.Request) -> web.Response:
            body = {"ready": self.ready, "phase": self.phase.value, "detail": self.detail}
            if self.probe is not None:
                body["probe"] = {"target": self.probe.describe(), "last": self.probe.last}
            return web.json_response(body)

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
