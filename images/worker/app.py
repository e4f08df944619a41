"""Sample worker for the node tests: slow to warm up, then serves HTTP.

It stands in for an inference server: warm-up builds in-memory state for
THAW_WORKER_WARMUP_S seconds (the cost a restore skips), then the server
answers ``/healthz`` and ``/`` with facts a test can check after a restore
(the state digest, the boot time, how many requests this process served).
"""

import hashlib
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOOT = time.time()
WARMUP_S = float(os.environ.get("THAW_WORKER_WARMUP_S", "0"))
PORT = int(os.environ.get("THAW_WORKER_PORT", "8080"))


def warm_up(seconds: float) -> bytes:
    """Grow a hash chain for ``seconds``: deterministic state that costs time to rebuild."""
    state = hashlib.sha256(b"thaw-worker")
    table = []
    deadline = time.monotonic() + seconds
    while True:
        for _ in range(1000):
            state.update(state.digest())
        table.append(state.digest())
        if time.monotonic() >= deadline:
            return hashlib.sha256(b"".join(table)).digest()


STATE = warm_up(WARMUP_S)
READY_AT = time.time()
served = 0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global served
        served += 1
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = json.dumps(
                {
                    "pid": os.getpid(),
                    "hostname": socket.gethostname(),
                    "boot": BOOT,
                    "ready_at": READY_AT,
                    "warmup_s": WARMUP_S,
                    "state": STATE.hex(),
                    "served": served,
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    print(f"worker ready on :{PORT} after {READY_AT - BOOT:.2f}s", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
