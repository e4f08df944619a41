"""Retention: the chart's per-key count and age limits, on a real store folder."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.retention import Retention, prune, to_prune
from agent.store import Store
from thaw.contract import (
    ENV_RETENTION_MAX_AGE_HOURS,
    ENV_RETENTION_MAX_PER_KEY,
    MANIFEST_FILE,
    Manifest,
)

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def _manifest(name: str, key: str, hours_ago: float) -> Manifest:
    created = (NOW - dt.timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z")
    return Manifest(
        name=name,
        key=key,
        created=created,
        image="i",
        kernel="6.1",
        arch="x86_64",
        criu_version="4.1.1",
        root_pid=400,
    )


def _publish(store: Store, m: Manifest) -> None:
    folder = store.root / m.name
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(m.to_json())


def test_from_env_reads_the_chart_settings_and_rejects_garbage():
    env = {ENV_RETENTION_MAX_PER_KEY: "3", ENV_RETENTION_MAX_AGE_HOURS: "1.5"}
    assert Retention.from_env(env) == Retention(3, 1.5)
    assert Retention.from_env({}) == Retention(0, 0) and not Retention.from_env({}).active
    with pytest.raises(ValueError, match=ENV_RETENTION_MAX_PER_KEY):
        Retention.from_env({ENV_RETENTION_MAX_PER_KEY: "three"})
    with pytest.raises(ValueError, match=">= 0"):
        Retention.from_env({ENV_RETENTION_MAX_AGE_HOURS: "-1"})


def test_to_prune_keeps_newest_per_key_and_the_one_just_written():
    snaps = [
        (m.name, m)
        for m in (
            _manifest("a-1", "a", 3),
            _manifest("a-2", "a", 2),
            _manifest("a-3", "a", 1),
            _manifest("b-1", "b", 50),
        )
    ]
    assert to_prune(snaps, Retention(max_per_key=2), "a", keep="a-3", now=NOW) == ["a-1"]
    # Only the key just published is pruned; another key's old snapshot stays.
    assert to_prune(snaps, Retention(max_age_hours=1.5), "a", keep="a-3", now=NOW) == [
        "a-2",
        "a-1",
    ]
    # The snapshot just written survives any policy, on top of the newest N.
    assert to_prune(snaps, Retention(max_per_key=1), "a", keep="a-1", now=NOW) == ["a-2"]


def test_future_dated_manifest_is_new_not_expired():
    skewed = _manifest("a-future", "a", -48)  # written by a node whose clock runs ahead
    assert to_prune([(skewed.name, skewed)], Retention(max_age_hours=1), "a", "x", NOW) == []


def test_prune_deletes_from_a_real_store(tmp_path):
    store = Store(tmp_path / "store")
    now = dt.datetime.now(dt.UTC)
    for i, hours in enumerate((3, 2, 1)):
        m = _manifest(f"k-{i}", "k", 0)
        created = (now - dt.timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
        _publish(store, Manifest(**{**m.__dict__, "created": created}))
    assert prune(store, Retention(), "k", keep="k-2") == []  # inactive policy: no I/O
    assert prune(store, Retention(max_per_key=2), "k", keep="k-2") == ["k-0"]
    assert store.names() == ["k-1", "k-2"]
    assert not any((store.root / ".staging").iterdir())  # deleted through staging, then gone
