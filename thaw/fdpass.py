"""One JSON message with open file descriptors over a unix stream socket.

The agent's GPU region loader hands CUDA memory to a restored worker as POSIX
file descriptors (SCM_RIGHTS); both ends use these two calls so the framing
(4-byte big-endian length, then UTF-8 JSON, the fds riding on the first
bytes) is written once.
"""

from __future__ import annotations

import json
import os
import socket
import struct

MAX_MESSAGE = 1 << 20
MAX_FDS = 64


class FdPassError(RuntimeError):
    """The peer closed early or sent something that is not one framed message."""


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    body = json.dumps(message).encode()
    if len(body) > MAX_MESSAGE or len(fds) > MAX_FDS:
        raise FdPassError(f"message too large ({len(body)} bytes, {len(fds)} fds)")
    data = struct.pack(">I", len(body)) + body
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv(sock: socket.socket) -> tuple[dict, list[int]]:
    """One message and the fds that came with it (the caller owns and closes them)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 4 + MAX_MESSAGE, MAX_FDS)
    try:
        if len(data) < 4:
            raise FdPassError("peer closed the connection before a message")
        (n,) = struct.unpack(">I", data[:4])
        if n > MAX_MESSAGE:
            raise FdPassError(f"message length {n} exceeds {MAX_MESSAGE}")
        body = data[4:]
        while len(body) < n:
            more = sock.recv(n - len(body))
            if not more:
                raise FdPassError("peer closed the connection mid-message")
            body += more
        message = json.loads(body[:n])
        if not isinstance(message, dict):
            raise FdPassError("message is not a JSON object")
    except (FdPassError, ValueError) as e:
        for fd in fds:
            os.close(fd)
        raise FdPassError(str(e)) from None
    return message, fds
