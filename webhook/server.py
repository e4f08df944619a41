"""``thaw webhook serve``: the one place admission requests are handled.

POST /mutate takes an ``admission.k8s.io/v1`` AdmissionReview and answers
with the JSON patch of the pure mutation. Malformed envelopes get a 400, an
oversized body a 413 (checked before and while reading), and a pod the
webhook cannot understand is admitted unchanged with a reason - never a 5xx:
the configuration's failurePolicy is Ignore, but a crash would still cost
every pod creation the API server's timeout.

Memory and time are bounded per server and per review (``webhook.limits``):
reviews and body bytes in flight are capped (429 + Retry-After past a cap),
large bodies are handled off the event loop one at a time, and a review over
its time or size budget is admitted unchanged (``over-budget``).

Slow clients are bounded: a body that does not arrive within
``BODY_READ_TIMEOUT_S`` gets a 408 and the connection is closed, and a
connection that never completes its request headers is dropped after the
keep-alive timeout (aiohttp arms it when the connection opens). The API
server gives up on a webhook after at most 30 s, so nothing legitimate is
slower than that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import logging
import math
import signal
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from certs.files import ServingCert
from webhook.config import InjectConfig
from webhook.decision import Decision, Reason
from webhook.intake import (
    OneLineLogger,
    TooLarge,
    error,
    make_expect_handler,
    read_body,
    refusal,
    shed,
)
from webhook.limits import Gate, Job, Limits, OverBudget, Shed, one_malloc_arena
from webhook.listener import CappedListener
from webhook.metrics import WebhookMetrics
from webhook.mutate import Injection, inject
from webhook.patch import encode_patch, make_patch
from webhook.snapshots import SnapshotView

log = logging.getLogger(__name__)

REVIEW_API_VERSION = "admission.k8s.io/v1"
REVIEW_KIND = "AdmissionReview"
MAX_WARNING_CHARS = 250  # the API server truncates longer warnings
BODY_READ_TIMEOUT_S = 10.0  # the API server's own webhook timeout is at most 30 s
KEEPALIVE_TIMEOUT_S = 30.0  # idle or header-trickling connections are closed after this
LINGERING_TIME_S = 2.0  # after an early 413/408, drain the client's body this long at most

K_CERT = web.AppKey("serving_cert", ServingCert)
K_CONFIG = web.AppKey("config", InjectConfig)
K_SNAPSHOTS = web.AppKey("snapshots", object)
K_METRICS = web.AppKey("metrics", WebhookMetrics)
K_GATE = web.AppKey("gate", Gate)
K_POOL = web.AppKey("large_pool", concurrent.futures.ThreadPoolExecutor)
K_CERT_INTERVAL = web.AppKey("cert_check_interval_s", float)
K_BODY_TIMEOUT = web.AppKey("body_read_timeout_s", float)


class BadReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer (HTTP 400)."""


def parse_review(body: bytes) -> dict[str, Any]:
    """The ``request`` of a v1 AdmissionReview, with the fields we use type-checked."""
    try:
        review = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise BadReview(f"body is not JSON: {e}") from None
    if not isinstance(review, dict):
        raise BadReview("body must be a JSON object (an AdmissionReview)")
    if review.get("apiVersion") != REVIEW_API_VERSION or review.get("kind") != REVIEW_KIND:
        raise BadReview(f"expected apiVersion {REVIEW_API_VERSION} kind {REVIEW_KIND}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid must be a non-empty string")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise BadReview("request.kind must be an object with a string kind")
    for field in ("operation", "namespace"):
        if not isinstance(request.get(field, ""), str):
            raise BadReview(f"request.{field} must be a string")
    if "object" not in request:
        raise BadReview("request.object is missing")
    return request


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON does not, and echoing one into a
    # patch would hand the API server a body it cannot parse.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999: no JSON encoder can write it back
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def request_namespace(request: dict[str, Any]) -> str:
    obj = request.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    from_obj = meta.get("namespace") if isinstance(meta, dict) else None
    ns = request.get("namespace") or from_obj
    return ns if isinstance(ns, str) and ns else "default"


def review_kind(request: dict[str, Any]) -> str:
    gvk = request["kind"]
    core = gvk.get("group", "") == "" and gvk.get("version", "v1") == "v1"
    return gvk["kind"] if core else f"{gvk.get('group')}/{gvk['kind']}"


