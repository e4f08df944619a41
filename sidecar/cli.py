"""Subcommands of the `thaw` CLI owned by `sidecar/`: ``thaw sidecar run|restore-init``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path

from thaw.contract import (
    CONTROL_DIR,
    ENV_CONTROL_DIR,
    ENV_ENGINE_HEALTH_URL,
    ENV_ENGINE_SLEEP_URL,
    ENV_ENGINE_WAKE_URL,
    ENV_MODE,
    ENV_SNAPSHOT,
    ENV_STORE_DIR,
    SIDECAR_PORT,
    STORE_MOUNT_PATH,
)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


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
    run.set_defaults(func=_run)

    init = cmds.add_parser("restore-init", help="check the node, prefetch, request the restore")
    init.add_argument("--store-dir", type=Path, default=Path(_env(ENV_STORE_DIR, STORE_MOUNT_PATH)))
    init.add_argument("--snapshot", default=_env(ENV_SNAPSHOT))
    init.add_argument("--control-dir", type=Path, default=Path(_env(ENV_CONTROL_DIR, CONTROL_DIR)))
    init.add_argument("--readers", type=int, default=8, help="parallel prefetch readers")
    init.set_defaults(func=_restore_init)


def _run(args: argparse.Namespace) -> int:
    from sidecar.server import EngineUrls, Sidecar, serve

    engine = EngineUrls(args.engine_health_url, args.engine_sleep_url, args.engine_wake_url)
    sidecar = Sidecar(args.control_dir, args.mode.strip().lower(), engine)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sidecar, args.host, args.port, args.poll))
    return 0


def _restore_init(args: argparse.Namespace) -> int:
    from sidecar.restore_init import run_restore_init

    result = run_restore_init(args.store_dir, args.snapshot, args.control_dir, args.readers)
    print(f"{result.signal.value}: {result.payload}")
    return 0  # never block the pod: a failure is a cold start, not a crash loop
