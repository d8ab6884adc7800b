"""Every metric the service exports: name (counters without `_total`, which the exposition
adds), kind, help, labels, buckets. Light: every process imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WEBHOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OTHER_HOST = "other"  # the host label of hosts beyond metrics.max_hosts

# Held in Redis, written by the API, the inference worker and the webhooks worker.
RECORDED = {
    spec.name: spec
    for spec in (
        Spec("scriptorium_tasks_submitted", "counter", "Tasks accepted by POST /task", ("type",)),
        Spec(
            "scriptorium_tasks_finished",
            "counter",
            "Tasks ended, by job type and final state",
            ("type", "state"),
        ),
        Spec(
            "scriptorium_pages_processed",
            "counter",
            "Result items (pages, canvases) done",
            ("type",),
        ),
        Spec(
            "scriptorium_pages_failed",
            "counter",
            "Result items that failed, by error code",
            ("type", "code"),
        ),
        Spec(
            "scriptorium_page_stage_seconds",
            "histogram",
            "Time one page spent in a stage: fetch, decode, inference",
            ("stage",),
            STAGE_BUCKETS,
        ),
        Spec(
            "scriptorium_inference_batch_size",
            "histogram",
            "Pages per inference call",
            ("model",),
            BATCH_BUCKETS,
        ),
        Spec(
            "scriptorium_model_loads",
            "counter",
            "Models loaded by worker processes (a restarted process loads them again)",
            ("model", "backend"),
        ),
        Spec(
            "scriptorium_fetch_requests",
            "counter",
            "Fetches that got a body, by host",
            ("host",),
        ),
        Spec(
            "scriptorium_fetch_errors",
            "counter",
            "Fetches that failed, by host and error code",
            ("host", "code"),
        ),
        Spec("scriptorium_fetch_bytes", "counter", "Bytes fetched, by host", ("host",)),
        Spec(
            "scriptorium_cache_requests",
            "counter",
            "Cache lookups, by cache (detections, features) and result (hit, miss)",
            ("cache", "result"),
        ),
        Spec(
            "scriptorium_webhook_deliveries",
            "counter",
            "Webhook delivery attempts, by event and outcome",
            ("event", "outcome"),
        ),
        Spec(
            "scriptorium_webhook_delivery_seconds",
            "histogram",
            "Duration of webhook delivery attempts",
            ("event",),
            WEBHOOK_BUCKETS,
        ),
    )
}

# Read from Redis at each scrape.
LIVE = {
    spec.name: spec
    for spec in (
        Spec("scriptorium_redis_up", "gauge", "1 if the scrape could read Redis, else 0"),
        Spec("scriptorium_queue_depth", "gauge", "Tasks queued (not started)"),
        Spec("scriptorium_tasks_running", "gauge", "Tasks running"),
        Spec(
            "scriptorium_broker_queue_length",
            "gauge",
            "Messages waiting in a Celery queue",
            ("queue",),
        ),
        Spec("scriptorium_webhooks_pending", "gauge", "Webhook messages not yet settled"),
        Spec("scriptorium_workers", "gauge", "Worker processes with their models loaded"),
        Spec(
            "scriptorium_worker_heartbeat_age_seconds",
            "gauge",
            "Seconds since a worker process's last heartbeat (gone after 20 s without one)",
            ("worker",),
        ),
    )
}

# The HTTP side's own, in prometheus-client's multiprocess mode.
HTTP = {
    spec.name: spec
    for spec in (
        Spec(
            "scriptorium_http_requests",
            "counter",
            "HTTP requests answered, by route, method and status",
            ("route", "method", "status"),
        ),
        Spec(
            "scriptorium_http_request_duration_seconds",
            "histogram",
            "Time to answer HTTP requests, by route and method",
            ("route", "method"),
            HTTP_BUCKETS,
        ),
    )
}

ALL = {**RECORDED, **LIVE, **HTTP}


def exported_names(spec: Spec) -> set[str]:
    """The sample names a metric appears under in the text format."""
    if spec.kind == "counter":
        return {f"{spec.name}_total"}
    if spec.kind == "histogram":
        return {f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {spec.name}
