"""Shared by the node tests and their conftest: the timing figures of the session."""

from __future__ import annotations

TIMINGS: dict[str, float] = {}


def record(name: str, seconds: float) -> None:
    """A figure printed in the session summary (pod-to-Ready, start-up, ...)."""
    TIMINGS[name] = seconds
