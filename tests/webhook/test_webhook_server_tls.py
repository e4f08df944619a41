"""The webhook as the API server meets it: a real process, real TLS on loopback.

Clients verify the server against ``ca.crt`` from ``thaw certs generate``
and the IP SAN, exactly as the API server does with ``caBundle``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import ssl
import time

import aiohttp
import jsonpatch
import pytest
from webhook_support import load_case
from webhook_tls_server import generate_certs, post_json, request, running_webhook

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    certs = generate_certs(tmp_path_factory.mktemp("certs"))
    with running_webhook(certs, "--max-body-bytes", str(MAX_BODY)) as port:
        yield port, certs / "ca.crt"


def review(name="checkpoint-native"):
    return copy.deepcopy(load_case(name)["review"])


def metric(text: str, name: str, **labels) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(sel)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_mutate_over_verified_tls_ignores_timeout_query(server):
    port, ca = server
    body = review()
    status, out = post_json(port, ca, body, "/mutate?timeout=10s")
    assert status == 200
    r = out["response"]
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert r["uid"] == body["request"]["uid"] and r["allowed"] is True
    assert r["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(body["request"]["object"], json.loads(base64.b64decode(r["patch"])))
    assert pod["metadata"]["annotations"]["thaw.dev/injected"] == "checkpoint"


def test_untrusted_ca_is_refused(server, tmp_path):
    port, _ = server
    other = generate_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, other / "ca.crt", "GET", "/healthz")


def test_skip_has_no_patch_and_says_why(server):
    port, ca = server
    status, out = post_json(port, ca, review("skip-no-command"))
    r = out["response"]
    assert status == 200 and r["allowed"] is True and "patch" not in r
    assert "no-command" in r["warnings"][0] and r["auditAnnotations"]["decision"] == "no-command"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "no request"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}',
            "no request",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
            b'"request":{"uid":7,"kind":{"kind":"Pod"},"object":{}}}',
            "uid",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
            b'"request":{"uid":"u","kind":"Pod","object":{}}}',
            "request.kind",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
            b'"request":{"uid":"u","kind":{"kind":"Pod"},"operation":1,"object":{}}}',
            "operation",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
            b'"request":{"uid":"u","kind":{"kind":"Pod"}}}',
            "object",
        ),
        (b"[" * 20000 + b"]" * 20000, "not JSON"),
    ],
)
def test_bad_reviews_get_400_with_a_message(server, body, needle):
    port, ca = server
    status, data = request(port, ca, "POST", "/mutate", body)
    assert status == 400
    assert needle in json.loads(data)["error"]


def test_pod_it_cannot_understand_is_admitted_unchanged(server):
    port, ca = server
    body = review()
    body["request"]["object"]["spec"] = "not a spec"
    status, out = post_json(port, ca, body)
    assert status == 200 and out["response"]["allowed"] and "patch" not in out["response"]
    assert out["response"]["auditAnnotations"]["decision"] == "malformed-pod"


def test_oversized_body_by_content_length_is_413(server):
    port, ca = server
    status, data = request(port, ca, "POST", "/mutate", b"x" * (MAX_BODY + 1))
    assert status == 413 and "limit" in json.loads(data)["error"]


async def test_oversized_chunked_body_is_413_while_streaming(server):
    """No Content-Length: the limit is enforced while reading, not after."""
    port, ca = server

    async def chunks():
        for _ in range(MAX_BODY // 4096 + 8):
            yield b" " * 4096

    ctx = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{port}/mutate"
    async with aiohttp.ClientSession() as s, s.post(url, data=chunks(), ssl=ctx) as resp:
        assert resp.status == 413
        assert "limit" in (await resp.json())["error"]


def test_health_ready_and_metrics_count(server):
    port, ca = server
    assert request(port, ca, "GET", "/healthz")[0] == 200
    assert request(port, ca, "GET", "/readyz") == (200, b"ready\n")
    _, before = request(port, ca, "GET", "/metrics")
    post_json(port, ca, review("skip-mode-off"))
    post_json(port, ca, review("skip-mode-off"))
    request(port, ca, "POST", "/mutate", b"nope")
    _, after = request(port, ca, "GET", "/metrics")
    b, a = before.decode(), after.decode()
    d = "thaw_webhook_decisions_total"
    assert metric(a, d, reason="mode-off") - metric(b, d, reason="mode-off") == 2
    r = "thaw_webhook_requests_total"
    assert metric(a, r, code="400") - metric(b, r, code="400") == 1
    assert metric(a, r, code="200") - metric(b, r, code="200") == 2
    assert "thaw_webhook_request_duration_seconds_bucket" in a


def test_rotated_certificate_is_served_without_restart(tmp_path):
    certs = generate_certs(tmp_path / "certs")
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes((certs / "ca.crt").read_bytes())
    with running_webhook(certs, "--cert-check-interval", "0.1") as port:
        assert request(port, old_ca, "GET", "/healthz")[0] == 200
        generate_certs(certs)  # new CA and serving pair, written over the live files
        new_ca = certs / "ca.crt"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert request(port, new_ca, "GET", "/readyz")[0] == 200
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline, "rotated certificate never served"
                time.sleep(0.05)
        with pytest.raises(ssl.SSLCertVerificationError):
            request(port, old_ca, "GET", "/healthz")
