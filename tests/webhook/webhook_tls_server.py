"""A real ``thaw webhook serve`` process on loopback TLS, certs from ``thaw certs generate``."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

THAW = [sys.executable, "-m", "thaw.cli"]


def generate_certs(out: Path, hosts: str = "127.0.0.1,localhost") -> Path:
    subprocess.run(
        [*THAW, "certs", "generate", "--hosts", hosts, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@contextlib.contextmanager
def running_webhook(certs: Path, *extra: str) -> Iterator[int]:
    """Start the server on an ephemeral port; yield the port; SIGTERM it afterwards."""
    with running_webhook_process(certs, *extra) as (port, _):
        yield port


def status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory field of a live process's /proc status (VmRSS: now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process, from /proc."""
    return status_bytes(pid, "VmRSS")


@contextlib.contextmanager
def running_webhook_process(
    certs: Path,
    *extra: str,
    prefix: tuple[str, ...] = (),
    log: Path | None = None,
    repo: Path | None = None,
) -> Iterator[tuple[int, subprocess.Popen]]:
    """As ``running_webhook``, also yielding the process (RSS, liveness);
    ``prefix`` wraps the command (e.g. ``taskset -c 0``); ``log``: output to that file
    (never a pipe that fills up under load); ``repo``: another checkout's server."""
    port_file = certs.parent / f"port-{time.monotonic_ns()}"
    argv = [*prefix, *THAW, "webhook", "serve", "--listen", "127.0.0.1:0"]
    argv += ["--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")]
    argv += ["--port-file", str(port_file), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if repo is not None:
        env["PYTHONPATH"] = str(repo)
    out = log.open("wb") if log is not None else None
    with out or contextlib.nullcontext():
        proc = subprocess.Popen(
            argv,
            stdout=out or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=repo,
        )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                if log is not None:
                    said = log.read_text(errors="replace")
                else:
                    said = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"webhook did not start (rc={proc.poll()}):\n{said}")
            time.sleep(0.02)
        yield int(port_file.read_text()), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client_context(ca_file: Path) -> ssl.SSLContext:
    """Verifies the chain and the host name (IP SAN 127.0.0.1), like the API server."""
    return ssl.create_default_context(cafile=str(ca_file))


def request(
    port: int,
    ca: Path,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(ca), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post_json(port: int, ca: Path, obj, path: str = "/mutate") -> tuple[int, dict]:
    status, data = request(
        port, ca, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(data)
