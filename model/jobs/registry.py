"""Every job type, declared once (model/jobs/spec.py). The API derives the request union, the
OpenAPI document and the validation from this registry; the worker runs `JOBS[type].run`.

Adding a job type: write its package (params and input models, `SPEC = JobSpec(...)`, a `run(ctx)`
that imports its heavy code itself, its README.md) and add it to the line below. Nothing else
changes (docs/adding-a-job.md).

Torch-free and light: the HTTP process imports it.
"""

from __future__ import annotations

from model.jobs import cluster, crops, detect, evaluate, labels, noop, similarity, train, vectorize
from model.jobs.spec import JobSpec
from model.settings import Settings

JOBS: dict[str, JobSpec] = {
    m.SPEC.name: m.SPEC
    for m in (detect, noop, similarity, crops, evaluate, vectorize, cluster, train, labels)
}


def longest_hard_limit_s(settings: Settings) -> float:
    """Of every job type, configured or not (the broker's visibility timeout outlasts it)."""
    return settings.hard_limit_s(
        max(spec.limits_in(settings).timeout_max_s for spec in JOBS.values())
    )
