"""Every job type, declared once (model/jobs/spec.py). The API derives the request union, the
OpenAPI document and the validation from this registry; the worker runs `JOBS[type].run`.

Adding a job type: write its module (params and input models, `SPEC = JobSpec(...)`, a `run(ctx)`
that imports its heavy code itself) and add the module to the line below. Nothing else changes.

Torch-free and light: the HTTP process imports it.
"""

from __future__ import annotations

from model.jobs import cluster, crops, detect, evaluate, noop, similarity, train, vectorize
from model.jobs.spec import JobSpec
from model.settings import JobLimits, Settings

JOBS: dict[str, JobSpec] = {
    m.SPEC.name: m.SPEC
    for m in (detect, noop, similarity, crops, evaluate, vectorize, cluster, train)
}


def job_limits(settings: Settings, job_type: str) -> JobLimits:
    """The configured limits of a job type, else its own defaults."""
    configured = settings.jobs.get(job_type)
    return configured if configured is not None else JOBS[job_type].limits
