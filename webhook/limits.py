"""Admission control for ``/mutate``: what one server holds at once, and what one review may cost.

Memory is bounded by design rather than by luck: a review is admitted before
its body is read only while fewer than ``max_reviews`` are being read or
processed and the bytes they hold stay under ``max_bytes`` (a declared
Content-Length is reserved up front, a chunked body is counted as it
arrives). Past either cap the server answers 429 with Retry-After at once:
the API server retries or, failurePolicy being Ignore, admits the pod
unchanged - both better than an OOM-killed webhook that fails every pod.

Large bodies are parsed and mutated off the event loop, one at a time
(``large_workers``), so a 3 MiB pod neither delays the small reviews nor
multiplies the memory a parsed pod costs (about 15x its JSON). A review over
its time or size budget is admitted unchanged with the reason ``over-budget``.
Small bodies (declared under ``large_body_bytes``) have a reserve on top of
``max_bytes``, so a flood of large ones never sheds the ordinary reviews.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses

from thaw import contract

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * MIB  # the API server's own limit is 3 MiB; room for the envelope
OVER_BUDGET = "over-budget"  # the audit annotation of a review admitted unchanged for its cost


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger: 413
    max_connections: int = 64  # TLS connections open at once; more wait in the listen backlog
    max_reviews: int = 256  # reviews being read or processed at once; more: 429
    max_bytes: int = 16 * MIB  # body bytes held at once; more: 429
    large_body_bytes: int = 256 * 1024  # bodies from this size are handled off the event loop
    small_reserve_bytes: int = 4 * MIB  # on top of max_bytes, for declared small bodies only
    large_workers: int = 1  # large reviews handled at once (each costs ~15x its size)
    budget_s: float = 2.5  # a review not answered by then is admitted unchanged
    budget_bytes: int = 3 * MIB + MIB // 2  # a larger review is admitted unchanged, unmutated
    retry_after_s: int = 1

    def problems(self) -> list[str]:
        """What is wrong with these values, one line each (empty: usable)."""
        out = [
            f"{name} must be positive"
            for name in (
                "max_body_bytes",
                "max_connections",
                "max_reviews",
                "max_bytes",
                "large_workers",
                "budget_s",
            )
            if getattr(self, name) <= 0
        ]
        if self.max_bytes < self.max_body_bytes:
            out.append("max_bytes must be at least max_body_bytes (one largest review must fit)")
        return out


M_ARENA_MAX = -8  # glibc mallopt parameter


def one_malloc_arena() -> bool:
    """Make the large-review thread allocate from the main heap (glibc; elsewhere a no-op).

    glibc gives each thread its own arena, and a 3 MiB pod parsed there leaves
    tens of MiB of fragmented, never-returned memory behind: RSS would creep
    up with every large review instead of staying flat.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, 1))
    return False


@dataclasses.dataclass(frozen=True)
class OverBudget:
    """A decision-like skip for a review that cost more than its budget (fail open)."""

    detail: str
    reason: str = OVER_BUDGET
    inject: bool = False

    def message(self) -> str:
        return f"{contract.DOMAIN}: skipped ({self.reason}): {self.detail}"


class Job:
    """One large review handled off the loop: what the loop may read of it, and a stop flag."""

    def __init__(self) -> None:
        self.uid = ""
        self.abandoned = False  # past its time budget: nobody waits for the answer any more


class Shed(Exception):
    """The server is at a cap: answer 429 with Retry-After, nothing was processed."""


class Gate:
    """Counts reviews and body bytes in flight; everything runs on the event loop (no locks)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.reviews = 0
        self.bytes = 0

    def check(self, declared: int | None) -> None:
        """Raise Shed if a review declaring ``declared`` bytes cannot be admitted now."""
        if self.reviews >= self.limits.max_reviews:
            raise Shed(f"{self.reviews} reviews in flight (limit {self.limits.max_reviews})")
        if declared is not None and self.bytes + declared > self._cap(declared):
            raise Shed(
                f"{self.bytes + declared} body bytes would be in flight "
                f"(limit {self._cap(declared)})"
            )

    def _cap(self, declared: int) -> int:
        """Large bodies cannot take the reserve: a flood of them never sheds normal reviews."""
        small = declared < self.limits.large_body_bytes
        return self.limits.max_bytes + (self.limits.small_reserve_bytes if small else 0)

    def enter(self, declared: int | None) -> Ticket:
        self.check(declared)
        self.reviews += 1
        ticket = Ticket(self)
        if declared:
            self.bytes += declared  # checked above, reserve included
            ticket.held = declared
        return ticket


class Ticket:
    """One admitted review's share of the gate; ``close`` gives it back (idempotent)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.held = 0
        self.open = True

    def hold(self, n: int) -> None:
        """Count ``n`` more bytes of a chunked body; raise Shed (holding nothing more) past
        ``max_bytes`` (its size is unknown, so it never uses the small reserve)."""
        gate = self.gate
        if gate.bytes + n > gate.limits.max_bytes:
            raise Shed(f"body bytes in flight reached the limit of {gate.limits.max_bytes}")
        gate.bytes += n
        self.held += n

    def close(self) -> None:
        if self.open:
            self.open = False
            self.gate.reviews -= 1
            self.gate.bytes -= self.held
            self.held = 0
