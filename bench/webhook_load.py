"""Open-loop load on ``thaw webhook serve`` over loopback TLS: p50/p99 and errors per rate.

The server runs pinned to one core (``taskset -c 0``); the load generator is
a separate process (this script with ``--generator``, pinned to core 1) that
sends AdmissionReviews of a realistic Deployment pod (the checkpoint-native
golden case) at a FIXED arrival rate - request i leaves at t0 + i/rate
whether or not earlier ones have been answered - over a pool of kept-alive,
CA-verified HTTPS connections, as the API server does. Latency is measured
from the scheduled send time, so queueing in front of a slow server counts.
An error is a non-200, a wrong uid, no patch, or no answer within 5 s (the
webhook timeout the chart configures). Target: p99 <= 10 ms at 200/s.

Usage: python bench/webhook_load.py [--rates 50,200,500] [--duration 10]
       [--out bench/results/webhook-load.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from webhook_server import start_server  # noqa: E402  (bench/, beside this script)

CASE = REPO / "tests" / "golden" / "checkpoint-native.review.json"
ANSWER_TIMEOUT_S = 5.0
CONNECTIONS = 64


def pct(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- load generator (child process) ---------------------------------------------------
async def generate(port: int, ca: str, rate: float, duration: float) -> dict:
    import ssl

    import aiohttp

    review = json.loads(CASE.read_text())["review"]
    ctx = ssl.create_default_context(cafile=ca)
    url = f"https://127.0.0.1:{port}/mutate"
    total = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(ssl=ctx, limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        # Warm-up, not measured: open the connection pool (handshakes are not what this
        # measures) and let the server's first requests pay their one-time costs.
        data = json.dumps(review).encode()
        for _ in range(5):
            posts = [session.post(url, data=data) for _ in range(20)]
            for resp in await asyncio.gather(*posts):
                resp.release()

        async def one(i: int, due: float) -> None:
            body = dict(review, request={**review["request"], "uid": f"load-{i}"})
            data = json.dumps(body).encode()
            try:
                async with session.post(
                    url, data=data, headers={"Content-Type": "application/json"}
                ) as resp:
                    out = await resp.json()
                    done = loop.time()
                    if resp.status != 200:
                        return error(f"http-{resp.status}")
                    r = out.get("response", {})
                    if r.get("uid") != f"load-{i}" or "patch" not in r:
                        return error("bad-answer")
                    latencies.append((done - due) * 1000)
            except TimeoutError:
                error("timeout")
            except aiohttp.ClientError as e:
                error(type(e).__name__)

        t0 = loop.time() + 0.05
        tasks = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        sent_s = loop.time() - t0
        await asyncio.gather(*tasks)
    return {
        "rate": rate,
        "sent": total,
        "send_seconds": round(sent_s, 3),
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": pct(latencies, 50),
        "p90_ms": pct(latencies, 90),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
    }


# --- driver ---------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_rate(port: int, ca: Path, rate: float, duration: float, core: str) -> dict:
    argv = [sys.executable, __file__, "--generator", "--port", str(port), "--ca", str(ca)]
    argv += ["--rate", str(rate), "--duration", str(duration)]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        argv = ["taskset", "-c", core, *argv]
    load_before = os.getloadavg()[0]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
    result = json.loads(done.stdout)
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPU cores ({model or platform.processor()}), {mem:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def table(results: list[dict]) -> str:
    head = (
        "| rate (/s) | sent | sent in s | ok | errors | p50 ms | p90 ms | p99 ms | max ms "
        "| load avg before→after |\n"
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n"
    )
    rows = [
        f"| {r['rate']:.0f} | {r['sent']} | {r['send_seconds']:.2f} | {r['ok']} "
        f"| {sum(r['errors'].values())}"
        f"{' ' + json.dumps(r['errors']) if r['errors'] else ''} | {r['p50_ms']:.2f} | "
        f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
        f"{r['load_before']:.2f}→{r['load_after']:.2f} |"
        for r in results
    ]
    return head + "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="50,200,500")
    ap.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "webhook-load.md"))
    ap.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        print(json.dumps(asyncio.run(generate(args.port, args.ca, args.rate, args.duration))))
        return 0

    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proc, port = start_server(work, core="0")
        try:
            rss_start = rss_mib(proc.pid)
            results = [run_rate(port, work / "ca.crt", r, args.duration, core="1") for r in rates]
            rss_end = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    text = table(results)
    print(text)
    p200 = next((r for r in results if r["rate"] == 200), None)
    verdict = ""
    if p200:
        ok = p200["p99_ms"] <= 10 and not p200["errors"]
        verdict = (
            f"200/s: p99 {p200['p99_ms']:.2f} ms, target <= 10 ms: {'met' if ok else 'MISSED'}"
        )
        print(verdict)
    print(f"server RSS {rss_start:.1f} -> {rss_end:.1f} MiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Webhook load (open loop, loopback TLS)\n\n"
        f"`python bench/webhook_load.py --rates {args.rates} --duration {args.duration:g}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        f"Machine: {machine()}. Server pinned to core 0 (`taskset -c 0`), load generator "
        "(separate process, aiohttp, up to "
        f"{CONNECTIONS} kept-alive connections) pinned to core 1. The machine is shared: other "
        "jobs may have been running; the 1-minute load average before and after each rate is "
        "in the table.\n\n"
        "Each rate runs for the stated duration with a fixed arrival schedule; latency is from "
        "the scheduled send time to the parsed answer (queueing included). Request: the "
        "checkpoint-native golden AdmissionReview (a Deployment pod, ~3 KiB), answered with a "
        "JSON patch. 'sent in s' is how long the schedule took: equal to the duration means "
        "the generator held the arrival rate.\n\n"
        + text
        + (f"\n{verdict}\n" if verdict else "")
        + f"\nServer RSS {rss_start:.1f} MiB before, {rss_end:.1f} MiB after all rates.\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
