"""``thaw webhook serve``: the one place admission requests are handled.

POST /mutate takes an ``admission.k8s.io/v1`` AdmissionReview and answers
with the JSON patch of the pure mutation. Malformed envelopes get a 400, an
oversized body a 413 (checked before and while reading), and a pod the
webhook cannot understand is admitted unchanged with a reason - never a 5xx:
the configuration's failurePolicy is Ignore, but a crash would still cost
every pod creation the API server's timeout.

Slow clients are bounded: a body that does not arrive within
``BODY_READ_TIMEOUT_S`` gets a 408 and the connection is closed, and a
connection that never completes its request headers is dropped after the
keep-alive timeout (aiohttp arms it when the connection opens). The API
server gives up on a webhook after at most 30 s, so nothing legitimate is
slower than that.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from webhook.config import DEFAULT_MAX_BODY_BYTES, InjectConfig
from webhook.decision import Decision, Reason
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
K_MAX_BODY = web.AppKey("max_body_bytes", int)
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
        log.exception("injection failed for request %s", request.get("uid"))
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def handle_mutate(req: web.Request) -> web.Response:
    app = req.app
    metrics = app[K_METRICS]
    started = time.perf_counter()
    resp = await _mutate(req)
    metrics.requests.labels(code=str(resp.status)).inc()
    metrics.latency.observe(time.perf_counter() - started)
    return resp


async def _mutate(req: web.Request) -> web.Response:
    limit = req.app[K_MAX_BODY]
    if req.content_length is not None and req.content_length > limit:
        return _error(413, f"body of {req.content_length} bytes exceeds the {limit}-byte limit")
    timeout = req.app[K_BODY_TIMEOUT]
    try:
        # aiohttp stops at client_max_size while streaming (chunked bodies too).
        body = await asyncio.wait_for(req.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body exceeds the {limit}-byte limit")
    except TimeoutError:
        resp = _error(408, f"body not received within {timeout:g}s")
        resp.force_close()  # never reuse a connection left mid-body
        return resp
    status, payload, decision = answer(body, req.app[K_CONFIG], req.app[K_SNAPSHOTS])
    if decision is not None:
        req.app[K_METRICS].decisions.labels(reason=str(decision.reason)).inc()
    return web.json_response(payload, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def answer(
    body: bytes, config: InjectConfig, snapshots: SnapshotView
) -> tuple[int, dict[str, Any], Decision | None]:
    """(HTTP status, JSON payload, decision) for a request body; never raises.

    The whole answer, minus HTTP framing, so property tests can drive it.
    """
    try:
        request = parse_review(body)
    except BadReview as e:
        return 400, {"error": str(e)}, None
    try:
        injection = admit(request, config, snapshots)
        payload = review_response(request["uid"], request["object"], injection)
    except Exception as e:  # e.g. a diff that recursed too deep: admit unchanged
        log.exception("building the response failed for %s", request["uid"])
        injection = Injection(Decision(Reason.INTERNAL_ERROR, type(e).__name__), None)
        payload = review_response(request["uid"], None, injection)
    log.debug("%s %s", request["uid"], injection.decision.message())
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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cert_check_interval_s: float = 10.0,
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S,
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    app[K_CONFIG] = config
    app[K_SNAPSHOTS] = snapshots
    app[K_METRICS] = WebhookMetrics()
    app[K_METRICS].watch_snapshot_view(snapshots)
    app[K_MAX_BODY] = max_body_bytes
    app[K_CERT_INTERVAL] = cert_check_interval_s
    app[K_BODY_TIMEOUT] = body_read_timeout_s
    if serving_cert is not None:
        app[K_CERT] = serving_cert
        app.cleanup_ctx.append(_watch_cert)
    app.router.add_post("/mutate", handle_mutate)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


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
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
        lingering_time=LINGERING_TIME_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=serving_cert.context, backlog=512)
    await site.start()
    gc.freeze()  # start-up objects never need scanning again: shorter GC pauses per request
    bound = runner.addresses[0] if runner.addresses else (host, port)
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
        await runner.cleanup()
