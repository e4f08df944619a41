"""Subcommands of the `thaw` CLI owned by `sidecar/`: ``thaw sidecar run|restore-init``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

from thaw.contract import (
    CONTROL_DIR,
    DEFAULT_CHECKPOINT_WINDOW_S,
    ENV_CHECKPOINT_WINDOW,
    ENV_CONTROL_DIR,
    ENV_ENGINE_HEALTH_URL,
    ENV_ENGINE_SLEEP_URL,
    ENV_ENGINE_WAKE_URL,
    ENV_MODE,
    ENV_POD_IP,
    ENV_RESTORE_TIMEOUT,
    ENV_SNAPSHOT,
    ENV_STORE_DIR,
    ENV_WARM_PROBE,
    SIDECAR_PORT,
    STORE_MOUNT_PATH,
    ProbeError,
    WarmProbe,
)
from thaw.launch import DEFAULT_RESTORE_TIMEOUT_S

log = logging.getLogger(__name__)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


def _seconds(name: str, default: float) -> float:
    """A positive number from env ``name``; a bad value is logged, never a crash loop."""
    raw = _env(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):
        log.error("%s=%r is not a positive number of seconds; using %g", name, raw, default)
        return default
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``thaw sidecar run`` and ``thaw sidecar restore-init``."""
    parser = sub.add_parser("sidecar", help="the per-pod sidecar and restore init step")
    cmds = parser.add_subparsers(dest="sidecar_command", required=True, metavar="SUBCOMMAND")

    run = cmds.add_parser("run", help="readiness, metrics and engine sleep/wake for a pod")
    run.add_argument("--control-dir", type=Path, default=Path(_env(ENV_CONTROL_DIR, CONTROL_DIR)))
    run.add_argument("--mode", default=_env(ENV_MODE), help="checkpoint|restore (env THAW_MODE)")
    run.add_argument("--host", default="0.0.0.0")
    run.add_argument("--port", type=int, default=SIDECAR_PORT)
    run.add_argument("--poll", type=float, default=0.1, help="seconds between control polls")
    run.add_argument("--engine-health-url", default=_env(ENV_ENGINE_HEALTH_URL))
    run.add_argument("--engine-sleep-url", default=_env(ENV_ENGINE_SLEEP_URL))
    run.add_argument("--engine-wake-url", default=_env(ENV_ENGINE_WAKE_URL))
    run.add_argument(
        "--warm-probe", default=_env(ENV_WARM_PROBE), help="the worker's probe as JSON"
    )
    run.add_argument("--pod-ip", default=_env(ENV_POD_IP), help="the probe's default host")
    run.add_argument(
        "--checkpoint-window",
        type=float,
        default=_seconds(ENV_CHECKPOINT_WINDOW, DEFAULT_CHECKPOINT_WINDOW_S),
        help="seconds for the engine to get warm; then the pod serves without a snapshot",
    )
    run.add_argument(
        "--checkpoint-deadline",
        type=float,
        help="seconds from ready-for-checkpoint to checkpoint-complete; then serve anyway "
        "(default 1200)",
    )
    run.add_argument(
        "--restore-timeout",
        type=float,
        default=_seconds(ENV_RESTORE_TIMEOUT, DEFAULT_RESTORE_TIMEOUT_S),
        help="the restore placeholder's timeout, after which it cold-starts",
    )
    run.set_defaults(func=_run)

    init = cmds.add_parser("restore-init", help="check the node, prefetch, request the restore")
    init.add_argument("--store-dir", type=Path, default=Path(_env(ENV_STORE_DIR, STORE_MOUNT_PATH)))
    init.add_argument("--snapshot", default=_env(ENV_SNAPSHOT))
    init.add_argument("--control-dir", type=Path, default=Path(_env(ENV_CONTROL_DIR, CONTROL_DIR)))
    init.add_argument("--readers", type=int, default=8, help="parallel prefetch readers")
    init.set_defaults(func=_restore_init)


def _run(args: argparse.Namespace) -> int:
    from sidecar.probe import ProbeRunner
    from sidecar.server import RESTORE_GRACE_S, EngineUrls, Limits, Sidecar, serve

    probe = None
    try:
        if args.warm_probe:
            probe = ProbeRunner(WarmProbe.from_json(args.warm_probe), args.pod_ip)
        elif args.engine_health_url:
            probe = ProbeRunner.from_url(args.engine_health_url)
    except ProbeError as e:  # the window still ends the wait: the pod serves, cold
        log.error("no warm probe: %s", e)
    engine = EngineUrls("", args.engine_sleep_url, args.engine_wake_url)
    limits = Limits(
        window_s=args.checkpoint_window,
        restore_s=args.restore_timeout + RESTORE_GRACE_S,
        **({"deadline_s": args.checkpoint_deadline} if args.checkpoint_deadline else {}),
    )
    sidecar = Sidecar(args.control_dir, args.mode.strip().lower(), engine, probe, limits)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sidecar, args.host, args.port, args.poll))
    return 0


def _restore_init(args: argparse.Namespace) -> int:
    from sidecar.restore_init import run_restore_init

    result = run_restore_init(args.store_dir, args.snapshot, args.control_dir, args.readers)
    print(f"{result.signal.value}: {result.payload}")
    return 0  # never block the pod: a failure is a cold start, not a crash loop
