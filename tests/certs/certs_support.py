"""Helpers of the certificate tests."""

from __future__ import annotations

import socket
import ssl
import threading


def serve_once(ctx: ssl.SSLContext) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run():
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hi")
        except (ssl.SSLError, OSError):
            pass
        finally:
            listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t
