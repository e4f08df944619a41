"""A real ``thaw webhook serve`` on 127.0.0.1 with fresh certificates, for the webhook benches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THAW = [sys.executable, "-m", "thaw.cli"]


def start_server(work: Path, core: str | None = None) -> tuple[subprocess.Popen, int]:
    """Certs into ``work``, then the server (pinned to ``core`` if given); (process, port)."""
    subprocess.run(
        [*THAW, "certs", "generate", "--hosts", "127.0.0.1", "--out", str(work)],
        check=True,
        capture_output=True,
    )
    port_file = work / "port"
    argv = [*THAW, "webhook", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    argv += ["--tls-cert", str(work / "tls.crt"), "--tls-key", str(work / "tls.key")]
    if core is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", core, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("webhook did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())
