"""GET /metrics: the Prometheus text format (the HTTP process only: prometheus-client).

Who may read it: a request made straight to gunicorn from this host (its unix socket, or a
loopback address) with no proxy header; anything that came through nginx — which sets
X-Forwarded-Host/-Proto on every request it proxies, so every client there, the spiped tunnel's
included, looks like loopback — must present an admin key.

The HTTP metrics are prometheus-client's, in multiprocess mode under gunicorn (each worker
writes its own files in PROMETHEUS_MULTIPROC_DIR, config/gunicorn.conf.py; a scrape adds them up,
whichever worker answers it). Everything else is read from Redis (model/metrics/record.py)
at each scrape.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from redis import Redis
from redis.exceptions import RedisError

from model.api.auth import is_admin, require_key
from model.api.errors import ApiError
from model.api.services import services
from model.celery_app import QUEUE, WEBHOOK_QUEUE
from model.keyspace import QUEUE_KEY, QUEUES_KEY, RUNNING_KEY, WEBHOOK_DUE_KEY, WORKERS_PREFIX
from model.metrics.catalog import HTTP, LIVE, RECORDED, Spec
from model.metrics.record import metric_key
from model.tasks.fairness import waiting_messages
from model.tasks.fleet import HEARTBEAT_TTL_S

PROXY_HEADERS = (
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "Forwarded",
)
METHODS = {"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"}

_requests_spec = HTTP["scriptorium_http_requests"]
_duration_spec = HTTP["scriptorium_http_request_duration_seconds"]
# Not in any registry: each scrape builds its own (below).
http_requests = Counter(
    _requests_spec.name, _requests_spec.help, _requests_spec.labels, registry=None
)
http_duration = Histogram(
    _duration_spec.name,
    _duration_spec.help,
    _duration_spec.labels,
    buckets=_duration_spec.buckets,
    registry=None,
)

bp = Blueprint("metrics", __name__)


def multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


# --- counting requests -------------------------------------------------------------------------


def init_http_metrics(app: Flask) -> None:
    """Count and time every request (registered first: it sees those other hooks refuse)."""

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "OTHER"
        try:
            http_requests.labels(route, method, str(response.status_code)).inc()
            if started is not None:
                http_duration.labels(route, method).observe(time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - metrics never fail a request
            pass
        return response

    app.register_blueprint(bp)


# --- the scrape --------------------------------------------------------------------------------


def _direct_from_this_host() -> bool:
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    address = request.remote_addr or ""
    if not address:  # gunicorn's unix socket: only local processes can open it
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@bp.get("/metrics")
def metrics() -> Response:
    """The service's metrics (Prometheus text format)."""
    if not _direct_from_this_host():
        require_key()  # 401 (or 429 past the failed-authentication budget)
        if not is_admin():
            raise ApiError(403, "forbidden", "GET /metrics needs an admin key")
    registry = CollectorRegistry()
    if multiprocess():
        MultiProcessCollector(registry)
    else:
        registry.register(http_requests)
        registry.register(http_duration)
    registry.register(RedisCollector(services().redis))
    # The classic text format (0.0.4): every Prometheus reads it; our names need no escaping.
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def _labels(field: str) -> list[str]:
    return [str(v) for v in json.loads(field)]


class RedisCollector:
    """The Redis-held counters and histograms, and the live gauges, in one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        try:
            rows, queues, workers, lengths = self._read()
        except RedisError:
            yield _gauge("scriptorium_redis_up", [((), 0)])  # the HTTP metrics still come
            return
        yield _gauge("scriptorium_redis_up", [((), 1)])
        for spec, data in zip(RECORDED.values(), rows, strict=False):
            yield _recorded(spec, data)
        queued, running, webhook_queue, pending = rows[len(RECORDED) :][:4]
        ttls = rows[len(RECORDED) + 4 :]
        yield _gauge("scriptorium_queue_depth", [((), queued)])
        yield _gauge("scriptorium_tasks_running", [((), running)])
        yield _gauge(
            "scriptorium_broker_queue_length",
            [
                *(((q,), n) for q, n in zip(queues, lengths, strict=True)),
                ((WEBHOOK_QUEUE,), webhook_queue),
            ],
        )
        yield _gauge("scriptorium_webhooks_pending", [((), pending)])
        alive = [(key, ttl) for key, ttl in zip(workers, ttls, strict=True) if ttl and ttl > 0]
        yield _gauge("scriptorium_workers", [((), len(alive))])
        ages = [
            ((key.removeprefix(WORKERS_PREFIX),), max(0.0, HEARTBEAT_TTL_S - ttl / 1000))
            for key, ttl in alive
        ]
        yield _gauge("scriptorium_worker_heartbeat_age_seconds", ages)

    def _read(self) -> tuple[list[Any], list[str], list[str], list[int]]:
        workers = list(self.redis.scan_iter(match=f"{WORKERS_PREFIX}*", count=100))
        # The default queue, and every model's queue tasks were sent to (routing by model).
        queues = sorted({QUEUE, *self.redis.smembers(QUEUES_KEY)})
        with self.redis.pipeline(transaction=False) as pipe:
            for spec in RECORDED.values():
                pipe.hgetall(metric_key(spec.name))
            pipe.zcard(QUEUE_KEY)
            pipe.scard(RUNNING_KEY)
            pipe.llen(WEBHOOK_QUEUE)
            pipe.zcard(WEBHOOK_DUE_KEY)
            for key in workers:
                pipe.pttl(key)
            rows = pipe.execute()
        # A queue's messages wait in one list per lane (model.tasks.fairness).
        return rows, queues, workers, [waiting_messages(self.redis, queue) for queue in queues]


def _gauge(name: str, samples: list[tuple[tuple[str, ...], Any]]) -> Metric:
    spec = LIVE[name]
    family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in samples:
        family.add_metric(list(labels), float(value or 0))
    return family


def _recorded(spec: Spec, data: dict[str, str]) -> Metric:
    if spec.kind == "counter":
        family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for field, value in sorted(data.items()):
            family.add_metric(_labels(field), float(value))
        return family
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    series: dict[str, dict[str, float]] = {}
    for field, value in data.items():
        labels, _, part = field.rpartition("|")
        series.setdefault(labels, {})[part] = float(value)
    bounds = [*(str(float(b)) for b in spec.buckets), "+Inf"]
    for labels, parts in sorted(series.items()):
        total, cumulative = 0.0, []
        for index, bound in enumerate(bounds):
            total += parts.get(str(index), 0.0)
            cumulative.append((bound, total))
        family.add_metric(_labels(labels), cumulative, parts.get("sum", 0.0))
    return family
