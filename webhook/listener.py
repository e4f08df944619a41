"""Accept TLS connections at most ``max_connections`` at a time.

An open TLS connection whose client is pushing a body costs up to ~1 MiB of
buffers (asyncio's SSL read buffer and incoming BIO, the decrypted chunk,
aiohttp's payload buffer) even when its review is refused with a 429 and the
body is only drained: 300 clients sending 3 MiB each would cost ~300 MiB
before one review is read. Past the cap a connection waits in the kernel's
listen backlog, costing this process nothing, and is accepted once another
closes. At the cap, kept-alive connections idle for ``IDLE_S`` are closed
(as their keep-alive timeout would later), so idle pools of clients cannot
hold every slot while a new client waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
IDLE_S = 1.0  # at the cap, a kept-alive connection idle this long is closed


class CappedListener:
    def __init__(
        self,
        server: web.Server,
        context: ssl.SSLContext,
        host: str,
        port: int,
        max_connections: int,
        backlog: int = 512,
    ) -> None:
        self.server = server
        self.context = context
        self.slots = asyncio.Semaphore(max_connections)
        self.sock = _listen(host, port, backlog)
        self.open = 0
        self._release: dict[Any, Callable[[], None]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._accepting: asyncio.Task | None = None
        lost = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            try:
                lost(handler, exc)
            finally:
                self._release.pop(handler, _nothing)()

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_loop())

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.slots.locked():
                self._close_idle()
            await self.slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # e.g. out of file descriptors: try again shortly
                self.slots.release()
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _close_idle(self) -> None:
        """Close connections that answered a request and wait for the next one.

        aiohttp has no public "idle" flag: a handler waiting for its next message
        holds a pending ``_waiter``; one mid-request or mid-body never does (closing
        that one would make aiohttp drop the rest of its body).
        """
        now = asyncio.get_running_loop().time()
        for handler in self.server.connections:
            served = getattr(handler, "_request_count", 0)
            waiter = getattr(handler, "_waiter", None)
            waiting = waiter is not None and not waiter.done()  # done: a request just came
            # When its keep-alive timer would close it: idle for at least IDLE_S by now?
            closes_at = getattr(handler, "_next_keepalive_close_time", 0.0) or 0.0
            idle_long = closes_at - handler.keepalive_timeout + IDLE_S <= now
            if served and waiting and idle_long:
                handler.force_close()  # what its keep-alive timer does to an idle connection

    async def _serve(self, conn: socket.socket) -> None:
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.open -= 1
                self.slots.release()

        def factory() -> Any:
            handler = self.server()
            self._release[handler] = release
            return handler

        self.open += 1
        conn.setblocking(False)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                factory, conn, ssl=self.context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            # The TLS handshake failed: the request handler never started.
            log.debug("TLS handshake failed: %s", e)
            for handler, fn in list(self._release.items()):
                if fn is release:
                    del self._release[handler]
            release()
            with contextlib.suppress(OSError):
                conn.close()


def _nothing() -> None:
    return None


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family, _, _, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
