"""Engine-side hooks: quiesce before a checkpoint, resume after it or after a restore.

An engine (or a thin wrapper around an unmodified one) registers callbacks
and, once warm, calls ``wait_for_checkpoint_or_restore()``:

    from sidecar import hooks
    hooks.quiesce(kv.release)      # e.g. drop the KV cache's physical memory
    hooks.resume(kv.remap)
    outcome = hooks.wait_for_checkpoint_or_restore()

In checkpoint mode (``THAW_MODE=checkpoint``) that runs the quiesce
callbacks, writes ``ready-for-checkpoint`` into ``THAW_CONTROL_DIR`` and
blocks. The agent dumps the process while it blocks here, so the call
returns twice in the life of a snapshot: in the source when
``checkpoint-complete`` appears, and in every restored copy when
``restore-complete`` appears (the restored process wakes up inside this very
loop, in the new pod's control folder). Either way the resume callbacks run
before it returns. Without ``THAW_MODE`` (or in a cold-started restore-mode
pod) it returns at once and touches nothing.

A checkpoint may be given up (``checkpoint-abandoned``): by the sidecar when
its window or deadline passes, or here when the wait times out - then this
writes it before raising HookTimeout, so the sidecar stops holding the pod
Not Ready and the agent never dumps it. Once it is there, the call returns
``abandoned`` without quiescing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from thaw.contract import (
    CONTROL_DIR,
    ENV_CONTROL_DIR,
    ENV_MODE,
    AbandonReason,
    InjectedMode,
    Signal,
)

log = logging.getLogger(__name__)

Callback = Callable[[], object]
DEFAULT_TIMEOUT_S = 900.0
DEFAULT_POLL_S = 0.02

_quiesce: list[Callback] = []
_resume: list[Callback] = []


class HookError(RuntimeError):
    """A quiesce/resume callback failed, or the control folder is unusable."""


class HookTimeout(HookError):
    """Nobody answered ``ready-for-checkpoint`` in time: abandoned, the engine resumed."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How ``wait_for_checkpoint_or_restore`` ended.

    ``event``: ``checkpointed`` (source, after the dump), ``restored`` (a
    restored copy), ``skipped`` (no checkpoint mode: nothing to wait for),
    ``abandoned`` (the checkpoint was given up; ``detail`` says why).
    ``ok`` is False when the agent reported a failed checkpoint or it was
    abandoned; the engine was resumed anyway and keeps serving.
    """

    event: str
    ok: bool = True
    detail: dict = dataclasses.field(default_factory=dict)


def quiesce(fn: Callback) -> Callback:
    """Register ``fn`` to run before the checkpoint (usable as a decorator)."""
    _quiesce.append(fn)
    return fn


def resume(fn: Callback) -> Callback:
    """Register ``fn`` to run after the checkpoint or restore (usable as a decorator)."""
    _resume.append(fn)
    return fn


def clear() -> None:
    """Forget every registered callback (tests, engine reloads)."""
    _quiesce.clear()
    _resume.clear()


def control_dir() -> Path:
    return Path(os.environ.get(ENV_CONTROL_DIR) or CONTROL_DIR)


def mode() -> str:
    return os.environ.get(ENV_MODE, "").strip().lower()


def write_signal(directory: Path, signal: Signal, payload: dict) -> Path:
    """Write a signal file atomically: readers never see half a JSON document."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / signal.value
    tmp = directory / f".{signal.value}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, final)
    return final


def read_signal(path: Path) -> dict:
    """A signal's JSON payload; plain text (or an empty file) becomes ``{"message": text}``."""
    text = path.read_text(errors="replace").strip()
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"message": text}
    return value if isinstance(value, dict) else {"message": text}


# Seconds each callback of the last quiesce/resume took ("phase:name"), for progress reports.
last_timings: dict[str, float] = {}


def _run(callbacks: list[Callback], phase: str) -> None:
    for fn in list(callbacks):
        name = getattr(fn, "__qualname__", repr(fn))
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:
            raise HookError(f"{phase} callback {name} failed: {e}") from e
        finally:
            last_timings[f"{phase}:{name}"] = time.monotonic() - t0


def wait_for_checkpoint_or_restore(
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    directory: Path | None = None,
    info: dict | None = None,
) -> Outcome:
    """Quiesce, announce readiness, block until checkpointed or restored, resume.

    ``timeout_s`` counts only time this process was running: a frozen stretch
    (dumped, later restored elsewhere) is not counted, so a restored copy
    never times out on the clock jump. On timeout the engine is resumed and
    HookTimeout is raised, so it can keep serving without a snapshot.
    """
    if mode() != InjectedMode.CHECKPOINT.value:
        return Outcome("skipped", detail={"mode": mode() or "off"})
    directory = directory or control_dir()
    done = directory / Signal.CHECKPOINT_COMPLETE.value
    restored = directory / Signal.RESTORE_COMPLETE.value
    abandoned = directory / Signal.CHECKPOINT_ABANDONED.value
    if abandoned.exists():  # too late: the pod serves without a snapshot
        return Outcome("abandoned", ok=False, detail=read_signal(abandoned))
    _run(_quiesce, "quiesce")
    try:
        write_signal(
            directory,
            Signal.READY_FOR_CHECKPOINT,
            {"pid": os.getpid(), "time": time.time(), **(info or {})},
        )
    except OSError as e:
        _run(_resume, "resume")
        raise HookError(
            f"cannot write {Signal.READY_FOR_CHECKPOINT.value} in {directory}: {e}"
        ) from e
    log.info("ready for checkpoint; waiting in %s", directory)
    elapsed, last = 0.0, time.monotonic()
    while True:
        if restored.exists():
            outcome = Outcome("restored", detail=read_signal(restored))
            break
        if done.exists():
            detail = read_signal(done)
            ok = detail.get("ok", True) is not False and not detail.get("error")
            outcome = Outcome("checkpointed", ok=ok, detail=detail)
            break
        if abandoned.exists():
            outcome = Outcome("abandoned", ok=False, detail=read_signal(abandoned))
            break
        time.sleep(poll_s)
        now = time.monotonic()
        # A jump far beyond the poll interval means we were frozen (or restored): don't count it.
        step = now - last
        elapsed += step if 0 <= step < max(1.0, 50 * poll_s) else poll_s
        last = now
        if elapsed >= timeout_s:
            message = (
                f"no {Signal.CHECKPOINT_COMPLETE.value} or {Signal.RESTORE_COMPLETE.value} "
                f"in {directory} after {timeout_s:.0f}s; engine resumed without a snapshot"
            )
            _abandon(directory, message)  # first: the agent must not start a dump now
            _run(_resume, "resume")
            raise HookTimeout(message)
    _run(_resume, "resume")
    if not outcome.ok:
        log.warning(
            "checkpoint %s (%s); serving on",
            "failed" if outcome.event == "checkpointed" else outcome.event,
            outcome.detail,
        )
    return outcome


def _abandon(directory: Path, detail: str) -> None:
    """Write ``checkpoint-abandoned`` for a timed-out wait; a failure is only logged."""
    payload = {"reason": AbandonReason.HOOK_TIMEOUT.value, "by": "hook", "detail": detail}
    try:
        write_signal(directory, Signal.CHECKPOINT_ABANDONED, {**payload, "t": time.time()})
    except OSError as e:
        log.error("cannot write %s in %s: %s", Signal.CHECKPOINT_ABANDONED.value, directory, e)
