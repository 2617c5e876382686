"""The collector's Prometheus metrics, in a registry of their own (one per app, so tests can run many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CollectorMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    """Requests, events, rejects by reason, Kinesis latency and retries, queue and spool depth."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "livora_collector_requests", "HTTP requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "livora_collector_request_seconds",
            "Time from request start to answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "livora_collector_events", "Events (or webhook deliveries) accepted, by kind.", ["kind"], registry=r
        )
        self.rejects = Counter(
            "livora_collector_rejects",
            "Requests refused, by reason (nothing of them is sent on).",
            ["reason"],
            registry=r,
        )
        self.kinesis_put_seconds = Histogram(
            "livora_collector_kinesis_put_seconds",
            "Latency of one PutRecords call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kinesis_records = Counter(
            "livora_collector_kinesis_records", "Records Kinesis accepted.", ["path"], registry=r
        )
        self.kinesis_retries = Counter(
            "livora_collector_kinesis_retries",
            "PutRecords retries, by cause (failed_records, throttled, error).",
            ["cause"],
            registry=r,
        )
        self.kinesis_failures = Counter(
            "livora_collector_kinesis_failures",
            "Deliveries Kinesis did not take in time (then spooled or 503).",
            registry=r,
        )
        self.pending_records = Gauge(
            "livora_collector_pending_records", "Records in memory waiting for Kinesis or the spool.", registry=r
        )
        self.spooled = Counter("livora_collector_spooled_records", "Records written to the local spool.", registry=r)
        self.spool_records = Gauge(
            "livora_collector_spool_depth_records", "Records in the spool not yet in Kinesis.", registry=r
        )
        self.spool_bytes = Gauge("livora_collector_spool_depth_bytes", "Bytes of spool segments on disk.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
