"""Prometheus metrics of the webhook, in a registry per server (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thaw_webhook_requests",
            "HTTP requests to /mutate by response code.",
            ["code"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "thaw_webhook_decisions",
            "Admission decisions by reason (injected or the named skip).",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "thaw_webhook_request_duration_seconds",
            "Time to answer a /mutate request, body read to response.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shed = Counter(
            "thaw_webhook_shed",
            "Reviews refused with 429 because reviews or body bytes in flight were at their cap.",
            registry=self.registry,
        )
        self.over_budget = Counter(
            "thaw_webhook_over_budget",
            "Reviews admitted unchanged because they were over their time or size budget.",
            registry=self.registry,
        )
        self.inflight_reviews = Gauge(
            "thaw_webhook_inflight_reviews",
            "Reviews being read or processed now.",
            registry=self.registry,
        )
        self.inflight_bytes = Gauge(
            "thaw_webhook_inflight_body_bytes",
            "Request body bytes held by reviews in flight now.",
            registry=self.registry,
        )
        self.snapshots_synced = Gauge(
            "thaw_webhook_snapshot_cache_synced",
            "1 once the Snapshot cache has listed (0: auto/restore pods are skipped).",
            registry=self.registry,
        )
        self.snapshots_stale = Gauge(
            "thaw_webhook_snapshot_cache_stale_seconds",
            "How long the API server has been unreachable for the Snapshot cache (0: fine).",
            registry=self.registry,
        )

    def watch_snapshot_view(self, view: object) -> None:
        """Read the gauges from the view at scrape time (no background updates needed)."""
        self.snapshots_synced.set_function(lambda: float(bool(getattr(view, "synced", True))))
        stale_for = getattr(view, "stale_for", None)
        self.snapshots_stale.set_function(lambda: float((stale_for and stale_for()) or 0.0))

    def watch_gate(self, gate: object) -> None:
        """Read the in-flight gauges from the admission gate at scrape time."""
        self.inflight_reviews.set_function(lambda: float(getattr(gate, "reviews", 0)))
        self.inflight_bytes.set_function(lambda: float(getattr(gate, "bytes", 0)))
