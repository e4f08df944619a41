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
