"""Prometheus metrics (GET /metrics).

Two kinds, one scrape:
- The HTTP side's own (requests by route and status, their latency): prometheus-client in
  multiprocess mode, each gunicorn worker writing to files under <data_dir>/run/metrics/<program>/
  (emptied when gunicorn starts), added up at each scrape.
- Everything the workers do (tasks, pages, stages, batches, model loads, fetches, caches, webhook
  deliveries) and what the API counts about tasks: counters and histograms held in Redis
  (record.py), written by whichever process sees the event, read by the scrape
  (model/api/exposition.py).
  Workers are separate processes from gunicorn, and will be on other hosts: Redis is what every
  one of them already reaches, so their numbers need no scrape target of their own and survive a
  worker's restart. The scrape adds gauges read live from Redis: queue depth, running tasks,
  broker queues, pending webhooks, workers and the age of their heartbeats.

catalog.py names every metric once: the writers, the scrape and the Grafana dashboard's test all
read it.
"""
