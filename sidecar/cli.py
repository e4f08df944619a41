"""Subcommands of the `thaw` CLI owned by `sidecar/`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this part's subcommands (none yet)."""
