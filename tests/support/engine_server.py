"""A two-process server shaped like vLLM V1: an HTTP API server and its engine-core child.

``python -m tests.support.engine_server`` is the API server: it starts the engine core
as a child process, connects to it once over a unix socket in /tmp (as vLLM's ZMQ IPC
sockets are) and forwards every ``GET /v1/completions?prompt=P`` to it over that one
connection. The core holds the "weights" (WEIGHTS_MB of seeded bytes) and answers
``expected(P)``, a hash of P and all the weights, so a restore that loses or corrupts
memory answers something else. Standard library only (it runs inside a sandbox box).

    GET /health          -> {"api_pid", "core_pid"} once the core is connected
    GET /v1/completions  -> {"text", "served": requests the core answered, "api_pid", "core_pid"}
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse

from tests.support.net_server import JsonHandler

PORT = 8000
CORE_SOCKET = "/tmp/thaw-engine-core.sock"
WEIGHTS_MB = 8
SEED = b"thaw-engine"


def weights() -> bytes:
    return hashlib.shake_256(SEED).digest(WEIGHTS_MB << 20)


def generate(model: bytes, prompt: str) -> str:
    return hashlib.sha256(prompt.encode() + b"\0" + model).hexdigest()[:32]


def expected(prompt: str) -> str:
    return generate(weights(), prompt)


# --- engine core (the child) ------------------------------------------------------------


def run_core(path: str) -> None:
    model = weights()
    served = 0
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    with conn, conn.makefile("rwb") as stream:
        for line in stream:
            request = json.loads(line)
            reply = {"core_pid": os.getpid()}
            if "prompt" in request:  # else a hello: who are you
                served += 1
                reply.update(text=generate(model, request["prompt"]), served=served)
            stream.write(json.dumps(reply).encode() + b"\n")
            stream.flush()


# --- API server (the parent) ------------------------------------------------------------


class Core:
    """The API server's one connection to its engine core."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", __spec__.name, "--core", path])
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the engine core did not come up") from None
                time.sleep(0.02)
        self.stream = self.sock.makefile("rwb")
        self.lock = threading.Lock()
        self.pid = self.ask({})["core_pid"]

    def ask(self, request: dict) -> dict:
        with self.lock:
            self.stream.write(json.dumps(request).encode() + b"\n")
            self.stream.flush()
            return json.loads(self.stream.readline())


CORE: Core | None = None


class Api(JsonHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if CORE is None:
            self.send_error(503, "engine core starting")
            return
        if url.path == "/health":
            body = {"api_pid": os.getpid(), "core_pid": CORE.pid}
        elif url.path == "/v1/completions":
            prompt = urllib.parse.parse_qs(url.query).get("prompt", [""])[0]
            body = {**CORE.ask({"prompt": prompt}), "api_pid": os.getpid()}
        else:
            self.send_error(404)
            return
        self.send_json(body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def run_api() -> None:
    global CORE
    server = Server(("0.0.0.0", PORT), Api)  # listening first: /health says 503 meanwhile
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    CORE = Core(CORE_SOCKET)
    print(f"engine_server: api pid {os.getpid()}, core pid {CORE.pid}", flush=True)
    CORE.proc.wait()
    sys.exit("engine_server: the engine core died")


# --- client side (the tests, on the host) -----------------------------------------------


def complete_on(conn: http.client.HTTPConnection, prompt: str) -> dict:
    conn.request("GET", "/v1/completions?" + urllib.parse.urlencode({"prompt": prompt}))
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise OSError(f"completion: HTTP {resp.status}: {data[:200]!r}")
    return json.loads(data)


def complete(host: str, prompt: str, timeout: float = 10.0) -> dict:
    conn = http.client.HTTPConnection(host, PORT, timeout=timeout)
    try:
        return complete_on(conn, prompt)
    finally:
        conn.close()


def wait_healthy(host: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(host, PORT, timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            if resp.status == 200:
                return json.loads(resp.read())
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"engine server on {host}:{PORT} not healthy after {timeout}s")
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--core", metavar="SOCKET", help="run as the engine core, serving SOCKET")
    args = p.parse_args()
    if args.core:
        run_core(args.core)
    else:
        run_api()


if __name__ == "__main__":
    main()
