"""A tiny serving process with every socket kind a real inference server holds.

``python -m tests.support.net_server [--control DIR]`` serves HTTP/1.1 (keep-alive) on
TCP 0.0.0.0:HTTP_PORT and [::]:HTTP_PORT (an IPv6-only socket beside the IPv4 one),
echoes UDP datagrams on 0.0.0.0:UDP_PORT, and answers one line per connection on the
unix socket DIR/UNIX_NAME. Standard library only (it runs inside a sandbox box).

    GET /hello  -> {"pid", "conn": serial of this connection, "request": its n-th request,
                    "accepted_at": when the connection was accepted}
    GET /stats  -> {"open": peers of the other open connections,
                    "ended": peers of connections that ended, in order}
    GET /pause  -> stop accepting HTTP connections (a busy server: new ones wait in the
                   listen queue) until the unix socket gets the line ``resume``

The test reads a restored copy's ``/stats`` to see its inherited connections end, and
pauses the source so that connections surely wait, unaccepted, while it is dumped.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

from thaw.contract import CONTROL_DIR, ENV_CONTROL_DIR

HTTP_PORT = 8080
UDP_PORT = 8081
UNIX_NAME = "app.sock"
BACKLOG = 1024  # like uvicorn's 2048: connections of a paused or frozen server wait here
PAUSE_MAX_S = 60.0
ACCEPTING = threading.Event()
ACCEPTING.set()


class Tracker:
    """Open and ended connections, by peer address."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serial = itertools.count(1)
        self.open: dict[int, str] = {}
        self.ended: list[str] = []

    def opened(self, peer: str) -> int:
        with self.lock:
            n = next(self.serial)
            self.open[n] = peer
            return n

    def closed(self, n: int) -> None:
        with self.lock:
            self.ended.append(self.open.pop(n))

    def stats(self, me: int) -> dict:
        with self.lock:
            return {"open": [p for k, p in self.open.items() if k != me], "ended": self.ended}


TRACKER = Tracker()


def peer_name(addr: tuple) -> str:
    return f"{addr[0]}:{addr[1]}"


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with JSON answers and no access log (the test servers share it)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as inference clients use

    def send_json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Handler(JsonHandler):
    def setup(self) -> None:
        super().setup()
        self.accepted_at = time.time()
        self.conn_id = TRACKER.opened(peer_name(self.client_address))
        self.requests = 0

    def finish(self) -> None:
        TRACKER.closed(self.conn_id)
        with contextlib.suppress(OSError):  # closed under us (a restored copy's): no flush
            super().finish()

    def do_GET(self) -> None:
        self.requests += 1
        if self.path == "/hello":
            body = {"pid": os.getpid(), "conn": self.conn_id, "request": self.requests}
            body["accepted_at"] = self.accepted_at
        elif self.path == "/stats":
            body = TRACKER.stats(self.conn_id)
        elif self.path == "/pause":
            ACCEPTING.clear()
            body = {"paused": True}
        else:
            self.send_error(404)
            return
        self.send_json(body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def get_request(self) -> tuple:
        ACCEPTING.wait(PAUSE_MAX_S)
        return super().get_request()


class Server6(Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(2048)
        reply = {"udp": data.decode(errors="replace"), "pid": os.getpid()}
        sock.sendto(json.dumps(reply).encode(), peer)


def serve_unix(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            try:
                line = conn.recv(256).decode().strip()
                if line == "resume":
                    ACCEPTING.set()
                conn.sendall(json.dumps({"unix": line, "pid": os.getpid()}).encode() + b"\n")
            except OSError:
                continue


def start(control: str) -> None:
    servers = [Server(("0.0.0.0", HTTP_PORT), Handler), Server6(("::", HTTP_PORT), Handler)]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", UDP_PORT))
    path = os.path.join(control, UNIX_NAME)
    if os.path.exists(path):
        os.unlink(path)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(16)
    for target, arg in ((serve_udp, udp), (serve_unix, unix)):
        threading.Thread(target=target, args=(arg,), daemon=True).start()
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, args=(0.1,), daemon=True).start()
    print(f"net_server: serving, pid {os.getpid()}", flush=True)
    servers[0].serve_forever(0.1)


# --- client side (the tests, on the host) ---------------------------------------------


def get(host: str, path: str, timeout: float = 10.0) -> dict:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection(host, HTTP_PORT, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"GET {path} on {host}: HTTP {resp.status}")
        return json.loads(resp.read())
    finally:
        conn.close()


def wait_serving(host: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(host, "/hello", timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def udp_echo(host: str, text: str, timeout: float = 5.0) -> dict:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(text.encode(), (host, UDP_PORT))
        return json.loads(s.recvfrom(2048)[0])


def unix_ask(control: str, text: str, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(control, UNIX_NAME))
        s.sendall(text.encode())
        return json.loads(s.makefile().readline())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--control", default=os.environ.get(ENV_CONTROL_DIR, CONTROL_DIR))
    start(p.parse_args().control)


if __name__ == "__main__":
    main()
