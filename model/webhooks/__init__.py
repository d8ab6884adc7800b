"""Webhooks: a task's events POSTed to the URL its submit named (`webhook: {url, events}`),
following the Standard Webhooks spec (https://www.standardwebhooks.com/).

- events.py: the outbox in Redis (one message per event, its attempts, when it is due), the
  event bodies, what a task's end and its progress enqueue; light: the API, the inference worker
  and the webhooks worker all import it.
- signing.py: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`.
- delivery.py: one attempt, through the same SSRF guard as image fetching (SafeFetcher.post).
- worker.py: the `webhooks` worker program (its own Celery queue, `scriptorium.webhooks`, and a
  scheduler thread that queues the retries that are due). The inference worker never sends a
  webhook itself: it only writes the message and queues it.
"""
