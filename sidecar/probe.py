"""The worker's readinessProbe, run from the sidecar the way the kubelet runs it.

The sidecar shares the pod's network namespace, so it reaches the worker at
the pod IP (where the kubelet probes) or on loopback. An attempt is an HTTP
GET answered 200-399 within ``timeout_s`` (redirects not followed, TLS not
verified, as the kubelet does) or a TCP connect; attempts run every
``period_s`` after ``initial_delay_s``, and the engine is warm after
``success_threshold`` passes in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from thaw.contract import HTTP_SCHEMES, ProbeError, WarmProbe

log = logging.getLogger(__name__)

USER_AGENT = "thaw-sidecar"
LOOPBACK = "127.0.0.1"


class ProbeRunner:
    """One probe's attempts and its streak of passes; ``warm()`` once per sidecar poll."""

    def __init__(
        self, spec: WarmProbe, pod_ip: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        spec.check()
        self.spec = spec
        self.host = spec.host or pod_ip or LOOPBACK
        self._clock = clock
        self.last = ""  # what the last attempt saw, for logs and /status
        self.reset()

    @classmethod
    def from_url(cls, url: str, period_s: float = 1.0, timeout_s: float = 5.0) -> ProbeRunner:
        """An HTTP probe of ``url`` (``--engine-health-url``)."""
        parts = urlsplit(url)
        if parts.scheme not in HTTP_SCHEMES or not parts.hostname:
            raise ProbeError(f"health URL {url!r} is not an http(s) URL with a host")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        spec = WarmProbe(port, parts.scheme, path, parts.hostname, (), period_s, timeout_s)
        return cls(spec)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.spec.scheme or 'http'}://{host}:{self.spec.port}"

    def resolve(self, url: str) -> str:
        """``url`` if absolute, else a path on the probe's endpoint (the engine's sleep/wake)."""
        return urljoin(self.base_url, url)

    def describe(self) -> str:
        if self.spec.scheme:
            return f"GET {self.base_url}{self.spec.path}"
        return f"tcp {self.host}:{self.spec.port}"

    def reset(self) -> None:
        """Start afresh, as the kubelet does for a new container: initial delay, no streak."""
        self._due = self._clock() + self.spec.initial_delay_s
        self._streak = 0

    def cool(self) -> None:
        """Forget the passes so far: warm again only after ``success_threshold`` more."""
        self._streak = 0

    async def warm(self, session: aiohttp.ClientSession) -> bool:
        """Attempt if one is due; True while the last ``success_threshold`` attempts passed."""
        now = self._clock()
        if now >= self._due:
            self._due = now + self.spec.period_s
            before = self.last
            ok, self.last = await self.attempt(session)
            self._streak = self._streak + 1 if ok else 0
            if self.last != before:
                log.info("probe %s: %s", self.describe(), self.last)
        return self._streak >= self.spec.success_threshold

    async def attempt(self, session: aiohttp.ClientSession) -> tuple[bool, str]:
        """(passed, what was seen) for one attempt, never longer than ``timeout_s``."""
        if self.spec.scheme:
            return await self._http(session)
        return await self._tcp()

    async def _http(self, session: aiohttp.ClientSession) -> tuple[bool, str]:
        headers = CIMultiDict(self.spec.headers)
        headers.setdefault("User-Agent", USER_AGENT)
        headers.setdefault("Accept", "*/*")
        try:
            async with session.get(
                f"{self.base_url}{self.spec.path}",
                headers=headers,
                allow_redirects=False,
                ssl=False,
                timeout=aiohttp.ClientTimeout(total=self.spec.timeout_s),
            ) as resp:
                return 200 <= resp.status < 400, f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            return False, _failure(e)

    async def _tcp(self) -> tuple[bool, str]:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.spec.port), self.spec.timeout_s
            )
        except (TimeoutError, OSError) as e:
            return False, _failure(e)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "connected"


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
