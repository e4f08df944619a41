"""Hostile or slow clients against the real server over TLS: bounded time, bounded memory.

Raw TLS sockets, so the test controls exactly which bytes arrive when: a
body that trickles, headers that never end, a declared or chunked body over
the limit that is answered before it is sent whole, and 200 connections at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
import uuid

import aiohttp
import pytest
from webhook_support import load_case
from webhook_tls_server import generate_certs, running_webhook_process

BODY_TIMEOUT_S = 1.0
KEEPALIVE_S = 1.5
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    certs = generate_certs(tmp_path_factory.mktemp("certs"))
    extra = (
        "--body-timeout",
        str(BODY_TIMEOUT_S),
        "--keepalive-timeout",
        str(KEEPALIVE_S),
        "--max-body-bytes",
        str(MAX_BODY),
    )
    with running_webhook_process(certs, *extra) as (port, proc):
        yield port, proc, ssl.create_default_context(cafile=str(certs / "ca.crt"))


@contextlib.contextmanager
def tls_socket(port: int, ctx: ssl.SSLContext):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        yield s


def read_until_closed(s: ssl.SSLSocket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; (data, seconds it took)."""
    started = time.monotonic()
    s.settimeout(limit_s)
    data = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while chunk := s.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def headers(content_length: int | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /mutate HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_trickled_body_gets_408_and_the_connection_is_dropped(server):
    port, proc, ctx = server
    with tls_socket(port, ctx) as s:
        s.sendall(headers(content_length=4096))
        started = time.monotonic()
        s.settimeout(0.2)
        data = b""
        # One byte every 0.2 s: the connection is never idle, the body never done.
        while time.monotonic() - started < 6 and not data:
            try:
                s.sendall(b" ")
                data = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        rest, _ = read_until_closed(s, 5)
        elapsed = time.monotonic() - started
    response = data + rest
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"not received within" in response
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 4, elapsed
    assert proc.poll() is None


def test_headers_that_never_end_are_dropped(server):
    port, _, ctx = server
    with tls_socket(port, ctx) as s:
        s.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        data, elapsed = read_until_closed(s, 10)
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:200]
    assert elapsed < KEEPALIVE_S + 4, elapsed


def test_idle_connection_is_closed(server):
    port, _, ctx = server
    with tls_socket(port, ctx) as s:
        data, elapsed = read_until_closed(s, 10)
    assert data == b"" and elapsed < KEEPALIVE_S + 4, elapsed


def test_declared_oversize_is_413_before_any_body_byte(server):
    port, _, ctx = server
    with tls_socket(port, ctx) as s:
        s.sendall(headers(content_length=100 * MAX_BODY))
        s.settimeout(5)
        data = s.recv(65536)  # answered although not one body byte was sent
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


def test_chunked_oversize_is_413_before_the_body_ends(server):
    """No Content-Length: the limit trips while streaming, with the body still open."""
    port, _, ctx = server
    with tls_socket(port, ctx) as s:
        s.sendall(headers(chunked=True))
        chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
        for _ in range(MAX_BODY // 0x2000 + 2):
            s.sendall(chunk)
        # The terminating 0-length chunk is never sent.
        s.settimeout(5)
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"limit" in data


async def test_200_concurrent_connections_all_answered(server):
    port, proc, ctx = server
    review = load_case("checkpoint-native")["review"]
    url = f"https://127.0.0.1:{port}/mutate"

    async def one(i: int) -> tuple[int, str, str]:
        body = json.loads(json.dumps(review))
        body["request"]["uid"] = uid = f"{i}-{uuid.uuid4()}"
        # A connector per client: 200 distinct TLS connections, all open at once.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as resp,
        ):
            out = await resp.json()
            return resp.status, uid, out["response"]["uid"]

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert [r[0] for r in results] == [200] * 200
    assert all(sent == got for _, sent, got in results)
    assert proc.poll() is None