def admit(request: dict[str, Any], config: InjectConfig, snapshots: SnapshotView) -> Injection:
    try:
        return inject(
            request["object"],
            request_namespace(request),
            config,
            snapshots,
            kind=review_kind(request),
            operation=request.get("operation", "CREATE"),
        )
    except Exception as e:  # a bug must not block pod creation
        uid = request.get("uid")
        log.error("injection failed for request %s: %s: %s", uid, type(e).__name__, e)
        log.debug("injection failed", exc_info=True)
        return Injection(Decision(Reason.INTERNAL_ERROR, type(e).__name__), request["object"])


def review_response(uid: str, original: Any, injection: Injection) -> dict[str, Any]:
    decision = injection.decision
    response: dict[str, Any] = {
        "uid": uid,
        "allowed": True,
        "warnings": [decision.message()[:MAX_WARNING_CHARS]],
        "auditAnnotations": {"decision": str(decision.reason)},
    }
    if decision.inject:
        ops = make_patch(original, injection.pod)
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = encode_patch(ops)
    return {"apiVersion": REVIEW_API_VERSION, "kind": REVIEW_KIND, "response": response}


async def handle_mutate(req: web.Request) -> web.Response:
    started = time.perf_counter()
    resp = await _mutate(req, started)
    _count(req, resp, started)
    return resp


def _count(req: web.Request, resp: web.StreamResponse, started: float | None = None) -> None:
    metrics = req.app[K_METRICS]
    metrics.requests.labels(code=str(resp.status)).inc()
    if resp.status == 429:
        metrics.shed.inc()
    if started is not None:
        metrics.latency.observe(time.perf_counter() - started)


async def _mutate(req: web.Request, started: float) -> web.Response:
    app = req.app
    gate = app[K_GATE]
    refused = refusal(req, gate)
    if refused is not None:
        return refused
    ticket = gate.enter(req.content_length)
    try:
        timeout = app[K_BODY_TIMEOUT]
        try:
            body = await read_body(req, ticket, gate.limits.max_body_bytes, timeout)
        except TooLarge as e:
            resp = error(413, str(e))
            resp.force_close()
            return resp
        except Shed as e:
            return shed(gate.limits, str(e))
        except TimeoutError:
            resp = error(408, f"body not received within {timeout:g}s")
            resp.force_close()  # never reuse a connection left mid-body
            return resp
        status, payload, decision = await _review(app, body, started)
    finally:
        ticket.close()
    if decision is not None:
        app[K_METRICS].decisions.labels(reason=str(decision.reason)).inc()
    if isinstance(decision, OverBudget) or status == 503:
        app[K_METRICS].over_budget.inc()
    if status == 503:
        return error(503, payload["error"], **{"Retry-After": str(gate.limits.retry_after_s)})
    return web.json_response(payload, status=status, dumps=_dumps)


async def _review(
    app: web.Application, body: bytes, started: float
) -> tuple[int, dict[str, Any], Any]:
    """``answer`` inline for a small body, in the large-review pool within the time budget."""
    limits, config, snapshots = app[K_GATE].limits, app[K_CONFIG], app[K_SNAPSHOTS]
    if len(body) < limits.large_body_bytes:
        return answer(body, config, snapshots, budget_bytes=limits.budget_bytes)
    job = Job()
    future = app[K_POOL].submit(
        answer, body, config, snapshots, budget_bytes=limits.budget_bytes, job=job
    )
    left = limits.budget_s - (time.perf_counter() - started)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), max(left, 0.001))
    except TimeoutError:
        job.abandoned = True
    why = f"not answered within the {limits.budget_s:g}s budget"
    if not job.uid:  # not even parsed: the API server applies failurePolicy Ignore
        return 503, {"error": f"review {why}"}, None
    decision = OverBudget(why)
    return 200, review_response(job.uid, None, Injection(decision, None)), decision


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def answer(
    body: bytes,
    config: InjectConfig,
    snapshots: SnapshotView,
    *,
    budget_bytes: int | None = None,
    job: Job | None = None,
) -> tuple[int, dict[str, Any], Any]:
    """(HTTP status, JSON payload, decision) for a request body; never raises.

    The whole answer, minus HTTP framing, so property tests can drive it. A
    body over ``budget_bytes`` is admitted unchanged (``over-budget``); a
    ``job`` abandoned once parsed is not mutated at all.
    """
    try:
        request = parse_review(body)
    except BadReview as e:
        return 400, {"error": str(e)}, None
    uid = request["uid"]
    if job is not None:
        job.uid = uid
        if job.abandoned:  # nobody waits for this answer any more: skip the work
            return 503, {"error": "abandoned"}, None
    if budget_bytes and len(body) > budget_bytes:
        decision = OverBudget(f"review of {len(body)} bytes is over the {budget_bytes}-byte budget")
        return 200, review_response(uid, None, Injection(decision, None)), decision
    try:
        injection = admit(request, config, snapshots)
        payload = review_response(uid, request["object"], injection)
    except Exception as e:  # e.g. a diff that recursed too deep: admit unchanged
        log.error("building the response failed for %s: %s: %s", uid, type(e).__name__, e)
        log.debug("building the response failed", exc_info=True)
        injection = Injection(Decision(Reason.INTERNAL_ERROR, type(e).__name__), None)
        payload = review_response(uid, None, injection)
    log.debug("%s %s", uid, injection.decision.message())
    return 200, payload, injection.decision


