"""Fuzzing with mutated real AdmissionReviews, in-process and against the real server.

Every answer must be a well-formed AdmissionReview (allowed, with a reason)
or a 4xx with a message: never a 5xx, never a crash, and the server's memory
must stay flat over thousands of requests. Each test prints how many cases
it ran (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from review_mutations import (
    CONFUSED,
    Case,
    check_answer,
    deleted,
    encode,
    get,
    mutations,
    paths,
    replaced,
)
from test_webhook_properties import AlwaysReady, json_value
from webhook_support import golden_cases, load_case, unsynced_cluster_view
from webhook_tls_server import generate_certs, rss_bytes, running_webhook_process

from webhook.config import InjectConfig
from webhook.decision import Reason
from webhook.server import answer

CORPUS = list(mutations())
RSS_GROWTH_LIMIT = 24 * 1024 * 1024
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    total = sum(COUNTS.values())
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\nwebhook fuzz cases executed: {total} {COUNTS}")


def test_corpus_in_process_every_answer_is_well_formed():
    internal = []
    for view in (AlwaysReady(), unsynced_cluster_view()):
        for case in CORPUS:
            status, payload, decision = answer(case.body, InjectConfig(), view)
            problem = check_answer(case, status, payload)
            assert not problem, f"{case.name[:300]}: {problem}"
            if ":nonfinite:" in case.name or ":deep:" in case.name:
                # Not JSON the API server could send (NaN, 1e999), or nesting past any
                # sane bound: a clear 400 rather than a guess.
                assert status == 400, case.name[:300]
            if decision is not None and decision.reason is Reason.INTERNAL_ERROR:
                internal.append(case.name[:200])
    COUNTS["corpus-in-process"] = 2 * len(CORPUS)
    assert len(CORPUS) > 2000
    # A bug would show up as internal-error: still admitted, but it must not happen.
    assert not internal, internal[:5]


REVIEWS = [load_case(n)["review"] for n in golden_cases()]


@st.composite
def mutated_reviews(draw):
    review = draw(st.sampled_from(REVIEWS))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = list(paths(review))
        path = draw(st.sampled_from(all_paths))
        if path and draw(st.booleans()):
            review = deleted(review, path)
        else:
            review = replaced(review, path, draw(st.sampled_from(CONFUSED) | json_value))
    return review


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_reviews())
def test_hypothesis_mutations_of_real_reviews(review):
    COUNTS["hypothesis"] = COUNTS.get("hypothesis", 0) + 1
    case = Case("hypothesis", encode(review), review)
    status, payload, decision = answer(case.body, InjectConfig(), AlwaysReady())
    assert not check_answer(case, status, payload)
    assert decision is None or decision.reason is not Reason.INTERNAL_ERROR
    if status == 200:
        uid = get(review, ("request", "uid"))
        assert payload["response"]["uid"] == uid


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    certs = generate_certs(tmp_path_factory.mktemp("certs"))
    with running_webhook_process(certs) as (port, proc):
        yield port, proc, ssl.create_default_context(cafile=str(certs / "ca.crt"))


async def _send_all(port: int, ctx: ssl.SSLContext, cases: list[Case], parallel: int = 8):
    """(case, status, payload) for each case, ``parallel`` keep-alive connections."""
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for c in cases:
        queue.put_nowait(c)
    results = []
    url = f"https://127.0.0.1:{port}/mutate"
    conn = aiohttp.TCPConnector(ssl=ctx, limit=parallel)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker():
            while not queue.empty():
                c = queue.get_nowait()
                async with session.post(
                    url, data=c.body, headers={"Content-Type": "application/json"}
                ) as resp:
                    results.append((c, resp.status, json.loads(await resp.read())))

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return results


async def test_real_server_answers_the_corpus_with_flat_memory(server):
    port, proc, ctx = server
    warmup = CORPUS[::5]  # every kind of case, huge bodies included
    for case, status, payload in await _send_all(port, ctx, warmup):
        assert status < 500 and not check_answer(case, status, payload), case.name[:300]
    before = rss_bytes(proc.pid)
    sent = 0
    for _ in range(2):
        for case, status, payload in await _send_all(port, ctx, CORPUS):
            assert status < 500 and not check_answer(case, status, payload), case.name[:300]
            sent += 1
    after = rss_bytes(proc.pid)
    COUNTS["over-tls"] = len(warmup) + sent
    assert proc.poll() is None, "server died"
    growth = after - before
    print(f"\nserver RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB over {sent} requests")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
