"""``thaw`` console script: one entry point, each part registers its own subcommands.

Each part (webhook, certs, agent, sidecar) owns a ``cli.py`` with
``register(subparsers)``; registered handlers are stored as ``func`` and
return an exit code. Keeping the parsers beside the code they drive means
this file never changes when a part grows a command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, what it adds) - imported lazily so `thaw certs` never pays for aiohttp or CUDA.
PARTS = (
    "webhook.cli",  # thaw webhook serve, thaw inject
    "certs.cli",  # thaw certs generate|...
    "agent.cli",  # thaw snapshot ..., thaw agent run
    "sidecar.cli",  # thaw sidecar run, thaw placeholder
    "thaw.demo",  # thaw demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thaw", description="thaw: restore warm GPU inference workers from snapshots."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PARTS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
