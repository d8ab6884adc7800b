"""Counters and histograms held in Redis (catalog.RECORDED), added to by whichever process sees
the event: the API, the inference worker's processes, the webhooks worker. GET /metrics reads
them back (model/api/exposition.py). Light: redis only, no prometheus-client.

Layout: one hash per metric, `sc:metrics:<name>`; a field per label set (a JSON list of label
values) holds a counter's value; a histogram has `<labels>|<i>` (observations in bucket i, not
cumulative: the last is +Inf), `<labels>|sum` and `<labels>|count`. One pipeline per event.

Bounded cardinality: every label comes from a fixed set (job types, states, stages, error
codes, model names) except `host`, which is admitted into `sc:metrics:hosts` while it has fewer
than `metrics.max_hosts` members; any later host is counted as "other".

Nothing here ever raises: a lost increment is better than a failed page.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from redis import Redis

from model.keyspace import METRICS_HOSTS_KEY, METRICS_PREFIX
from model.metrics.catalog import OTHER_HOST, RECORDED

log = logging.getLogger("scriptorium.metrics")

STAGES = {"fetch_s": "fetch", "decode_s": "decode", "inference_s": "inference"}
MAX_LABEL = 100  # characters of a label value (codes, hosts)
HOST_CACHE_MIN = 1024  # host labels a process remembers at least (4 x metrics.max_hosts)

# A host's label: itself while the set of hosts has room, else "other".
_ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return ARGV[1] end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return ARGV[1]
end
return ARGV[3]
"""


def metric_key(name: str) -> str:
    return METRICS_PREFIX + name


def label_field(values: tuple[str, ...]) -> str:
    return json.dumps([str(v)[:MAX_LABEL] for v in values], separators=(",", ":"))


class _Batch:
    """Increments queued on one pipeline (sent when the batch ends)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def inc(self, name: str, labels: tuple[str, ...] = (), by: float = 1) -> None:
        self.pipe.hincrbyfloat(metric_key(name), label_field(labels), by)

    def observe(self, name: str, value: float, labels: tuple[str, ...] = ()) -> None:
        buckets = RECORDED[name].buckets
        index = bisect.bisect_left(buckets, value)  # the first bucket whose bound is >= value
        field, key = label_field(labels), metric_key(name)
        self.pipe.hincrbyfloat(key, f"{field}|{index}", 1)
        self.pipe.hincrbyfloat(key, f"{field}|sum", value)
        self.pipe.hincrbyfloat(key, f"{field}|count", 1)


class Meter:
    def __init__(self, redis: Redis, max_hosts: int = 50) -> None:
        self.redis = redis
        self.max_hosts = max_hosts
        # Labels of hosts met lately (admitted or "other"): no round trip. Least recently used
        # first, bounded: every distinct host spelling fetched would otherwise stay for good.
        self._hosts: OrderedDict[str, str] = OrderedDict()
        self._hosts_max = max(HOST_CACHE_MIN, 4 * max_hosts)
        self._hosts_lock = threading.Lock()

    @contextmanager
    def batch(self) -> Iterator[_Batch]:
        pipe = self.redis.pipeline(transaction=False)  # no round trip until execute()
        yield _Batch(pipe)
        try:
            pipe.execute()
        except Exception:  # metrics never fail the work
            log.warning("metrics not recorded", exc_info=True)

    # --- what the service counts ---------------------------------------------------------
    def task_submitted(self, job_type: str) -> None:
        with self.batch() as b:
            b.inc("scriptorium_tasks_submitted", (job_type,))

    def task_finished(self, job_type: str, state: str) -> None:
        with self.batch() as b:
            b.inc("scriptorium_tasks_finished", (job_type, state))

    def item_done(self, job_type: str, item: dict[str, Any], failed: bool) -> None:
        """A result item (a page): processed or failed, and the time it spent in each stage."""
        with self.batch() as b:
            if failed:
                code = (item.get("error") or {}).get("code") or "unknown"
                b.inc("scriptorium_pages_failed", (job_type, code))
            else:
                b.inc("scriptorium_pages_processed", (job_type,))
            for key, stage in STAGES.items():
                seconds = (item.get("timings") or {}).get(key)
                if isinstance(seconds, int | float):
                    b.observe("scriptorium_page_stage_seconds", float(seconds), (stage,))

    def inference_batch(self, model: str, size: int) -> None:
        with self.batch() as b:
            b.observe("scriptorium_inference_batch_size", size, (model,))

    def model_loaded(self, model: str, backend: str) -> None:
        with self.batch() as b:
            b.inc("scriptorium_model_loads", (model, backend))

    def fetched(self, url: str, size: int) -> None:
        host = self.host_label(url)
        with self.batch() as b:
            b.inc("scriptorium_fetch_requests", (host,))
            b.inc("scriptorium_fetch_bytes", (host,), size)

    def fetch_failed(self, url: str, code: str) -> None:
        host = self.host_label(url)
        with self.batch() as b:
            b.inc("scriptorium_fetch_errors", (host, code))

    def cache_lookup(self, cache: str, hit: bool) -> None:
        with self.batch() as b:
            b.inc("scriptorium_cache_requests", (cache, "hit" if hit else "miss"))

    def webhook_attempt(self, event: str, outcome: str, seconds: float) -> None:
        with self.batch() as b:
            b.inc("scriptorium_webhook_deliveries", (event, outcome))
            b.observe("scriptorium_webhook_delivery_seconds", seconds, (event,))

    def host_label(self, url: str) -> str:
        """The URL's host as a label value, or "other" beyond `max_hosts` distinct hosts."""
        try:
            host = (urlsplit(url).hostname or "")[:MAX_LABEL] or "none"
        except ValueError:
            host = "none"
        with self._hosts_lock:
            label = self._hosts.get(host)
            if label is not None:
                self._hosts.move_to_end(host)
                return label
        try:
            label = self.redis.eval(_ADMIT, 1, METRICS_HOSTS_KEY, host, self.max_hosts, OTHER_HOST)
        except Exception:
            log.warning("metrics: host label not admitted", exc_info=True)
            return OTHER_HOST
        label = label.decode() if isinstance(label, bytes) else str(label)
        with self._hosts_lock:
            self._hosts[host] = label
            while len(self._hosts) > self._hosts_max:
                self._hosts.popitem(last=False)
        return label
