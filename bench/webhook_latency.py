"""Admission latency of ``thaw webhook serve`` on loopback TLS, and the pure mutation alone.

Starts the real server with certs from ``thaw certs generate``, then sends
300 sequential AdmissionReviews for a realistic Deployment pod (the
checkpoint-native golden case) over one kept-alive, CA-verified HTTPS
connection (as the API server does), plus a run with a fresh TLS handshake
per review. Prints p50/p99 in ms; the target is p99 <= 10 ms. Then times the
pure ``inject`` and ``inject`` + JSON patch in microseconds.

Usage: python bench/webhook_latency.py [--reviews 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from webhook_server import start_server  # noqa: E402  (bench/, beside this script)

from webhook.config import InjectConfig  # noqa: E402
from webhook.mutate import inject  # noqa: E402
from webhook.patch import make_patch  # noqa: E402
from webhook.snapshots import NoSnapshots  # noqa: E402

CASE = REPO / "tests" / "golden" / "checkpoint-native.review.json"


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def post(conn: http.client.HTTPSConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/mutate?timeout=5s", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != 200 or b'"patch"' not in data:
        raise SystemExit(f"unexpected answer {resp.status}: {data[:200]!r}")
    return elapsed


def bench_http(port: int, ca: Path, body: bytes, n: int, keep_alive: bool) -> list[float]:
    ctx = ssl.create_default_context(cafile=str(ca))
    samples = []
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    for _ in range(5):  # warm-up
        post(conn, body)
    for _ in range(n):
        if not keep_alive:
            conn.close()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
            t0 = time.perf_counter()
            conn.connect()
            samples.append(time.perf_counter() - t0 + post(conn, body))
        else:
            samples.append(post(conn, body))
    conn.close()
    return samples


def bench_pure(pod: dict, n: int) -> tuple[list[float], list[float]]:
    config, view = InjectConfig(), NoSnapshots()
    mutate_s, with_patch_s = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        result = inject(pod, "inference", config, view)
        t1 = time.perf_counter()
        make_patch(pod, result.pod)
        t2 = time.perf_counter()
        mutate_s.append(t1 - t0)
        with_patch_s.append(t2 - t0)
    return mutate_s, with_patch_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=300)
    args = parser.parse_args()
    review = json.loads(CASE.read_text())["review"]
    body = json.dumps(review).encode()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"review body: {len(body)} bytes (Deployment pod, generateName, SA token volume)")
    with tempfile.TemporaryDirectory(prefix="thaw-bench-") as tmp:
        proc, port = start_server(Path(tmp))
        try:
            ca = Path(tmp) / "ca.crt"
            for label, keep in (("kept-alive TLS", True), ("new TLS connection each", False)):
                n = args.reviews if keep else max(50, args.reviews // 3)
                s = bench_http(port, ca, body, n, keep)
                print(
                    f"{label:<24} n={n:<4} p50={pct(s, 50) * 1e3:6.2f} ms  "
                    f"p99={pct(s, 99) * 1e3:6.2f} ms  max={max(s) * 1e3:6.2f} ms"
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    mutate_s, with_patch_s = bench_pure(review["request"]["object"], 2000)
    for label, s in (("inject (pure)", mutate_s), ("inject + JSON patch", with_patch_s)):
        print(
            f"{label:<24} n=2000 p50={pct(s, 50) * 1e6:7.1f} us p99={pct(s, 99) * 1e6:7.1f} us "
            f"mean={statistics.fmean(s) * 1e6:7.1f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
