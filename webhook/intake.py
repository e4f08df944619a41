"""Getting a review's body in without trusting the client: size, pace and bytes in flight.

``refusal`` answers before a body byte is read (and, for ``Expect:
100-continue``, before the client is told to send it): 413 for a declared
size over the limit, 429 at a cap of the ``Gate``. ``read_body`` then
counts bytes as they arrive, so a chunked body is held to the same limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from aiohttp import web
from aiohttp.http import HttpVersion11

from webhook.limits import Gate, Limits, Shed, Ticket

READ_CHUNK = 64 * 1024


class TooLarge(Exception):
    """The body is over ``max_body_bytes`` (HTTP 413)."""


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def shed(limits: Limits, why: str) -> web.Response:
    resp = error(429, f"webhook busy: {why}", **{"Retry-After": str(limits.retry_after_s)})
    resp.force_close()  # the unread body is drained briefly, then the connection closes
    return resp


def refusal(req: web.Request, gate: Gate) -> web.Response | None:
    """A 413 or 429 to send before reading the body, or None to go on."""
    declared, limit = req.content_length, gate.limits.max_body_bytes
    if declared is not None and declared > limit:
        resp = error(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
        resp.force_close()
        return resp
    try:
        gate.check(declared)
    except Shed as e:
        return shed(gate.limits, str(e))
    return None


async def read_body(req: web.Request, ticket: Ticket, limit: int, timeout_s: float) -> bytes:
    """The whole body, counted against ``ticket`` as it arrives.

    Raises TooLarge, Shed (bytes cap reached mid-body) or TimeoutError.
    """
    declared = req.content_length
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        chunk = await asyncio.wait_for(req.content.readany(), left)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body exceeds the {limit}-byte limit")
        if declared is None:
            ticket.hold(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def make_expect_handler(gate_of, count):
    """aiohttp's ``expect_handler``: refuse before ``100 Continue`` when the answer is known.

    ``gate_of(req)`` gives the Gate; ``count(resp)`` records a refusal in metrics.
    """

    async def expect(req: web.Request) -> web.StreamResponse | None:
        expect_value = req.headers.get("Expect", "")
        if req.version != HttpVersion11:
            return None
        if expect_value.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect_value[:60]}")
        resp = refusal(req, gate_of(req))
        if resp is not None:
            count(req, resp)
            return resp
        await req.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        req.writer.output_size = 0  # the final response has not started yet
        return None

    return expect


class OneLineLogger(logging.LoggerAdapter):
    """aiohttp's server logger, minus the traceback per malformed request.

    A bad request line, header or chunk is the client's fault: one line saying
    what was wrong is enough, the traceback goes to debug.
    """

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc else "unknown"
        self.logger.warning(f"{msg}: %s", *args, reason)
        self.logger.debug(msg, *args, exc_info=exc_info, **kwargs)
