"""``thaw demo``: the whole flow locally on an embedded default, no cluster."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole flow locally (no cluster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("demo: nothing wired yet")
    return 0
