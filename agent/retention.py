"""Retention: how many snapshots per key, and for how long, the store keeps.

Snapshots are big (GPU weights) and a Deployment re-checkpoints whenever its
pod spec changes, so without pruning a store only grows. The agent prunes
after each publish, for the key it just published: the newest snapshots stay,
the one just written always stays, and what goes also loses its Snapshot
object. Age is the one place wall-clock time matters; a manifest dated in
the future (clock skew between nodes) counts as new, never as expired.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Mapping

from agent.store import Store, StoreError
from thaw.contract import ENV_RETENTION_MAX_AGE_HOURS, ENV_RETENTION_MAX_PER_KEY, Manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Retention:
    max_per_key: int = 0  # 0: keep all
    max_age_hours: float = 0  # 0: keep forever

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Retention:
        """Read the chart's settings; a malformed value is an error, not a silent default."""

        def number(name: str, kind: type) -> float:
            raw = environ.get(name, "").strip()
            try:
                value = kind(raw) if raw else 0
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value < 0:
                raise ValueError(f"{name}={raw!r} must be >= 0")
            return value

        return cls(
            max_per_key=int(number(ENV_RETENTION_MAX_PER_KEY, int)),
            max_age_hours=number(ENV_RETENTION_MAX_AGE_HOURS, float),
        )

    @property
    def active(self) -> bool:
        return bool(self.max_per_key or self.max_age_hours)


def _created(m: Manifest) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(m.created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def to_prune(
    snapshots: list[tuple[str, Manifest]],
    policy: Retention,
    key: str,
    keep: str,
    now: dt.datetime,
) -> list[str]:
    """Names of ``key``'s snapshots that ``policy`` drops (pure: no I/O)."""
    mine = sorted(
        ((m.created, name, m) for name, m in snapshots if m.key == key), reverse=True
    )  # newest first
    drop = []
    for rank, (_, name, m) in enumerate(mine):
        if name == keep:
            continue
        too_many = policy.max_per_key and rank >= policy.max_per_key
        created = _created(m)
        too_old = (
            policy.max_age_hours
            and created is not None
            and (now - created).total_seconds() > policy.max_age_hours * 3600
        )
        if too_many or too_old:
            drop.append(name)
    return drop


def prune(store: Store, policy: Retention, key: str, keep: str) -> list[str]:
    """Delete what ``to_prune`` names; returns the names actually deleted."""
    if not policy.active:
        return []
    listed = [(name, m) for name, m, _ in store.list() if m is not None]
    deleted = []
    for name in to_prune(listed, policy, key, keep, dt.datetime.now(dt.UTC)):
        try:
            store.delete(name)
        except (StoreError, OSError) as e:  # e.g. deleted by another agent meanwhile
            log.warning("retention: cannot delete %s: %s", name, e)
            continue
        log.info("retention: deleted snapshot %s (key %s)", name, key)
        deleted.append(name)
    return deleted
