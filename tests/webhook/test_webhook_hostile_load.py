"""The real server under hostile load: bounded memory in a real cgroup, no head-of-line stall.

A storm of ~3 MiB reviews against a process whose cgroup has the chart's
256 MiB limit must be shed (429 + Retry-After), never OOM-kill it; and one
expensive review must not delay the cheap ones queued behind it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl

import pytest
from hostile_load import (
    MemoryCgroup,
    heavy_review,
    peak_rss,
    probe_while,
    small_review,
    storm,
    webhook_in,
)
from webhook_tls_server import generate_certs, request

MIB = 1024 * 1024
CHART_LIMIT = 256 * MIB  # charts/thaw/values.yaml: webhook.resources.limits.memory
STORM = 250


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generate_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def heavy() -> bytes:
    return json.dumps(heavy_review()).encode()


def context(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


@pytest.fixture
def cgroup():
    try:
        group = MemoryCgroup(CHART_LIMIT)
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup here: {e}")
    yield group
    group.remove()


async def test_storm_of_3mib_reviews_in_a_256mib_cgroup_is_shed_not_oom_killed(
    certs, cgroup, heavy, tmp_path
):
    assert 3 * MIB - 64 * 1024 < len(heavy) <= 3 * MIB
    ctx = context(certs)
    with webhook_in(certs, tmp_path / "log", prefix=cgroup.prefix()) as (port, proc):
        results = await storm(port, ctx, heavy, STORM)
        alive = proc.poll() is None
        hwm = peak_rss(proc.pid) if alive else 0
        after = await storm(port, ctx, json.dumps(small_review()).encode(), 1)
    statuses = collections.Counter(r.status for r in results)
    log = (tmp_path / "log").read_text()
    assert alive and cgroup.oom_kills() == 0, (statuses, log[-2000:])
    assert set(statuses) <= {200, 429, 503}, [r.error for r in results if r.status == 0][:5]
    assert statuses[200] > 0 and statuses[429] > 0, statuses
    assert all(r.retry_after for r in results if r.status in (429, 503))
    # Injected, or (its time budget spent while queued) admitted unchanged: never an error.
    decisions = {r.decision for r in results if r.status == 200}
    assert decisions <= {"checkpoint-no-snapshot", "over-budget"}, decisions
    assert hwm < CHART_LIMIT, f"peak RSS {hwm / MIB:.0f} MiB"
    assert after[0].status == 200


async def test_a_normal_review_is_not_stalled_by_heavy_ones(certs, heavy, tmp_path):
    ctx = context(certs)
    small = json.dumps(small_review()).encode()
    with webhook_in(certs, tmp_path / "log") as (port, _):
        await storm(port, ctx, small, 1)  # warm: imports, first TLS handshake
        heavy_task = asyncio.ensure_future(storm(port, ctx, heavy, 3))
        probes = await probe_while(port, ctx, small, heavy_task)
        heavies = await heavy_task
    assert [h.status for h in heavies] == [200] * 3
    assert all(h.decision == "checkpoint-no-snapshot" for h in heavies)  # really mutated
    assert len(probes) >= 2 and all(p.status == 200 for p in probes)
    slowest = max(p.seconds for p in probes)
    assert slowest < 1.5, f"a normal review waited {slowest:.2f}s behind heavy ones"


async def test_review_over_its_size_budget_is_admitted_unchanged(certs, heavy, tmp_path):
    ctx = context(certs)
    with webhook_in(certs, tmp_path / "log", "--review-budget-bytes=1000000") as (port, _):
        [result] = await storm(port, ctx, heavy, 1)
        [fine] = await storm(port, ctx, json.dumps(small_review()).encode(), 1)
        _, metrics = request(port, certs / "ca.crt", "GET", "/metrics")
    assert (result.status, result.decision) == (200, "over-budget")
    assert b"thaw_webhook_over_budget_total 1.0" in metrics
    assert fine.decision == "checkpoint-no-snapshot"


async def test_review_over_its_time_budget_fails_open(certs, heavy, tmp_path):
    ctx = context(certs)
    with webhook_in(certs, tmp_path / "log", "--review-budget-seconds=0.001") as (port, _):
        [result] = await storm(port, ctx, heavy, 1)
    # Not parsed yet: 503 so the API server applies failurePolicy Ignore; parsed: skip.
    assert (result.status, result.decision) in ((503, ""), (200, "over-budget")), result
    if result.status == 503:
        assert result.retry_after
