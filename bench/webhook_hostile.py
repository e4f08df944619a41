"""The webhook under hostile load: peak memory, and how long normal reviews wait meanwhile.

Starts ``thaw webhook serve`` inside a memory cgroup with the chart's limit
(256 MiB; ``--no-cgroup`` to run without), fires ``--heavy`` concurrent
~3 MiB opted-in reviews, each on its own TLS connection, and meanwhile sends
small reviews one after another on a kept-alive connection. Prints the
answers by status, the server's peak RSS (VmHWM) and cgroup peak, OOM kills,
and p50/p99/max latency of the small reviews. ``--repo`` runs another
checkout's server (e.g. an older commit, for before/after figures).

Usage: python bench/webhook_hostile.py [--heavy 250] [--repo PATH] [--no-cgroup]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import ssl
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "webhook"))

from hostile_load import (  # noqa: E402  (tests/webhook helpers)
    MemoryCgroup,
    heavy_review,
    peak_rss,
    percentile,
    probe_while,
    small_review,
    storm,
    webhook_in,
)
from webhook_tls_server import generate_certs  # noqa: E402

MIB = 1024 * 1024


async def run(port: int, ctx: ssl.SSLContext, heavy: bytes, small: bytes, count: int):
    await storm(port, ctx, small, 1)  # warm-up
    busy = asyncio.ensure_future(storm(port, ctx, heavy, count))
    probes = await probe_while(port, ctx, small, busy)
    return await busy, probes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heavy", type=int, default=250, help="concurrent ~3 MiB reviews")
    ap.add_argument("--heavy-bytes", type=int, default=3 * MIB)
    ap.add_argument("--limit-mib", type=int, default=256, help="cgroup memory limit")
    ap.add_argument("--no-cgroup", action="store_true")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose server runs")
    args = ap.parse_args()

    group = None
    if not args.no_cgroup:
        try:
            group = MemoryCgroup(args.limit_mib * MIB)
        except OSError as e:
            print(f"no memory cgroup ({e}); run with --no-cgroup", file=sys.stderr)
            return 1
    heavy = json.dumps(heavy_review(args.heavy_bytes)).encode()
    small = json.dumps(small_review()).encode()
    with tempfile.TemporaryDirectory() as tmp:
        certs = generate_certs(Path(tmp) / "certs")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        prefix = group.prefix() if group else ()
        log = Path(tmp) / "server.log"
        with webhook_in(certs, log, prefix=prefix, repo=args.repo.resolve()) as (port, proc):
            results, probes = asyncio.run(run(port, ctx, heavy, small, args.heavy))
            alive = proc.poll() is None
            hwm = peak_rss(proc.pid) if alive else 0
    statuses = collections.Counter(r.status or "no answer" for r in results)
    lat = [p.seconds * 1000 for p in probes if p.status == 200]
    print(f"server: {args.repo.resolve()}")
    print(f"heavy reviews: {args.heavy} x {len(heavy) / MIB:.2f} MiB -> {dict(statuses)}")
    print(f"server alive afterwards: {alive}")
    print(f"peak RSS (VmHWM): {hwm / MIB:.0f} MiB" if alive else "peak RSS: n/a (server died)")
    if group:
        print(f"cgroup limit {args.limit_mib} MiB, peak usage {group.peak() / MIB:.0f} MiB")
        print(f"OOM kills: {group.oom_kills()}")
        group.remove()
    answers = dict(collections.Counter(p.status or "no answer" for p in probes))
    print(f"normal reviews during the storm: {len(probes)} -> {answers}")
    if lat:
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        print(f"normal review latency ms: p50 {p50:.0f}  p99 {p99:.0f}  max {max(lat):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
