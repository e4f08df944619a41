"""A real HTTP engine on loopback for the sidecar tests: health that can be switched,
sleep/wake endpoints that record their calls, and a free-port helper."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """``GET /health`` answers ``status``; every request is recorded as (method, path_qs)."""

    def __init__(self) -> None:
        self.status = 503
        self.delay_s = 0.0
        self.calls: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: dict[str, bytes] = {}
        self.port = 0

    @property
    def health_calls(self) -> int:
        return sum(1 for _, p in self.calls if p.startswith("/health"))

    @property
    def posts(self) -> list[str]:
        return [p for m, p in self.calls if m == "POST"]

    async def _health(self, req: web.Request) -> web.Response:
        self.calls.append((req.method, req.path_qs))
        self.headers.append(dict(req.headers))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status in (301, 302):
            raise web.HTTPFound("http://192.0.2.1/elsewhere")
        return web.Response(status=self.status, text="ok")

    async def _post(self, req: web.Request) -> web.Response:
        self.calls.append((req.method, req.path_qs))
        self.bodies[req.path] = await req.read()
        return web.Response(status=500 if req.path == "/broken" else 200, text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        for path in ("/sleep", "/wake_up", "/broken"):  # /broken always answers 500
            app.router.add_post(path, self._post)
        return app


@asynccontextmanager
async def running_engine(ssl_context=None) -> AsyncIterator[Engine]:
    engine = Engine()
    runner = web.AppRunner(engine.app())
    await runner.setup()
    engine.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", engine.port, ssl_context=ssl_context).start()
    try:
        yield engine
    finally:
        await runner.cleanup()


@asynccontextmanager
async def tcp_listener() -> AsyncIterator[int]:
    """A plain TCP listener on loopback that accepts and closes: a tcpSocket probe's target."""

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
