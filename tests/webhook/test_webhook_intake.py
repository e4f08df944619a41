"""Admission control of the real server over TLS: caps answered with 429, Expect before 100.

Raw TLS sockets, so each test controls which bytes arrive when: a review
that holds its slot by never finishing its body, a declared size that
does not fit, ``Expect: 100-continue`` that must not be told to go on.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time

import pytest
from hostile_load import small_review, webhook_in
from webhook_tls_server import generate_certs, request

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generate_certs(tmp_path_factory.mktemp("certs"))


@contextlib.contextmanager
def tls_socket(port: int, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        yield s


def head(length: int | None = None, *extra: str) -> bytes:
    lines = ["POST /mutate HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def first_bytes(s: ssl.SSLSocket, timeout_s: float = 5) -> bytes:
    s.settimeout(timeout_s)
    return s.recv(65536)


def review_bytes() -> bytes:
    return json.dumps(small_review()).encode()


def test_review_cap_sheds_with_429_and_retry_after(certs, tmp_path):
    with webhook_in(certs, tmp_path / "log", "--max-inflight-reviews=1") as (port, _):
        with tls_socket(port, certs) as holder:
            holder.sendall(head(1000))  # holds the only slot: its body never comes
            time.sleep(0.3)
            with tls_socket(port, certs) as s:
                body = review_bytes()
                s.sendall(head(len(body)) + body)
                data = first_bytes(s)
        assert data.startswith(b"HTTP/1.1 429"), data[:200]
        assert b"Retry-After: 1" in data and b"reviews in flight" in data
        with tls_socket(port, certs) as s:  # the slot is free again once the holder left
            body = review_bytes()
            s.sendall(head(len(body)) + body)
            assert first_bytes(s).startswith(b"HTTP/1.1 200")
        _, metrics = request(port, certs / "ca.crt", "GET", "/metrics")
    assert b"thaw_webhook_shed_total 1.0" in metrics
    assert b"thaw_webhook_inflight_reviews 0.0" in metrics


def test_byte_cap_sheds_declared_and_chunked_bodies_but_not_small_ones(certs, tmp_path):
    extra = (
        f"--max-body-bytes={MAX_BODY}",
        f"--max-inflight-bytes={MAX_BODY + 1000}",
        "--large-body-bytes=16384",
    )
    with (
        webhook_in(certs, tmp_path / "log", *extra) as (port, _),
        tls_socket(port, certs) as holder,
    ):
        holder.sendall(head(MAX_BODY))  # reserves 64 KiB, sends nothing more
        time.sleep(0.3)
        with tls_socket(port, certs) as s:
            s.sendall(head(MAX_BODY))
            declared = first_bytes(s)
        with tls_socket(port, certs) as s:
            s.sendall(head(None, "Transfer-Encoding: chunked"))
            for _ in range(4):
                s.sendall(b"1000\r\n" + b" " * 0x1000 + b"\r\n")
            chunked = first_bytes(s)
        with tls_socket(port, certs) as s:  # small: fits the reserve
            body = review_bytes()
            s.sendall(head(len(body)) + body)
            small = first_bytes(s)
    assert declared.startswith(b"HTTP/1.1 429") and b"Retry-After" in declared, declared[:200]
    assert chunked.startswith(b"HTTP/1.1 429") and b"Retry-After" in chunked, chunked[:200]
    assert small.startswith(b"HTTP/1.1 200"), small[:200]


def test_expect_100_continue_with_oversized_length_gets_413_without_continue(certs, tmp_path):
    with webhook_in(certs, tmp_path / "log", f"--max-body-bytes={MAX_BODY}") as (port, _):
        with tls_socket(port, certs) as s:
            s.sendall(head(10 * MAX_BODY, "Expect: 100-continue"))
            refused = first_bytes(s)
        with tls_socket(port, certs) as s:
            body = review_bytes()
            s.sendall(head(len(body), "Expect: 100-continue"))
            go_on = first_bytes(s)
            s.sendall(body)
            answer = go_on if b"200 OK" in go_on else go_on + first_bytes(s)
    assert refused.startswith(b"HTTP/1.1 413"), refused[:200]
    assert b"100 Continue" not in refused
    assert go_on.startswith(b"HTTP/1.1 100 Continue"), go_on[:200]
    assert b"HTTP/1.1 200" in answer


def test_malformed_requests_log_one_line_without_traceback(certs, tmp_path):
    log = tmp_path / "log"
    with webhook_in(certs, log) as (port, _):
        for bad in (
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            with tls_socket(port, certs) as s:
                s.sendall(bad)
                assert first_bytes(s).split(b"\r\n")[0].endswith(b" 400 Bad Request")
        time.sleep(0.2)
        text = log.read_text()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "Error handling request" in line]
    assert len(lines) == 2 and all("BadHttpMessage" in ln or "Invalid" in ln for ln in lines)


def test_connections_past_the_cap_wait_and_are_then_served(certs, tmp_path):
    with webhook_in(certs, tmp_path / "log", "--max-connections=2") as (port, _):
        with tls_socket(port, certs) as a, tls_socket(port, certs) as b:
            a.sendall(head(100))  # both slots busy: bodies never finish
            b.sendall(head(100))
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
            waiting = ctx.wrap_socket(
                raw, server_hostname="127.0.0.1", do_handshake_on_connect=False
            )
            waiting.setblocking(False)
            with pytest.raises(ssl.SSLWantReadError):
                waiting.do_handshake()  # not accepted yet: no server hello
            waiting.setblocking(True)
        # a and b are gone: the third connection is accepted and answered.
        waiting.settimeout(10)
        waiting.do_handshake()
        body = review_bytes()
        waiting.sendall(head(len(body)) + body)
        assert first_bytes(waiting).startswith(b"HTTP/1.1 200")
        waiting.close()