async def handle_healthz(req: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def handle_readyz(req: web.Request) -> web.Response:
    cert_ok = req.app[K_CERT].loaded if K_CERT in req.app else True
    synced = bool(getattr(req.app[K_SNAPSHOTS], "synced", True))
    if cert_ok and synced:
        stale_for = getattr(req.app[K_SNAPSHOTS], "stale_for", lambda: None)()
        if stale_for is not None:
            # Still ready: answering from the last synced state beats sending every
            # pod through failurePolicy; the text names the outage for operators.
            error = getattr(req.app[K_SNAPSHOTS], "last_error", "")
            return web.Response(
                text=f"ready (degraded: snapshot cache stale for {stale_for:.0f}s: {error})\n"
            )
        return web.Response(text="ready\n")
    why = [
        w
        for w, bad in (("no certificate loaded", not cert_ok), ("snapshots not synced", not synced))
        if bad
    ]
    return web.Response(status=503, text="not ready: " + ", ".join(why) + "\n")


async def handle_metrics(req: web.Request) -> web.Response:
    body = generate_latest(req.app[K_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _watch_cert(app: web.Application):
    cert = app[K_CERT]

    async def loop() -> None:
        while True:
            await asyncio.sleep(app[K_CERT_INTERVAL])
            cert.reload_if_changed()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(
    config: InjectConfig,
    snapshots: SnapshotView,
    *,
    serving_cert: ServingCert | None = None,
    limits: Limits | None = None,
    max_body_bytes: int | None = None,
    cert_check_interval_s: float = 10.0,
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S,
) -> web.Application:
    limits = limits or Limits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(
            limits, max_body_bytes=max_body_bytes, max_bytes=max(limits.max_bytes, max_body_bytes)
        )
    app = web.Application(client_max_size=limits.max_body_bytes)
    app[K_CONFIG] = config
    app[K_SNAPSHOTS] = snapshots
    app[K_METRICS] = WebhookMetrics()
    app[K_METRICS].watch_snapshot_view(snapshots)
    app[K_GATE] = gate = Gate(limits)
    app[K_METRICS].watch_gate(gate)
    app[K_POOL] = concurrent.futures.ThreadPoolExecutor(
        limits.large_workers, thread_name_prefix="large-review"
    )
    app.on_cleanup.append(_stop_pool)
    app[K_CERT_INTERVAL] = cert_check_interval_s
    app[K_BODY_TIMEOUT] = body_read_timeout_s
    if serving_cert is not None:
        app[K_CERT] = serving_cert
        app.cleanup_ctx.append(_watch_cert)
    expect = make_expect_handler(lambda req: req.app[K_GATE], _count)
    app.router.add_post("/mutate", handle_mutate, expect_handler=expect)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def _stop_pool(app: web.Application) -> None:
    app[K_POOL].shutdown(wait=False, cancel_futures=True)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    serving_cert: ServingCert,
    ready_file: str = "",
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
) -> None:
    """Serve over TLS until SIGTERM/SIGINT."""
    one_malloc_arena()  # before the large-review thread starts
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=OneLineLogger(logging.getLogger("aiohttp.server"), {}),
        keepalive_timeout=keepalive_timeout_s,
        lingering_time=LINGERING_TIME_S,
    )
    await runner.setup()
    assert runner.server is not None
    max_connections = app[K_GATE].limits.max_connections
    listener = CappedListener(runner.server, serving_cert.context, host, port, max_connections)
    listener.start()
    gc.freeze()  # start-up objects never need scanning again: shorter GC pauses per request
    bound = listener.address
    log.info("webhook listening on https://%s:%s", bound[0], bound[1])
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(f"{bound[1]}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await listener.close()
        await runner.cleanup()
