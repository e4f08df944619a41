"""The throw-away server ``thaw agent doctor`` checkpoints: one socket of each kind it needs.

``python -m agent.socket_probe DIR KIND...`` (KIND: tcp, udp, unix) binds a TCP
listener on 0.0.0.0:TCP_PORT (and holds one established connection to it, both ends,
as a server holds its clients'), a UDP socket on 0.0.0.0:UDP_PORT and a unix listener
at DIR/probe.sock, writes DIR/probe-ready, and answers every TCP or unix connection
and every UDP datagram with ``thaw-probe KIND``. It runs in its own network namespace
(a sandbox box), so the fixed ports never clash. Standard library only, one thread:
the dump stays small.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

KINDS = ("tcp", "udp", "unix")
TCP_PORT = 7070
UDP_PORT = 7071
UNIX_NAME = "probe.sock"
READY_NAME = "probe-ready"
HELD: list[socket.socket] = []  # the established connection's two ends


def answer(kind: str) -> bytes:
    return f"thaw-probe {kind}\n".encode()


def bind(kind: str, folder: str) -> socket.socket:
    if kind == "tcp":
        listener = socket.create_server(("0.0.0.0", TCP_PORT))
        listener.settimeout(5)
        HELD.append(socket.create_connection(("127.0.0.1", TCP_PORT), timeout=5))
        HELD.append(listener.accept()[0])
        listener.settimeout(None)
        return listener
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", UDP_PORT))
        return s
    if kind == "unix":
        path = os.path.join(folder, UNIX_NAME)
        if os.path.exists(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(8)
        return s
    raise ValueError(f"unknown socket kind {kind!r} (one of {', '.join(KINDS)})")


def serve(sockets: dict[str, socket.socket]) -> None:
    sel = selectors.DefaultSelector()
    for kind, s in sockets.items():
        sel.register(s, selectors.EVENT_READ, kind)
    while True:
        for key, _ in sel.select():
            kind, s = key.data, key.fileobj
            try:
                if kind == "udp":
                    _, peer = s.recvfrom(512)
                    s.sendto(answer(kind), peer)
                    continue
                conn, _ = s.accept()
                with conn:
                    conn.settimeout(2)
                    conn.sendall(answer(kind))
            except OSError:
                continue  # a client that went away must not end the probe


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any(k not in KINDS for k in argv[1:]):
        print(f"usage: socket_probe DIR {{{','.join(KINDS)}}}...", file=sys.stderr)
        return 2
    folder, kinds = argv[0], argv[1:]
    sockets = {kind: bind(kind, folder) for kind in kinds}
    with open(os.path.join(folder, READY_NAME), "w") as f:
        f.write(f"{os.getpid()}\n")
    serve(sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
